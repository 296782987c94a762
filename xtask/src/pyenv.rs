//! The Python reference environment (sentence-transformers on torch, CPU only) under
//! `$ST_HOME/pyenv`: parity fixtures, bench's Python side and e2e's reload check use it.
//!
//! PyPI's torch is the CUDA build and pulls ~3 GB of NVIDIA wheels. This environment installs
//! the same three wheels `setup-libtorch` downloads (torch and two small CUDA runtime wheels,
//! kept in `$ST_HOME/wheels`), swaps the NVIDIA libraries a CPU never calls for stand-ins
//! (xtask/py/cpu_torch.py), and installs every other dependency pip resolves, minus the
//! NVIDIA ones. `pyenv_onnx` is built the same way for bench's ONNX Runtime sides, and
//! `pyenv_cuda` is the full CUDA install, for `setup-libtorch --cuda`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{ONNX_REQUIREMENTS, PY_REQUIREMENTS, status, workspace_root};

/// The reference environment: sentence-transformers on CPU-only torch.
pub fn pyenv() -> Result<PathBuf> {
    cpu_env(
        "pyenv",
        PY_REQUIREMENTS,
        "CPU-only torch + sentence-transformers",
    )
}

/// sentence-transformers on ONNX Runtime, for bench's ONNX columns. It gets its own
/// environment because `optimum`, which the ONNX backend needs, pins transformers 4.x, which
/// sentence-transformers 6 does not accept; torch (the same CPU-only build) exports the model.
pub fn pyenv_onnx() -> Result<PathBuf> {
    cpu_env(
        "pyenv-onnx",
        ONNX_REQUIREMENTS,
        "CPU-only torch + sentence-transformers on ONNX Runtime",
    )
}

/// `$ST_HOME/NAME`: CPU-only torch (from the cached wheels) plus `requirements` resolved
/// without CUDA, reused while its stamp lists the same requirements.
fn cpu_env(name: &str, requirements: &[&str], what: &str) -> Result<PathBuf> {
    let venv = st_hub::st_home().join(name);
    let wanted = format!("cpu\n{}", requirements.join("\n"));
    if let Some(python) = reuse(&venv, &wanted) {
        return Ok(python);
    }
    eprintln!(
        "creating a Python environment in {} ({what})",
        venv.display()
    );
    let python = create(&venv)?;
    let wheels = crate::backends::cpu_wheel_files()?;
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-deps"])
            .args(&wheels),
    )?;
    status(Command::new(&python).arg(workspace_root().join("xtask/py/cpu_torch.py")))?;
    let others: Vec<&str> = requirements
        .iter()
        .copied()
        .filter(|r| !r.starts_with("torch=="))
        .collect();
    let resolved = resolve_without_cuda(&python, &venv, &others)?;
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-deps"])
            .args(&resolved),
    )?;
    check_torch(&python)?;
    stamp(&venv, &wanted)?;
    Ok(python)
}

pub fn pyenv_cuda() -> Result<PathBuf> {
    let venv = st_hub::st_home().join("pyenv-cuda");
    let wanted = format!("cuda\n{}", PY_REQUIREMENTS.join("\n"));
    if let Some(python) = reuse(&venv, &wanted) {
        return Ok(python);
    }
    eprintln!(
        "creating a CUDA torch environment in {} (~4 GB)",
        venv.display()
    );
    let python = create(&venv)?;
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--upgrade"])
            .args(PY_REQUIREMENTS),
    )?;
    stamp(&venv, &wanted)?;
    Ok(python)
}

fn reuse(venv: &Path, wanted: &str) -> Option<PathBuf> {
    let python = venv.join("bin").join("python");
    let stamp = venv.join("st-requirements.txt");
    (python.is_file() && std::fs::read_to_string(stamp).is_ok_and(|s| s == wanted))
        .then_some(python)
}

fn stamp(venv: &Path, wanted: &str) -> Result<()> {
    std::fs::write(venv.join("st-requirements.txt"), wanted)
        .context("writing the environment stamp")
}

/// A fresh virtual environment (an old one, e.g. with the CUDA torch, is replaced).
fn create(venv: &Path) -> Result<PathBuf> {
    if venv.exists() {
        std::fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    let system_python = std::env::var("ST_PYTHON").unwrap_or_else(|_| "python3".into());
    status(Command::new(&system_python).args(["-m", "venv"]).arg(venv)).context(
        "creating a Python virtual environment failed; on Debian/Ubuntu install python3-venv",
    )?;
    Ok(venv.join("bin").join("python"))
}

/// `name==version` of everything pip would install for `requirements`, less the NVIDIA wheels
/// and triton (GPU-only), which the installed torch would otherwise pull in.
fn resolve_without_cuda(python: &Path, venv: &Path, requirements: &[&str]) -> Result<Vec<String>> {
    let report = venv.join("pip-report.json");
    status(
        Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--dry-run", "--report"])
            .arg(&report)
            .args(requirements),
    )?;
    let text = std::fs::read_to_string(&report)?;
    let json: serde_json::Value = serde_json::from_str(&text).context("reading pip's report")?;
    let mut out = Vec::new();
    for item in json["install"]
        .as_array()
        .context("pip report without `install`")?
    {
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        let version = item["metadata"]["version"].as_str().unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("nvidia-") || lower == "triton" {
            continue;
        }
        out.push(format!("{name}=={version}"));
    }
    if out.is_empty() {
        bail!("pip resolved nothing for {requirements:?}");
    }
    Ok(out)
}

/// The environment must import torch and multiply on the CPU.
fn check_torch(python: &Path) -> Result<()> {
    status(Command::new(python).args([
        "-c",
        "import torch, sentence_transformers; x = torch.ones(4, 4); assert float((x @ x).sum()) == 64.0",
    ]))
    .context("the CPU-only torch environment does not work")
}
