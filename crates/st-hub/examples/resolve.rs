//! Resolve a model argument and print its local folder: `cargo run -p st-hub --example resolve -- ID`.
fn main() {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| st_hub::DEFAULT_MODEL.to_string());
    match st_hub::resolve(&model, &mut |m| eprintln!("{m}")) {
        Ok(dir) => println!("{}", dir.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
