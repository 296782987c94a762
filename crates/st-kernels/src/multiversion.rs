//! One kernel source, compiled once per instruction-set level.
//!
//! [`multiversion!`] wraps a portable `#[inline(always)]` function in `#[target_feature]` copies
//! (AVX-512, AVX2+FMA) so LLVM vectorizes the same code for each register width, and picks one
//! from a [`Level`](crate::Level) at run time. The portable function called directly is the
//! scalar level.

/// `multiversion!(pub(crate) fn name(a: A, b: B) -> R = portable_fn);` defines
/// `name(level: Level, a: A, b: B) -> R`, which runs `portable_fn` compiled for the best
/// instruction set at or below `level`. Panics if `level` is above what the CPU supports.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:path;) => {
        $(#[$meta])*
        $vis fn $name(level: $crate::Level, $($arg: $ty),*) $(-> $ret)? {
            assert!(level.supported(), "kernel level {level} is not supported by this CPU");
            #[cfg(target_arch = "x86_64")]
            {
                $(#[$meta])*
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                $(#[$meta])*
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if level >= $crate::Level::Avx512 {
                    // SAFETY: `level.supported()` checked the CPU has AVX-512 F/BW/DQ/VL + AVX2/FMA.
                    return unsafe { avx512($($arg),*) };
                }
                if level >= $crate::Level::Avx2 {
                    // SAFETY: every level from Avx2 up implies AVX2 and FMA (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// Elements handed to one rayon task by element-wise kernels (and, in whole rows, by
/// [`rows_per_task`]): enough work to amortize the task.
pub(crate) const ELEMENTS_PER_TASK: usize = 16 * 1024;

/// Rows handed to one rayon task by row-wise kernels: enough work to amortize the task, small
/// enough that two threads split a batch evenly.
pub(crate) fn rows_per_task(rows: usize, width: usize) -> usize {
    let by_size = ELEMENTS_PER_TASK.div_ceil(width.max(1));
    let by_threads = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
    by_size.min(by_threads).max(1)
}
