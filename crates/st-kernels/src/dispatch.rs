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
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Scalar,
        Level::Avx2,
        Level::AvxVnni,
        Level::Avx512,
        Level::Avx512Vnni,
    ];

    /// The name `ST_KERNELS` takes and `st info --backends` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avx-vnni",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512-vnni",
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
    }
}
