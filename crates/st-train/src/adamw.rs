//! AdamW whose update is the backend's own ([`EncoderBackend::adamw_step`]: one pass over each
//! parameter on flex and libtorch, where burn's AdamW makes about fifteen), with burn's
//! `AdamWState` as its state, so checkpoints keep their format.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};
use st_backbone::{AdamWStep, EncoderBackend};

/// AdamW (PyTorch's `torch.optim.AdamW`: decoupled weight decay, β = (0.9, 0.999), as
/// [`AdamWStep::new`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    epsilon: f32,
    weight_decay: f32,
}

impl AdamW {
    /// AdamW with `epsilon` in the denominator and decoupled `weight_decay`.
    pub fn new(epsilon: f64, weight_decay: f64) -> Self {
        Self {
            epsilon: epsilon as f32,
            weight_decay: weight_decay as f32,
        }
    }

    /// The optimizer over the parameters of a module (gradient clipping is the trainer's).
    pub fn init<B: AutodiffBackend<InnerBackend: EncoderBackend>, M: AutodiffModule<B>>(
        self,
    ) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: EncoderBackend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let moments = state.map(|s| [s.momentum.moment_1, s.momentum.moment_2].map(primitive));
        let exponent = i32::try_from(time).expect("fewer than 2^31 optimizer steps");
        let step = AdamWStep::new(lr as f32, self.epsilon, self.weight_decay, exponent);
        let [param, moment_1, moment_2] =
            B::adamw_step(primitive(tensor), primitive(grad), moments, step)
                .map(|t| Tensor::from_primitive(TensorPrimitive::Float(t)));
        let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (param, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}
