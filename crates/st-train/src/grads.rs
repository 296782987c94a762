//! Per-parameter gradient moves: burn's `GradientsParams` is keyed by id and typed by rank, so
//! each operation dispatches on the parameter's rank once, here.

use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;

use crate::groups::ParamEntry;

/// Runs `$body` with `$d` bound to the rank of `$p` as a const (ranks 1–3: every parameter of
/// the model and heads).
macro_rules! by_rank {
    ($p:expr, $d:ident => $body:block) => {
        match $p.rank {
            1 => {
                const $d: usize = 1;
                $body
            }
            2 => {
                const $d: usize = 2;
                $body
            }
            3 => {
                const $d: usize = 3;
                $body
            }
            rank => unreachable!("parameter of rank {rank}"),
        }
    };
}

/// Moves the gradient of `p` from `from` into `to`.
pub(crate) fn move_grad<B: Backend>(
    from: &mut GradientsParams,
    to: &mut GradientsParams,
    p: &ParamEntry,
) {
    by_rank!(p, D => {
        if let Some(g) = from.remove::<B, D>(p.id) {
            to.register(p.id, g)
        }
    })
}

/// Adds the gradient of `p` in `from` into `to`.
pub(crate) fn add_grad<B: Backend>(
    to: &mut GradientsParams,
    from: &GradientsParams,
    p: &ParamEntry,
) {
    by_rank!(p, D => {
        if let Some(g) = from.get::<B, D>(p.id) {
            let sum = match to.remove::<B, D>(p.id) {
                Some(prev) => prev + g,
                None => g,
            };
            to.register(p.id, sum);
        }
    })
}

/// The squared L2 norm of the gradient of `p` (0 without one).
pub(crate) fn grad_sq_norm<B: Backend>(grads: &GradientsParams, p: &ParamEntry) -> f64 {
    by_rank!(p, D => {
        grads
            .get::<B, D>(p.id)
            .map_or(0.0, |g| g.square().sum().into_scalar().elem::<f64>())
    })
}

/// Multiplies the gradient of `p` by `factor`.
pub(crate) fn scale_grad<B: Backend>(grads: &mut GradientsParams, p: &ParamEntry, factor: f64) {
    by_rank!(p, D => {
        if let Some(g) = grads.remove::<B, D>(p.id) {
            grads.register(p.id, g * factor)
        }
    })
}
