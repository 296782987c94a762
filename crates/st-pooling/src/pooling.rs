//! Token embeddings → one sentence embedding, in sentence-transformers' six modes.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::PoolingError;

/// One way of reducing `[batch, seq, hidden]` token embeddings to `[batch, hidden]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingMode {
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
    /// Average of real tokens.
    Mean,
    /// Sum of real tokens divided by √(token count).
    MeanSqrtLenTokens,
    /// Average weighted by position (1, 2, 3, …): later tokens count more.
    #[serde(rename = "weightedmean")]
    WeightedMean,
    /// The last real token.
    #[serde(rename = "lasttoken")]
    LastToken,
}

impl PoolingMode {
    /// Every mode, in the order sentence-transformers concatenates them.
    pub const ALL: [PoolingMode; 6] = [
        PoolingMode::Cls,
        PoolingMode::Max,
        PoolingMode::Mean,
        PoolingMode::MeanSqrtLenTokens,
        PoolingMode::WeightedMean,
        PoolingMode::LastToken,
    ];

    /// The name sentence-transformers uses (`pooling_mode` argument and our CLI).
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::Mean => "mean",
            PoolingMode::MeanSqrtLenTokens => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }

    /// Reduces token embeddings, ignoring padding.
    ///
    /// `tokens`: `[batch, seq, hidden]`; `mask`: `[batch, seq]`, 1 for real tokens, 0 for padding.
    pub fn pool<B: Backend>(self, tokens: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, seq, hidden] = tokens.dims();
        let device = tokens.device();
        let mask_f = mask.clone().float().unsqueeze_dim::<3>(2); // [b, s, 1]
        let squeeze = |t: Tensor<B, 3>| t.reshape([batch, hidden]);
        match self {
            PoolingMode::Cls => squeeze(tokens.narrow(1, 0, 1)),
            PoolingMode::Max => {
                // Same fill value as sentence-transformers, so an all-padding row agrees too.
                let padding = mask
                    .equal_elem(0)
                    .unsqueeze_dim::<3>(2)
                    .expand([batch, seq, hidden]);
                squeeze(tokens.mask_fill(padding, -1e9).max_dim(1))
            }
            PoolingMode::Mean | PoolingMode::MeanSqrtLenTokens => {
                let sum = (tokens * mask_f.clone()).sum_dim(1);
                let count = mask_f.sum_dim(1).clamp_min(1e-9);
                let count = if self == PoolingMode::Mean {
                    count
                } else {
                    count.sqrt()
                };
                squeeze(sum / count)
            }
            PoolingMode::WeightedMean => {
                let positions = Tensor::<B, 1, Int>::arange(1..seq as i64 + 1, &device)
                    .float()
                    .reshape([1, seq, 1]);
                let weights = mask_f * positions;
                let sum = (tokens * weights.clone()).sum_dim(1);
                squeeze(sum / weights.sum_dim(1).clamp_min(1e-9))
            }
            PoolingMode::LastToken => {
                // Rows are right-padded: the last real token sits at length - 1.
                let last = (mask.sum_dim(1) - 1).clamp_min(0); // [b, 1]
                let index = last.unsqueeze_dim::<3>(2).expand([batch, 1, hidden]);
                squeeze(tokens.gather(1, index))
            }
        }
    }
}

impl std::str::FromStr for PoolingMode {
    type Err = PoolingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        let mode = match s.as_str() {
            "cls" | "cls_token" => PoolingMode::Cls,
            "max" | "max_tokens" => PoolingMode::Max,
            "mean" | "mean_tokens" => PoolingMode::Mean,
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => PoolingMode::MeanSqrtLenTokens,
            "weightedmean" | "weighted_mean" | "weightedmean_tokens" => PoolingMode::WeightedMean,
            "lasttoken" | "last_token" | "last" => PoolingMode::LastToken,
            _ => {
                return Err(PoolingError::UnknownMode(format!(
                    "unknown pooling mode `{s}`; expected one of: {}",
                    PoolingMode::ALL.map(|m| m.name()).join(", ")
                )));
            }
        };
        Ok(mode)
    }
}

impl std::fmt::Display for PoolingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One or more pooling modes, concatenated in sentence-transformers' order
/// (cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
    /// Width of the token embeddings this pooling reads.
    pub word_embedding_dimension: usize,
    /// Whether a prompt's tokens are pooled with the text's (`include_prompt` in
    /// `1_Pooling/config.json`; instruction models such as INSTRUCTOR say `false`).
    pub include_prompt: bool,
}

/// `1_Pooling/config.json` as sentence-transformers writes it: before version 6 with one
/// `pooling_mode_*` flag per mode (what st writes: every version reads it), from version 6 with
/// `embedding_dimension` and the modes named in `pooling_mode`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolingConfigFile {
    #[serde(alias = "embedding_dimension")]
    pub word_embedding_dimension: usize,
    /// sentence-transformers ≥ 6: one mode or a list; when present the flags are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode: Option<NamedModes>,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    pub include_prompt: bool,
}

fn yes() -> bool {
    true
}

/// `pooling_mode` in a sentence-transformers ≥ 6 config: `"mean"` or `["cls", "mean"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NamedModes {
    One(PoolingMode),
    Many(Vec<PoolingMode>),
}

impl PoolingConfigFile {
    /// The modes the file turns on, from `pooling_mode` or else the flags.
    fn modes(&self) -> Vec<PoolingMode> {
        match &self.pooling_mode {
            Some(NamedModes::One(mode)) => vec![*mode],
            Some(NamedModes::Many(modes)) => modes.clone(),
            None => [
                (self.pooling_mode_cls_token, PoolingMode::Cls),
                (self.pooling_mode_max_tokens, PoolingMode::Max),
                (self.pooling_mode_mean_tokens, PoolingMode::Mean),
                (
                    self.pooling_mode_mean_sqrt_len_tokens,
                    PoolingMode::MeanSqrtLenTokens,
                ),
                (
                    self.pooling_mode_weightedmean_tokens,
                    PoolingMode::WeightedMean,
                ),
                (self.pooling_mode_lasttoken, PoolingMode::LastToken),
            ]
            .into_iter()
            .filter_map(|(on, mode)| on.then_some(mode))
            .collect(),
        }
    }
}

impl Pooling {
    /// Pooling with the given modes; order and duplicates do not matter.
    pub fn new(
        modes: impl IntoIterator<Item = PoolingMode>,
        word_embedding_dimension: usize,
    ) -> Result<Self, PoolingError> {
        let chosen: Vec<PoolingMode> = modes.into_iter().collect();
        let modes: Vec<PoolingMode> = PoolingMode::ALL
            .into_iter()
            .filter(|m| chosen.contains(m))
            .collect();
        if modes.is_empty() {
            return Err(PoolingError::UnknownMode(
                "no pooling mode selected".to_string(),
            ));
        }
        Ok(Self {
            modes,
            word_embedding_dimension,
            include_prompt: true,
        })
    }

    /// Reads `1_Pooling/config.json` (or any path to such a file).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PoolingError> {
        let path = path.as_ref();
        let file: PoolingConfigFile = crate::read_json(path)?;
        let pooling = Self::new(file.modes(), file.word_embedding_dimension).map_err(|_| {
            PoolingError::Invalid {
                path: path.to_path_buf(),
                message:
                    "no pooling mode: neither `pooling_mode` nor a true `pooling_mode_*` field"
                        .into(),
            }
        })?;
        Ok(Self {
            include_prompt: file.include_prompt,
            ..pooling
        })
    }

    /// The `1_Pooling/config.json` that describes this pooling.
    pub fn to_config_file(&self) -> PoolingConfigFile {
        let on = |m| self.modes.contains(&m);
        PoolingConfigFile {
            word_embedding_dimension: self.word_embedding_dimension,
            pooling_mode: None,
            pooling_mode_cls_token: on(PoolingMode::Cls),
            pooling_mode_mean_tokens: on(PoolingMode::Mean),
            pooling_mode_max_tokens: on(PoolingMode::Max),
            pooling_mode_mean_sqrt_len_tokens: on(PoolingMode::MeanSqrtLenTokens),
            pooling_mode_weightedmean_tokens: on(PoolingMode::WeightedMean),
            pooling_mode_lasttoken: on(PoolingMode::LastToken),
            include_prompt: self.include_prompt,
        }
    }

    /// The active modes, in concatenation order.
    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Width of the pooled output.
    pub fn output_dim(&self) -> usize {
        self.word_embedding_dimension * self.modes.len()
    }

    /// `[batch, seq, hidden]` tokens and `[batch, seq]` mask → `[batch, hidden × modes]`.
    pub fn forward<B: Backend>(
        &self,
        tokens: Tensor<B, 3>,
        mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let pooled: Vec<Tensor<B, 2>> = self
            .modes
            .iter()
            .map(|m| m.pool(tokens.clone(), mask.clone()))
            .collect();
        if pooled.len() == 1 {
            pooled.into_iter().next().expect("one mode")
        } else {
            Tensor::cat(pooled, 1)
        }
    }

    /// [`Pooling::forward`] over rows that start with a `prompt_length`-token prompt
    /// (`[CLS]` included): with `include_prompt` false, those tokens are left out as
    /// sentence-transformers leaves them out (their mask zeroed, so `cls` is the first token
    /// after the prompt; `lasttoken` is still the last real token).
    pub fn forward_after_prompt<B: Backend>(
        &self,
        tokens: Tensor<B, 3>,
        mask: Tensor<B, 2, Int>,
        prompt_length: usize,
    ) -> Tensor<B, 2> {
        let [batch, seq, hidden] = tokens.dims();
        let skip = prompt_length.min(seq);
        if self.include_prompt || skip == 0 {
            return self.forward(tokens, mask);
        }
        let device = tokens.device();
        let text_mask = mask
            .clone()
            .slice_assign([0..batch, 0..skip], Tensor::zeros([batch, skip], &device));
        // A prompt filling the whole row leaves no token: torch's argmax of an all-zero mask
        // then picks position 0.
        let first = if skip < seq { skip } else { 0 };
        let pooled: Vec<Tensor<B, 2>> = self
            .modes
            .iter()
            .map(|&m| match m {
                PoolingMode::Cls => tokens.clone().narrow(1, first, 1).reshape([batch, hidden]),
                PoolingMode::LastToken => m.pool(tokens.clone(), mask.clone()),
                _ => m.pool(tokens.clone(), text_mask.clone()),
            })
            .collect();
        Tensor::cat(pooled, 1)
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.modes.iter().map(|m| m.name()).collect();
        f.write_str(&names.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    type B = Flex;

    /// Two rows, seq 3, hidden 2; the second row has one padding position whose values are huge,
    /// so any leak shows. Every mode gives a different vector (max is not the last token, nor
    /// the first), so a test cannot pass on another mode's answer.
    fn sample() -> (Tensor<B, 3>, Tensor<B, 2, Int>) {
        let device = Default::default();
        let tokens = Tensor::<B, 3>::from_data(
            TensorData::new(
                vec![
                    1.0f32, 2.0, 7.0, -4.0, 5.0, 6.0, //
                    -1.0, 2.5, 3.0, 1.5, 1000.0, -1000.0,
                ],
                [2, 3, 2],
            ),
            &device,
        );
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 1, 1, 1, 0], [2, 3]),
            &device,
        );
        (tokens, mask)
    }

    fn pooled(mode: PoolingMode) -> Vec<f32> {
        let (tokens, mask) = sample();
        mode.pool(tokens, mask).into_data().to_vec::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn cls_takes_the_first_token() {
        assert_close(&pooled(PoolingMode::Cls), &[1.0, 2.0, -1.0, 2.5]);
    }

    #[test]
    fn max_ignores_padding() {
        assert_close(&pooled(PoolingMode::Max), &[7.0, 6.0, 3.0, 2.5]);
    }

    #[test]
    fn mean_ignores_padding() {
        assert_close(
            &pooled(PoolingMode::Mean),
            &[13.0 / 3.0, 4.0 / 3.0, 1.0, 2.0],
        );
    }

    #[test]
    fn mean_sqrt_len_divides_by_root_count() {
        let s3 = 3f32.sqrt();
        let s2 = 2f32.sqrt();
        assert_close(
            &pooled(PoolingMode::MeanSqrtLenTokens),
            &[13.0 / s3, 4.0 / s3, 2.0 / s2, 4.0 / s2],
        );
    }

    #[test]
    fn weighted_mean_weights_by_position() {
        // Row 1: weights 1,2,3 → (1·1+7·2+5·3)/6, (2·1−4·2+6·3)/6. Row 2: weights 1,2.
        assert_close(
            &pooled(PoolingMode::WeightedMean),
            &[30.0 / 6.0, 12.0 / 6.0, 5.0 / 3.0, 5.5 / 3.0],
        );
    }

    #[test]
    fn last_token_is_the_last_real_one() {
        assert_close(&pooled(PoolingMode::LastToken), &[5.0, 6.0, 3.0, 1.5]);
    }

    #[test]
    fn modes_concatenate_in_sentence_transformers_order() {
        let (tokens, mask) = sample();
        let p = Pooling::new([PoolingMode::Mean, PoolingMode::Cls], 2).unwrap();
        assert_eq!(p.modes(), &[PoolingMode::Cls, PoolingMode::Mean]);
        assert_eq!(p.output_dim(), 4);
        let out = p.forward(tokens, mask).into_data().to_vec::<f32>().unwrap();
        assert_close(
            &out,
            &[1.0, 2.0, 13.0 / 3.0, 4.0 / 3.0, -1.0, 2.5, 1.0, 2.0],
        );
    }

    #[test]
    fn an_excluded_prompt_leaves_pooling_but_not_the_last_token() {
        let (tokens, mask) = sample();
        let modes = [PoolingMode::Cls, PoolingMode::Mean, PoolingMode::LastToken];
        let mut p = Pooling::new(modes, 2).unwrap();
        let included = p.forward_after_prompt(tokens.clone(), mask.clone(), 1);
        let plain = p.forward(tokens.clone(), mask.clone());
        assert_eq!(included.into_data(), plain.into_data());
        p.include_prompt = false;
        let out = p.forward_after_prompt(tokens, mask, 1);
        // cls: the first token after the prompt; mean: tokens 1.. (row 2: token 1 only, token 2
        // is padding); lasttoken: unchanged.
        assert_close(
            &out.into_data().to_vec::<f32>().unwrap(),
            &[7.0, -4.0, 6.0, 1.0, 5.0, 6.0, 3.0, 1.5, 3.0, 1.5, 3.0, 1.5],
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for m in PoolingMode::ALL {
            assert_eq!(m.name().parse::<PoolingMode>().unwrap(), m);
        }
        let err = "median".parse::<PoolingMode>().unwrap_err().to_string();
        assert!(
            err.contains("median") && err.contains("weightedmean"),
            "{err}"
        );
    }

    #[test]
    fn config_file_round_trips() {
        let p = Pooling::new([PoolingMode::Max, PoolingMode::LastToken], 384).unwrap();
        let json = serde_json::to_string(&p.to_config_file()).unwrap();
        let dir = std::env::temp_dir().join(format!("st-pooling-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        assert_eq!(Pooling::from_file(&path).unwrap(), p);
    }

    /// sentence-transformers 6 writes `{"embedding_dimension", "pooling_mode", "include_prompt"}`
    /// (the Pooling module's own `config_keys`); older versions the flags above.
    #[test]
    fn sentence_transformers_6_configs_load() {
        let dir = std::env::temp_dir().join(format!("st-pooling-v6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let cases = [
            (
                r#"{"embedding_dimension": 768, "pooling_mode": "mean", "include_prompt": true}"#,
                vec![PoolingMode::Mean],
                true,
            ),
            (
                r#"{"embedding_dimension": 768, "pooling_mode": ["mean", "cls"], "include_prompt": false}"#,
                vec![PoolingMode::Cls, PoolingMode::Mean],
                false,
            ),
        ];
        for (json, modes, include_prompt) in cases {
            std::fs::write(&path, json).unwrap();
            let p = Pooling::from_file(&path).unwrap();
            assert_eq!(p.modes(), modes.as_slice(), "{json}");
            assert_eq!(
                (p.word_embedding_dimension, p.include_prompt),
                (768, include_prompt)
            );
        }
        std::fs::write(
            &path,
            r#"{"embedding_dimension": 8, "pooling_mode": "median"}"#,
        )
        .unwrap();
        let err = Pooling::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
