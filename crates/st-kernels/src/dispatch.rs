//! Run-time choice of instruction set.

use std::fmt;
use std::sync::OnceLock;

/// The instruction-set levels kernels are written for, lowest first. A kernel runs the best
/// version it has at or below [`Level::active`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable Rust: the reference every other level is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA (Haswell and later, every AMD Zen).
    Avx2,
    /// AVX2 plus AVX-VNNI (int8 dot products on 256-bit registers: Alder Lake and later).
    AvxVnni,
    /// AVX-512 F/BW/DQ/VL (Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
    /// AVX-512 plus AVX512-VNNI (Cascade Lake and later, Zen 4 and later).
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX-INT8 tile instructions (Sapphire Rapids and later Xeons), where the
    /// operating system grants this process the tile registers (Linux 5.16 and later).
    Amx,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 6] = [
        Level::Scalar,
        Level::Avx2,
        Level::AvxVnni,
        Level::Avx512,
        Level::Avx512Vnni,
        Level::Amx,
    ];

    /// The name `ST_KERNELS` takes and `st info --backends` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avx-vnni",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512-vnni",
            Level::Amx => "amx",
        }
    }

    /// Parses a name as [`Level::name`] prints it.
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name.trim())
    }

    /// Whether this CPU can run code written for `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl");
            match self {
                Level::Scalar => true,
                Level::Avx2 => avx2,
                Level::AvxVnni => avx2 && std::arch::is_x86_feature_detected!("avxvnni"),
                Level::Avx512 => avx2 && avx512,
                Level::Avx512Vnni => {
                    avx2 && avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
                }
                Level::Amx => Level::Avx512Vnni.supported() && amx_tiles_usable(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Level::Scalar
        }
    }

    /// The highest level this CPU supports.
    pub fn detected() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|l| l.supported())
            .unwrap_or(Level::Scalar)
    }

    /// The level kernels use: [`Level::detected`], capped by `ST_KERNELS` when it is set.
    /// Read once per process. A level the CPU lacks, or a name that is not a level, is reported
    /// on stderr once and ignored (capping can only lower the level, never crash the process).
    pub fn active() -> Level {
        static ACTIVE: OnceLock<Level> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let detected = Level::detected();
            let Ok(asked) = std::env::var("ST_KERNELS") else {
                return detected;
            };
            match Level::parse(&asked) {
                Some(level) if level.supported() => level,
                Some(level) => {
                    eprintln!(
                        "warning: ST_KERNELS={} is not supported by this CPU; using {}",
                        level.name(),
                        detected.name()
                    );
                    detected
                }
                None => {
                    let names: Vec<_> = Level::ALL.iter().map(|l| l.name()).collect();
                    eprintln!(
                        "warning: ST_KERNELS={asked:?} is not one of {}; using {}",
                        names.join(", "),
                        detected.name()
                    );
                    detected
                }
            }
        })
    }
}

/// Whether this CPU has AMX-TILE and AMX-INT8 and the operating system lets this process use
/// the tile registers. Linux hands out the 8 KiB of tile state only on request
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process, granted to every
/// thread); without that, the first tile instruction kills the process with SIGILL. Other
/// systems: not used. Asked once per process.
#[cfg(target_arch = "x86_64")]
fn amx_tiles_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (the caller checks that first).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_tile, amx_int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        amx_tile && amx_int8 && request_tile_permission()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain Linux system call (x86-64 ABI: number in rax, arguments in rdi and rsi,
    // rcx and r11 clobbered by `syscall`). It only changes which register state the kernel
    // saves for this process; an older kernel answers -EINVAL and nothing changes.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scalar_is_always_supported() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.name()), Some(level));
        }
        assert_eq!(Level::parse("sse9"), None);
        assert!(Level::Scalar.supported());
        assert!(Level::detected().supported());
        // A level implies every level below it that it builds on.
        if Level::Avx512Vnni.supported() {
            assert!(Level::Avx512.supported() && Level::Avx2.supported());
        }
        if Level::Amx.supported() {
            assert!(Level::Avx512Vnni.supported());
        }
    }
}
