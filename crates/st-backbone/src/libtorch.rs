//! libtorch's [`EncoderBackend`]: inference keeps the composed defaults (burn-tch hands
//! attention to libtorch's SDPA); training runs libtorch's own kernels where burn's autodiff
//! would differentiate op by op: the fused softmax and its backward inside attention, native
//! LayerNorm; and on the CPU, st-kernels' dropout masks and one-pass AdamW write straight into
//! libtorch's memory.

use burn::tensor::TensorMetadata;
use burn::tensor::ops::BoolTensor;
use burn::tensor::{DType, Shape};
use burn_tch::{LibTorch, LibTorchDevice, TchElement, TchTensor};
use st_kernels::AdamWStep;
use tch::{Kind, Tensor};

use crate::fused::{AttentionSaved, EncoderBackend, LayerNormSaved, adamw_step_composed};

impl<E: TchElement> EncoderBackend for LibTorch<E> {
    fn dropout_mask(
        shape: Shape,
        prob: f64,
        dtype: DType,
        device: &LibTorchDevice,
    ) -> Option<TchTensor> {
        let keep = 1.0 - prob;
        let mut mask = TchTensor::empty(shape, *device, dtype);
        // The seed comes from libtorch's generator, which `Backend::seed` sets: runs reproduce.
        if mask.tensor.kind() == Kind::Float && mask.tensor.device() == tch::Device::Cpu {
            // st-kernels' counter-based hash: vectorized, where libtorch's Bernoulli draws one
            // Mersenne Twister number per element on one thread (5% of a training step).
            let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu));
            st_kernels::dropout_mask(
                seed.int64_value(&[0]) as u64,
                keep as f32,
                f32_mut(&mut mask),
            );
        } else if keep > 0.0 {
            let _ = mask.tensor.bernoulli_float_(keep);
            let _ = mask.tensor.g_mul_scalar_(1.0 / keep);
        } else {
            let _ = mask.tensor.zero_();
        }
        Some(mask)
    }

    fn attention_train(
        qkv: [TchTensor; 3],
        key_padding: BoolTensor<Self>,
        num_heads: usize,
        prob: f64,
    ) -> Option<(TchTensor, AttentionSaved<Self>)> {
        let shape = HeadShape::of(&qkv[0].tensor, num_heads);
        let [q, k, v] = qkv.each_ref().map(|t| shape.split(&t.tensor));
        let mut scores = q.matmul(&k.transpose(-2, -1));
        let _ = scores.g_mul_scalar_(shape.scale());
        let padding = key_padding.tensor.reshape([shape.batch, 1, 1, shape.seq]);
        let _ = scores.masked_fill_(&padding, f64::NEG_INFINITY);
        let probs = scores.softmax(-1, scores.kind());
        let mask = (prob > 0.0)
            .then(|| {
                let dims = [shape.batch, shape.heads, shape.seq, shape.seq].map(|d| d as usize);
                let device = LibTorchDevice::from(probs.device());
                Self::dropout_mask(dims.into(), prob, qkv[0].dtype(), &device)
            })
            .flatten();
        let context = match &mask {
            Some(mask) => (&probs * &mask.tensor).matmul(&v),
            None => probs.matmul(&v),
        };
        let saved = AttentionSaved {
            qkv,
            probs: TchTensor::new(probs),
            mask,
        };
        Some((TchTensor::new(shape.merge(&context)), saved))
    }

    fn attention_backward(saved: AttentionSaved<Self>, grad: TchTensor) -> [TchTensor; 3] {
        let probs = &saved.probs.tensor;
        let shape = HeadShape::of(&grad.tensor, probs.size()[1] as usize);
        let [q, k, v] = saved.qkv.each_ref().map(|t| shape.split(&t.tensor));
        let d_out = shape.split(&grad.tensor);
        let mask = saved.mask.as_ref().map(|m| &m.tensor);
        let weights = match mask {
            Some(mask) => probs * mask,
            None => probs.shallow_clone(),
        };
        let d_v = weights.transpose(-2, -1).matmul(&d_out);
        let mut d_probs = d_out.matmul(&v.transpose(-2, -1));
        if let Some(mask) = mask {
            let _ = d_probs.g_mul_(mask);
        }
        let mut d_scores =
            Tensor::internal_softmax_backward_data(&d_probs, probs, -1, probs.kind());
        let _ = d_scores.g_mul_scalar_(shape.scale());
        let d_q = d_scores.matmul(&k);
        let d_k = d_scores.transpose(-2, -1).matmul(&q);
        [d_q, d_k, d_v].map(|d| TchTensor::new(shape.merge(&d)))
    }

    fn residual_layer_norm(
        x: TchTensor,
        residual: TchTensor,
        gamma: TchTensor,
        beta: TchTensor,
        eps: f64,
    ) -> Option<(TchTensor, LayerNormSaved<Self>)> {
        let sum = &x.tensor + &residual.tensor;
        let width = *sum
            .size()
            .last()
            .expect("LayerNorm input has a last dimension");
        // Without affine parameters, libtorch's LayerNorm returns `x̂` itself, which the
        // backward needs; γ and β follow in one pass.
        let (normalized, _mean, inv_std) =
            sum.native_layer_norm([width], None::<Tensor>, None, eps);
        // Half floats get `1/σ` in f32 (libtorch's accumulation type): keep the input's.
        let inv_std = inv_std.to_kind(normalized.kind());
        let y = beta.tensor.addcmul(&normalized, &gamma.tensor);
        let saved = LayerNormSaved {
            normalized: TchTensor::new(normalized),
            inv_std: TchTensor::new(inv_std),
        };
        Some((TchTensor::new(y), saved))
    }

    fn adamw_step(
        param: TchTensor,
        grad: TchTensor,
        moments: Option<[TchTensor; 2]>,
        step: AdamWStep,
    ) -> [TchTensor; 3] {
        let cpu_f32 =
            |t: &TchTensor| t.tensor.kind() == Kind::Float && t.tensor.device() == tch::Device::Cpu;
        let all_cpu_f32 =
            cpu_f32(&param) && cpu_f32(&grad) && moments.iter().flatten().all(cpu_f32);
        if !all_cpu_f32 {
            return adamw_step_composed::<Self>(param, grad, moments, step);
        }
        let mut param = writable(param);
        let [mut moment_1, mut moment_2] = match moments {
            Some(moments) => moments.map(writable),
            None => [(); 2].map(|_| TchTensor::new(param.tensor.zeros_like())),
        };
        let grad = grad.tensor.contiguous();
        st_kernels::adamw(
            f32_mut(&mut param),
            f32_slice(&grad),
            f32_mut(&mut moment_1),
            f32_mut(&mut moment_2),
            step,
        );
        [param, moment_1, moment_2]
    }
}

/// `[batch, seq, heads · head_dim]` tensors seen per head.
struct HeadShape {
    batch: i64,
    seq: i64,
    heads: i64,
    head_dim: i64,
}

impl HeadShape {
    fn of(t: &Tensor, heads: usize) -> Self {
        let [batch, seq, hidden] = t.size()[..] else {
            panic!(
                "attention input is [batch, seq, hidden], got {:?}",
                t.size()
            );
        };
        let heads = heads as i64;
        Self {
            batch,
            seq,
            heads,
            head_dim: hidden / heads,
        }
    }

    /// `1/√head_dim`, the scores' scale.
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// `[batch, seq, hidden]` → `[batch, heads, seq, head_dim]` (a view).
    fn split(&self, t: &Tensor) -> Tensor {
        t.reshape([self.batch, self.seq, self.heads, self.head_dim])
            .transpose(1, 2)
    }

    /// `[batch, heads, seq, head_dim]` → a fresh contiguous `[batch, seq, hidden]`.
    fn merge(&self, t: &Tensor) -> Tensor {
        t.transpose(1, 2)
            .contiguous()
            .reshape([self.batch, self.seq, self.heads * self.head_dim])
    }
}

/// The tensor with contiguous storage of its own, which nothing else reads: as given when it
/// already is (burn-tch counts the references to each storage), else a copy.
fn writable(t: TchTensor) -> TchTensor {
    if t.can_mut() && t.tensor.is_contiguous() {
        t
    } else {
        TchTensor::new(t.tensor.contiguous().copy())
    }
}

/// The address of a contiguous f32 CPU tensor's `numel` values (dangling, never null, when
/// there are none: libtorch allocates nothing for them).
fn f32_data(t: &Tensor) -> *mut f32 {
    assert!(
        t.kind() == Kind::Float && t.device() == tch::Device::Cpu && t.is_contiguous(),
        "a contiguous f32 CPU tensor"
    );
    if t.numel() == 0 {
        return std::ptr::NonNull::dangling().as_ptr();
    }
    t.data_ptr() as *mut f32
}

fn f32_slice(t: &Tensor) -> &[f32] {
    // SAFETY: a contiguous f32 CPU tensor holds `numel` f32 values from its data pointer, and
    // the borrow of `t` keeps them alive.
    unsafe { std::slice::from_raw_parts(f32_data(t), t.numel()) }
}

fn f32_mut(t: &mut TchTensor) -> &mut [f32] {
    assert!(t.can_mut(), "writing a tensor that another one shares");
    // SAFETY: as in `f32_slice`; `can_mut` says no other tensor reads this storage, and the
    // exclusive borrow of `t` keeps this slice the only access to it.
    unsafe { std::slice::from_raw_parts_mut(f32_data(&t.tensor), t.tensor.numel()) }
}
