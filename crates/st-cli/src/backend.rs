//! Which burn backend runs the model: `--backend flex|tch|wgpu` and `--device`.
//!
//! Everything below `st-cli` is generic over `B: Backend`; this module is the one place that
//! names concrete backends. flex is always compiled in; `tch` and `wgpu` are cargo features, and
//! asking for one that was left out is an error that names the feature.

use anyhow::{Result, bail};
use clap::ValueEnum;

/// A backend `st` can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// burn-flex: pure-Rust CPU, nothing to install (the default).
    Flex,
    /// burn-tch: libtorch 2.9.0, CPU or CUDA (cargo feature `tch`).
    Tch,
    /// burn-wgpu: WebGPU over Vulkan, Metal or DX12 (cargo feature `wgpu`).
    Wgpu,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Flex, BackendKind::Tch, BackendKind::Wgpu];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Tch => "tch",
            BackendKind::Wgpu => "wgpu",
        }
    }

    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Flex => true,
            BackendKind::Tch => cfg!(feature = "tch"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The error for a backend this binary was built without.
    pub fn missing(self) -> anyhow::Error {
        let feature = self.name();
        let setup = match self {
            BackendKind::Tch => "cargo xtask setup-libtorch, then ",
            _ => "",
        };
        anyhow::anyhow!(
            "this `st` was built without the {feature} backend: rebuild with \
             `{setup}cargo build --release -p st-cli --features {feature}` (see docs/backends.md)"
        )
    }
}

#[cfg(any(feature = "tch", feature = "wgpu"))]
fn index(device: &str, prefix: &str) -> Option<usize> {
    if device == prefix {
        return Some(0);
    }
    device.strip_prefix(prefix)?.strip_prefix(':')?.parse().ok()
}

/// flex runs on the CPU only; its thread count is `--threads`.
pub fn flex_device(device: Option<&str>) -> Result<burn_flex::FlexDevice> {
    match device {
        None | Some("cpu") => Ok(Default::default()),
        Some(other) => bail!("--device {other}: the flex backend runs on `cpu` only"),
    }
}

/// `cpu`, `cuda[:N]`, `mps` or `vulkan`; without `--device`, the first CUDA GPU if libtorch sees
/// one, else the CPU.
#[cfg(feature = "tch")]
pub fn tch_device(device: Option<&str>) -> Result<burn_tch::LibTorchDevice> {
    use burn_tch::LibTorchDevice;
    let cuda_count = || tch::Cuda::device_count().max(0) as usize;
    Ok(match device {
        None => {
            if cuda_count() > 0 {
                LibTorchDevice::Cuda(0)
            } else {
                LibTorchDevice::Cpu
            }
        }
        Some("cpu") => LibTorchDevice::Cpu,
        Some("mps") => LibTorchDevice::Mps,
        Some("vulkan") => LibTorchDevice::Vulkan,
        Some(d) => match index(d, "cuda") {
            Some(i) if i < cuda_count() => LibTorchDevice::Cuda(i),
            Some(i) => bail!(
                "--device {d}: libtorch sees {} CUDA device(s){}",
                cuda_count(),
                if i == 0 {
                    " (is this libtorch a CUDA build? `cargo xtask setup-libtorch --cuda`)"
                } else {
                    ""
                }
            ),
            None => bail!("--device {d}: the tch backend takes cpu, cuda[:N], mps or vulkan"),
        },
    })
}

/// `default` (the best adapter wgpu finds), `gpu[:N]` (discrete), `integrated[:N]`,
/// `virtual[:N]` or `cpu` (a software adapter such as lavapipe). The adapter is opened here, so
/// a machine without a working driver gets an error instead of a panic later.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(device: Option<&str>) -> Result<burn_wgpu::WgpuDevice> {
    use burn_wgpu::WgpuDevice;
    let d = device.unwrap_or("default");
    let device = if d == "default" {
        WgpuDevice::DefaultDevice
    } else if d == "cpu" {
        WgpuDevice::Cpu
    } else if let Some(i) = index(d, "gpu") {
        WgpuDevice::DiscreteGpu(i)
    } else if let Some(i) = index(d, "integrated") {
        WgpuDevice::IntegratedGpu(i)
    } else if let Some(i) = index(d, "virtual") {
        WgpuDevice::VirtualGpu(i)
    } else {
        bail!(
            "--device {d}: the wgpu backend takes default, gpu[:N], integrated[:N], virtual[:N] or cpu"
        )
    };
    wgpu_adapter(&device).map_err(|e| anyhow::anyhow!("--device {d}: {e}"))?;
    Ok(device)
}

/// Vulkan's window-system layer complains when `XDG_RUNTIME_DIR` is unset (as it is under
/// cron, containers and CI): point it at a private folder of our own. Runs first thing in
/// `main`, before any thread exists.
#[cfg(feature = "wgpu")]
pub fn ensure_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("st-runtime-{user}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // SAFETY: called at the top of main, before any other thread is started.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir) };
    }
}

/// Opens `device` once (wgpu keeps it for the process) and describes its adapter.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter(device: &burn_wgpu::WgpuDevice) -> Result<String> {
    use std::sync::Mutex;
    // burn registers a device's runtime once per process: remember what we opened.
    static OPENED: Mutex<Vec<(burn_wgpu::WgpuDevice, String)>> = Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, info)) = opened.iter().find(|(d, _)| d == device) {
        return Ok(info.clone());
    }
    // wgpu panics when no adapter matches; a hook-less catch turns that into an error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let setup = std::panic::catch_unwind(|| {
        burn_wgpu::init_setup::<burn_wgpu::graphics::AutoGraphicsApi>(device, Default::default())
    });
    std::panic::set_hook(hook);
    let setup = setup.map_err(|_| {
        anyhow::anyhow!(
            "no wgpu adapter found. On Linux without a GPU, install a software Vulkan driver \
             (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1) and set \
             XDG_RUNTIME_DIR; see docs/backends.md"
        )
    })?;
    let info = setup.adapter.get_info();
    let text = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
    opened.push((device.clone(), text.clone()));
    Ok(text)
}

/// One line per backend for `st info --backends`: compiled in or not, and the devices it sees.
pub fn describe() -> Vec<(BackendKind, bool, String)> {
    BackendKind::ALL
        .iter()
        .map(|&kind| {
            let detail = if !kind.compiled_in() {
                format!("not compiled in (cargo feature `{}`)", kind.name())
            } else {
                match kind {
                    BackendKind::Flex => format!(
                        "cpu ({} threads), st-kernels at {} (the CPU's best: {}; ST_KERNELS caps it)",
                        rayon::current_num_threads(),
                        st_kernels::Level::active(),
                        st_kernels::Level::detected()
                    ),
                    BackendKind::Tch => describe_tch(),
                    BackendKind::Wgpu => describe_wgpu(),
                }
            };
            (kind, kind.compiled_in(), detail)
        })
        .collect()
}

#[cfg(feature = "tch")]
fn describe_tch() -> String {
    let cuda = tch::Cuda::device_count().max(0);
    let mut devices = vec![format!("cpu ({} threads)", tch::get_num_threads())];
    devices.extend((0..cuda).map(|i| format!("cuda:{i}")));
    format!("libtorch; devices: {}", devices.join(", "))
}

#[cfg(not(feature = "tch"))]
fn describe_tch() -> String {
    unreachable!("tch is not compiled in")
}

#[cfg(feature = "wgpu")]
fn describe_wgpu() -> String {
    match wgpu_adapter(&burn_wgpu::WgpuDevice::DefaultDevice) {
        Ok(adapter) => format!("default device: {adapter}"),
        Err(e) => format!("{e:#}"),
    }
}

#[cfg(not(feature = "wgpu"))]
fn describe_wgpu() -> String {
    unreachable!("wgpu is not compiled in")
}
