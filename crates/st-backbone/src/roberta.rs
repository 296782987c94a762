//! What RoBERTa and XLM-RoBERTa change in the BERT encoder of `model.rs`, and their key names.
//!
//! Both are BERT's post-LN layers under BERT's own key names. Two things differ:
//! - position ids count from `padding_idx + 1` (`pad_token_id`, 1 in every published
//!   checkpoint) and padding tokens take `padding_idx` itself, as Hugging Face's
//!   `create_position_ids_from_input_ids` computes them: `cumsum(mask) * mask + padding_idx`
//!   with `mask = input_ids != padding_idx` ([`position_ids`]);
//! - the token-type table has one row (`type_vocab_size` 1), so every token adds row 0.
//!
//! XLM-R differs from RoBERTa only in its vocabulary (sentencepiece Unigram rather than
//! byte-level BPE), which `tokenizer.json` carries; the weights are laid out the same.
//!
//! Reference: `transformers/models/roberta/modeling_roberta.py` (`RobertaEmbeddings`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// `[batch, seq]` position ids for RoBERTa-style embeddings: real tokens get `padding_idx + 1`,
/// `padding_idx + 2`, … counting only non-padding tokens; padding tokens get `padding_idx`.
/// Computed from the ids rather than the attention mask, exactly as Hugging Face does, so the
/// padded positions match PyTorch too (their embeddings differ, though attention masks them).
pub fn position_ids<B: Backend>(
    input_ids: Tensor<B, 2, Int>,
    padding_idx: usize,
) -> Tensor<B, 2, Int> {
    let mask = input_ids.not_equal_elem(padding_idx as i64).int();
    mask.clone().cumsum(1) * mask + padding_idx as i64
}

/// Hugging Face RoBERTa / XLM-R key → our module path, applied before the generic renames of
/// `weights.rs`: masked-LM and classification checkpoints nest the encoder under `roberta.`.
pub const LOAD_REMAPPING: &[(&str, &str)] = &[(r"^roberta\.", "")];

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    #[test]
    fn positions_skip_padding_like_hugging_face() {
        // <s> a b </s> <pad> <pad>, and a pad id inside a row (counted out, as in HF).
        let ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(vec![0i64, 7, 8, 2, 1, 1, 0, 7, 1, 8, 2, 1], [2, 6]),
            &Default::default(),
        );
        let got = position_ids(ids, 1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(got, vec![2, 3, 4, 5, 1, 1, 2, 3, 1, 4, 5, 1]);
    }
}
