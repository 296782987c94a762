//! Helpers the st-backbone tests share.

use burn::tensor::Tensor;
use st_backbone::{BertInput, BertModel, EncoderBackend};

/// The model through the modules' own `forward` (composed tensor ops): what the fused
/// operations, at inference and in training, are checked against.
pub fn composed_forward<B: EncoderBackend>(
    model: &BertModel<B>,
    input: BertInput<B>,
) -> Tensor<B, 3> {
    let padding = input.attention_mask.equal_elem(0);
    let mut x = model
        .embeddings
        .forward(input.input_ids, input.token_type_ids);
    for layer in &model.encoder.layer {
        let attended = layer
            .attention
            .self_attn
            .forward(x.clone(), padding.clone());
        x = layer.attention.output.forward(attended, x);
        let expanded = layer.intermediate.forward(x.clone());
        x = layer.output.forward(expanded, x);
    }
    x
}
