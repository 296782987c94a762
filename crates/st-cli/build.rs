//! With the `tch` feature, records libtorch's library folder in the binary (rpath), so `st`
//! runs without `LD_LIBRARY_PATH`. `LIBTORCH` is the variable torch-sys builds against; with
//! `LIBTORCH_USE_PYTORCH` the folder is Python's and `LD_LIBRARY_PATH` stays the user's job.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    let tch = std::env::var_os("CARGO_FEATURE_TCH").is_some();
    let unix = std::env::var("CARGO_CFG_TARGET_FAMILY").is_ok_and(|f| f == "unix");
    if !(tch && unix) {
        return;
    }
    let lib = std::env::var_os("LIBTORCH_LIB")
        .or_else(|| std::env::var_os("LIBTORCH"))
        .map(|dir| std::path::PathBuf::from(dir).join("lib"));
    if let Some(lib) = lib {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
