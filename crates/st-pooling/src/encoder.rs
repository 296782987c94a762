//! `SentenceEncoder`: tokenizer → BERT → pooling → Dense → Normalize, as one module.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;
use st_backbone::{
    BertConfig, BertInput, BertModel, BertTokenizer, Encoded, EncoderBackend, TokenBatch,
};

use crate::modules::{Dense, ModuleSpec, l2_normalize, read_modules};
use crate::{Pooling, PoolingError, PoolingMode};

/// Truncation length when a model says nothing (BERT's position table is 512 long).
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 512;

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// `config_sentence_transformers.json`: the prompts a model was trained with.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Prompts {
    /// Prompt name → text prepended to each input (e.g. `"query" → "query: "`).
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt applied when `encode` is given none.
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

/// `config_sentence_transformers.json` as sentence-transformers 6 reads it: the prompts, and
/// the Matryoshka width `encode` cuts embeddings to (`truncate_dim`, saved by
/// `SentenceTransformer(..., truncate_dim=N).save(...)`).
#[derive(Debug, Clone, Default, Deserialize)]
struct SentenceTransformersConfig {
    #[serde(flatten)]
    prompts: Prompts,
    #[serde(default)]
    truncate_dim: Option<usize>,
}

/// How [`SentenceEncoder::encode_with`] batches its inputs, the prompt it prepends, and what it
/// does to the embeddings after the model's pipeline.
pub struct EncodeOptions<'a> {
    /// Sentences per forward pass.
    pub batch_size: usize,
    /// Called after each batch with the number of sentences it held.
    pub on_batch: Option<&'a dyn Fn(usize)>,
    /// Text prepended to every input (sentence-transformers' `prompt=`); wins over
    /// `prompt_name`.
    pub prompt: Option<&'a str>,
    /// A key of the model's prompts (`prompt_name=`). With neither, the model's
    /// `default_prompt_name` applies, as in sentence-transformers.
    pub prompt_name: Option<&'a str>,
    /// Keep the first N values of each embedding (sentence-transformers' `truncate_dim=`);
    /// `None`: the model's own [`SentenceEncoder::truncate_dim`]. Cut after the whole pipeline,
    /// its `Normalize` module included, and not renormalized.
    pub truncate_dim: Option<usize>,
    /// L2-normalize each embedding after truncation (`normalize_embeddings=True`).
    pub normalize_embeddings: bool,
}

impl Default for EncodeOptions<'_> {
    fn default() -> Self {
        Self {
            batch_size: 32,
            on_batch: None,
            prompt: None,
            prompt_name: None,
            truncate_dim: None,
            normalize_embeddings: false,
        }
    }
}

/// The result of encoding: one embedding per input, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOutput {
    pub embeddings: Vec<Vec<f32>>,
    /// Indices of inputs longer than `max_seq_length`, which were truncated.
    pub truncated: Vec<usize>,
    /// Tokens per input after truncation, `[CLS]` and `[SEP]` included.
    pub tokens: Vec<usize>,
    /// Token slots the BERT computed: per batch, rows × its longest row (padding included).
    pub padded_tokens: usize,
}

/// What [`SentenceEncoder::with_int8_linears`] calibrates int8 on: everyday sentences of
/// varied length and kind (questions, numbers, negation, a few languages). The channels int8
/// must handle with care are outliers in every token of any input, so a dozen sentences find
/// them; `cargo xtask bench` checks the result on 200 others (minimum cosine to float32).
pub const INT8_CALIBRATION: &[&str] = &[
    "ok",
    "A man is playing a guitar on stage.",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "I did not like this movie at all: it was boring and far too long.",
    "Revenue rose 12.5% to $4.2 billion in the third quarter of 2023.",
    "How do I reset my password if I no longer have access to my email?",
    "Two dogs are running through a field of tall grass.",
    "The committee will publish its final report after the hearings in May.",
    "Der Zug nach Berlin hat zehn Minuten Verspätung.",
    "¿Dónde está la estación de tren más cercana?",
    "Machine learning models are trained on large datasets to make predictions.",
];

/// A sentence-transformers model: a BERT, a pooling, and the modules after it.
#[derive(Module, Debug)]
pub struct SentenceEncoder<B: Backend> {
    pub bert: BertModel<B>,
    /// Dense layers after pooling, in pipeline order.
    pub dense: Vec<Dense<B>>,
    #[module(skip)]
    pub pooling: Pooling,
    #[module(skip)]
    pub normalize: bool,
    #[module(skip)]
    pub tokenizer: BertTokenizer,
    #[module(skip)]
    pub bert_config: BertConfig,
    /// Lower-case text before tokenizing (`do_lower_case` in `sentence_bert_config.json`).
    #[module(skip)]
    pub lowercase: bool,
    /// The folder the transformer was loaded from: tokenizer files are copied from it on save.
    #[module(skip)]
    pub source_dir: Option<std::path::PathBuf>,
    /// Named prompts and the default one (`config_sentence_transformers.json`).
    #[module(skip)]
    pub prompts: Prompts,
    /// Width `encode` cuts embeddings to unless its options say otherwise
    /// (`config_sentence_transformers.json`'s `truncate_dim`, or
    /// [`SentenceEncoder::with_truncate_dim`]).
    #[module(skip)]
    pub truncate_dim: Option<usize>,
}

impl<B: EncoderBackend> SentenceEncoder<B> {
    /// Loads a model folder. With a `modules.json` (a sentence-transformers folder), its pipeline
    /// is followed exactly; without one (a plain Hugging Face model) the BERT is followed by mean
    /// pooling, as sentence-transformers does.
    pub fn from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, PoolingError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(PoolingError::MissingFile(dir.to_path_buf()));
        }
        let specs =
            read_modules(dir)?.unwrap_or_else(|| vec![ModuleSpec::Transformer(dir.to_path_buf())]);
        let ModuleSpec::Transformer(transformer_dir) = &specs[0] else {
            unreachable!("read_modules checks the first module");
        };
        let st_config_path = transformer_dir.join("sentence_bert_config.json");
        let st_config: SentenceBertConfig = if st_config_path.is_file() {
            crate::read_json(&st_config_path)?
        } else {
            SentenceBertConfig::default()
        };
        let (bert, bert_config) = BertModel::<B>::from_pretrained(transformer_dir, device)?;
        let max_len = st_config
            .max_seq_length
            .unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
            .min(bert_config.max_sequence_length());
        let tokenizer = BertTokenizer::from_dir(transformer_dir, max_len)?;

        let mut pooling = None;
        let mut dense = Vec::new();
        let mut normalize = false;
        for spec in &specs[1..] {
            if normalize && !matches!(spec, ModuleSpec::Normalize) {
                return Err(PoolingError::Invalid {
                    path: dir.join("modules.json"),
                    message: "only Normalize may follow Normalize".into(),
                });
            }
            match spec {
                ModuleSpec::Transformer(_) => {
                    return Err(PoolingError::Invalid {
                        path: dir.join("modules.json"),
                        message: "a second Transformer module is not supported".into(),
                    });
                }
                ModuleSpec::Pooling(path) => pooling = Some(Pooling::from_file(path)?),
                ModuleSpec::Dense(folder) => dense.push(Dense::from_dir(folder, device)?),
                ModuleSpec::Normalize => normalize = true,
            }
        }
        let pooling = match pooling {
            Some(p) => p,
            None => Pooling::new([PoolingMode::Mean], bert_config.hidden_size)?,
        };
        let model_config = read_model_config(dir)?;
        let encoder = Self {
            bert,
            dense,
            pooling,
            normalize,
            tokenizer,
            bert_config,
            lowercase: st_config.do_lower_case,
            source_dir: Some(transformer_dir.clone()),
            prompts: model_config.prompts,
            truncate_dim: None,
        };
        encoder.check_widths()?;
        encoder
            .with_truncate_dim(model_config.truncate_dim)
            .map_err(|e| PoolingError::Invalid {
                path: dir.join("config_sentence_transformers.json"),
                message: e.to_string(),
            })
    }

    /// Assembles an encoder from parts (a random BERT for tests, or one built in code).
    pub fn new(
        bert: BertModel<B>,
        bert_config: BertConfig,
        tokenizer: BertTokenizer,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Self, PoolingError> {
        let encoder = Self {
            bert,
            dense: Vec::new(),
            pooling,
            normalize,
            tokenizer,
            bert_config,
            lowercase: false,
            source_dir: None,
            prompts: Prompts::default(),
            truncate_dim: None,
        };
        encoder.check_widths()?;
        Ok(encoder)
    }

    fn check_widths(&self) -> Result<(), PoolingError> {
        let hidden = self.bert_config.hidden_size;
        if self.pooling.word_embedding_dimension != hidden {
            return Err(PoolingError::Shape(format!(
                "pooling reads {}-wide token embeddings but the model's hidden_size is {hidden}",
                self.pooling.word_embedding_dimension
            )));
        }
        let mut width = self.pooling.output_dim();
        for (i, d) in self.dense.iter().enumerate() {
            let inputs = d.linear.weight.dims()[0];
            if inputs != width {
                return Err(PoolingError::Shape(format!(
                    "Dense module {i} expects {inputs} inputs but receives {width}"
                )));
            }
            width = d.out_features();
        }
        Ok(())
    }

    /// Replaces the pooling (e.g. `--pooling cls`). Fails when a Dense layer after it expects
    /// another width.
    /// The model's `include_prompt` is kept.
    pub fn with_pooling(mut self, modes: &[PoolingMode]) -> Result<Self, PoolingError> {
        let include_prompt = self.pooling.include_prompt;
        self.pooling = Pooling::new(modes.iter().copied(), self.bert_config.hidden_size)?;
        self.pooling.include_prompt = include_prompt;
        self.check_widths()?;
        // A narrower pooling may leave the model's truncate_dim past the new width.
        self.truncate_dim = self.check_truncate_dim(self.truncate_dim)?;
        Ok(self)
    }

    /// Turns the final L2 normalization on or off.
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Changes the truncation length (capped by the model's position table).
    pub fn with_max_seq_length(mut self, max_len: usize) -> Result<Self, PoolingError> {
        let max_len = max_len.min(self.bert_config.max_sequence_length());
        self.tokenizer = BertTokenizer::new(self.tokenizer.inner().clone(), max_len)?;
        Ok(self)
    }

    /// Truncation length in tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Cuts every embedding `encode` returns to its first `dim` values (`None`: full width), as
    /// `SentenceTransformer(..., truncate_dim=dim)`. Fails for 0 or more than the pipeline's
    /// width (sentence-transformers would return empty or uncut vectors).
    pub fn with_truncate_dim(mut self, dim: Option<usize>) -> Result<Self, PoolingError> {
        self.truncate_dim = self.check_truncate_dim(dim)?;
        Ok(self)
    }

    fn check_truncate_dim(&self, dim: Option<usize>) -> Result<Option<usize>, PoolingError> {
        let full = self.embedding_dim();
        match dim {
            Some(0) => Err(PoolingError::TruncateDim(
                "truncate_dim must be at least 1".into(),
            )),
            Some(n) if n > full => Err(PoolingError::TruncateDim(format!(
                "truncate_dim {n} is larger than the model's embedding dimension ({full})"
            ))),
            dim => Ok(dim),
        }
    }

    /// Width of the pipeline's output, before any truncation: the last Dense layer's, else the
    /// pooling's (what task heads read).
    pub fn embedding_dim(&self) -> usize {
        self.dense
            .last()
            .map(|d| d.out_features())
            .unwrap_or_else(|| self.pooling.output_dim())
    }

    /// Width of the embeddings `encode` returns by default: the model's
    /// [`truncate_dim`](Self::truncate_dim), else [`embedding_dim`](Self::embedding_dim)
    /// (sentence-transformers' `get_embedding_dimension`).
    pub fn output_dim(&self) -> usize {
        self.truncate_dim.unwrap_or_else(|| self.embedding_dim())
    }

    /// Tokenizes texts (unpadded), applying the model's lower-casing.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>, PoolingError> {
        if self.lowercase {
            let lowered: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
            let refs: Vec<&str> = lowered.iter().map(String::as_str).collect();
            Ok(self.tokenizer.encode(&refs)?)
        } else {
            Ok(self.tokenizer.encode(texts)?)
        }
    }

    /// Tokenizes pre-split words for token tasks, normalized as [`SentenceEncoder::tokenize`]
    /// normalizes sentences (lower-cased when the model says `do_lower_case`), so token heads
    /// see the ids the encoder was trained on. Returns the ids and, per token, the index of the
    /// word it starts (`None` for special tokens and non-first sub-words).
    pub fn tokenize_words(
        &self,
        words: &[String],
    ) -> Result<(Encoded, Vec<Option<usize>>), PoolingError> {
        if self.lowercase {
            let lowered: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
            Ok(self.tokenizer.encode_words(&lowered)?)
        } else {
            Ok(self.tokenizer.encode_words(words)?)
        }
    }

    /// Pools token embeddings and applies the modules after pooling.
    pub fn pool(&self, tokens: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let x = self.pool_unnormalized(tokens, mask);
        if self.normalize { l2_normalize(x) } else { x }
    }

    /// Pooling and Dense layers, without the final normalization: the features task heads read
    /// (a unit-length vector would shrink every logit).
    pub fn pool_unnormalized(&self, tokens: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let mut x = self.pooling.forward(tokens, mask);
        for d in &self.dense {
            x = d.forward(x);
        }
        x
    }

    /// The BERT's last hidden state in f32, whatever precision the BERT runs in: pooling,
    /// Dense and normalization always work in f32.
    fn token_embeddings(&self, input: BertInput<B>) -> Tensor<B, 3> {
        let tokens = self.bert.forward(input);
        if tokens.dtype() == burn::tensor::DType::F32 {
            tokens
        } else {
            tokens.cast(burn::tensor::FloatDType::F32)
        }
    }

    /// Runs the BERT in `dtype` (bf16 or f16: reduced-precision inference; its weights are
    /// converted once, here). Pooling and the modules after it stay in f32.
    pub fn with_bert_dtype(mut self, dtype: burn::tensor::FloatDType) -> Self {
        self.bert = self.bert.with_float_dtype(dtype);
        self
    }

    /// Runs the BERT's projections in int8 ([`BertModel::with_int8_linears`]), calibrated on
    /// [`INT8_CALIBRATION`]; an error on a backend without int8 kernels.
    pub fn with_int8_linears(mut self) -> Result<Self, PoolingError> {
        let encoded = self.tokenize(INT8_CALIBRATION)?;
        let rows: Vec<&Encoded> = encoded.iter().collect();
        let device = self.bert.devices().into_iter().next().unwrap_or_default();
        let calibration = TokenBatch::pad(&rows, self.tokenizer.pad_id()).to_input::<B>(&device);
        self.bert = self.bert.with_int8_linears(calibration)?;
        Ok(self)
    }

    /// Token embeddings and the (unnormalized) pooled sentence features of one batch.
    pub fn features(&self, input: BertInput<B>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let mask = input.attention_mask.clone();
        let tokens = self.token_embeddings(input);
        let pooled = self.pool_unnormalized(tokens.clone(), mask);
        (tokens, pooled)
    }

    /// Sentence embeddings for one padded batch, `[batch, dim]`. Differentiable: training uses it.
    pub fn forward(&self, input: BertInput<B>) -> Tensor<B, 2> {
        let mask = input.attention_mask.clone();
        let tokens = self.token_embeddings(input);
        self.pool(tokens, mask)
    }

    /// Sentence embeddings of a batch whose rows start with a prompt of `prompt_length` tokens
    /// (see [`SentenceEncoder::prompt_length`]), left out of pooling when the pooling's
    /// `include_prompt` is false.
    pub fn forward_after_prompt(&self, input: BertInput<B>, prompt_length: usize) -> Tensor<B, 2> {
        let mask = input.attention_mask.clone();
        let tokens = self.token_embeddings(input);
        let mut x = self
            .pooling
            .forward_after_prompt(tokens, mask, prompt_length);
        for d in &self.dense {
            x = d.forward(x);
        }
        if self.normalize { l2_normalize(x) } else { x }
    }

    /// The prompt `encode` prepends, as sentence-transformers resolves it: `prompt` if given
    /// (an empty one is none), else the prompt named `prompt_name` (an error naming the known
    /// ones if there is none by that name), else the model's default prompt, if any.
    pub fn resolve_prompt(
        &self,
        prompt: Option<&str>,
        prompt_name: Option<&str>,
    ) -> Result<Option<String>, PoolingError> {
        let prompts = &self.prompts.prompts;
        let prompt = match (prompt, prompt_name) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(name)) => Some(prompts.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = prompts.keys().map(String::as_str).collect();
                PoolingError::UnknownPrompt(format!(
                    "no prompt named `{name}` in the model's config_sentence_transformers.json \
                     (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?),
            (None, None) => self
                .prompts
                .default_prompt_name
                .as_ref()
                .and_then(|name| prompts.get(name).cloned()),
        };
        Ok(prompt.filter(|p| !p.is_empty()))
    }

    /// Tokens a prompt occupies at the start of a row: `[CLS]` and the prompt's own tokens,
    /// without the special token the tokenizer appends (sentence-transformers'
    /// `_get_prompt_length`).
    pub fn prompt_length(&self, prompt: &str) -> Result<usize, PoolingError> {
        let mut both = self.tokenize(&[prompt, ""])?;
        let (empty, prompt) = (both.pop().expect("two"), both.pop().expect("two"));
        let appended = !empty.ids.is_empty() && prompt.ids.last() == empty.ids.last();
        Ok(prompt.ids.len() - usize::from(appended))
    }

    /// Encodes texts with default options (batch size 32).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, PoolingError> {
        Ok(self
            .encode_with(texts, &EncodeOptions::default())?
            .embeddings)
    }

    /// Encodes texts: tokenizes all, sorts by length so each batch pads little, runs the batches,
    /// and returns embeddings in input order, truncated and normalized as the options say.
    pub fn encode_with(
        &self,
        texts: &[&str],
        options: &EncodeOptions,
    ) -> Result<EncodeOutput, PoolingError> {
        let truncate_dim = self
            .check_truncate_dim(options.truncate_dim)?
            .or(self.truncate_dim);
        let prompt = self.resolve_prompt(options.prompt, options.prompt_name)?;
        let (encoded, prompt_length) = match &prompt {
            None => (self.tokenize(texts)?, 0),
            Some(prompt) => {
                let prompted: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
                let refs: Vec<&str> = prompted.iter().map(String::as_str).collect();
                (self.tokenize(&refs)?, self.prompt_length(prompt)?)
            }
        };
        let truncated = encoded
            .iter()
            .enumerate()
            .filter(|(_, e)| e.truncated)
            .map(|(i, _)| i)
            .collect();
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));

        let device = self.bert.devices().into_iter().next().unwrap_or_default();
        let dim = self.embedding_dim();
        let mut embeddings = vec![Vec::new(); texts.len()];
        let mut padded_tokens = 0;
        for chunk in order.chunks(options.batch_size.max(1)) {
            let rows: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            padded_tokens += rows.len() * rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
            let batch = TokenBatch::pad(&rows, self.tokenizer.pad_id());
            let out = self.forward_after_prompt(batch.to_input::<B>(&device), prompt_length);
            let values = out
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| PoolingError::Shape(format!("{e:?}")))?;
            for (row, &i) in values.chunks(dim).zip(chunk) {
                embeddings[i] = finish_embedding(row, truncate_dim, options.normalize_embeddings);
            }
            if let Some(callback) = options.on_batch {
                callback(chunk.len());
            }
        }
        Ok(EncodeOutput {
            embeddings,
            truncated,
            tokens: encoded.iter().map(|e| e.ids.len()).collect(),
            padded_tokens,
        })
    }
}

/// One embedding as `encode` returns it, in sentence-transformers' order: cut to
/// `truncate_dim`, then (`normalize_embeddings`) divided by its length, as
/// `torch.nn.functional.normalize` does (by at least 1e-12).
fn finish_embedding(row: &[f32], truncate_dim: Option<usize>, normalize: bool) -> Vec<f32> {
    let mut e = row[..truncate_dim.unwrap_or(row.len())].to_vec();
    if normalize {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        e.iter_mut().for_each(|x| *x /= norm);
    }
    e
}

/// Reads a model folder's `config_sentence_transformers.json` (defaults when it is absent); a
/// `default_prompt_name` that names no prompt is an error, as in sentence-transformers.
fn read_model_config(dir: &Path) -> Result<SentenceTransformersConfig, PoolingError> {
    let path = dir.join("config_sentence_transformers.json");
    if !path.is_file() {
        return Ok(SentenceTransformersConfig::default());
    }
    let config: SentenceTransformersConfig = crate::read_json(&path)?;
    if let Some(name) = &config.prompts.default_prompt_name
        && !config.prompts.prompts.contains_key(name)
    {
        return Err(PoolingError::Invalid {
            path,
            message: format!("default_prompt_name `{name}` is not a key of `prompts`"),
        });
    }
    Ok(config)
}

/// Tokenizer files copied verbatim into a saved model when the source folder has them.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

impl<B: EncoderBackend> SentenceEncoder<B> {
    /// Saves a sentence-transformers folder that Python `SentenceTransformer(dir)` and
    /// [`SentenceEncoder::from_dir`] both load: `config.json`, `model.safetensors` (Hugging Face
    /// key names), tokenizer files, `sentence_bert_config.json`, `modules.json`,
    /// `1_Pooling/config.json`, `N_Dense/` folders and `N_Normalize/`. Each file is written
    /// atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), PoolingError> {
        let io = |path: &Path, e: std::io::Error| PoolingError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        self.bert.save_pretrained(&self.bert_config, dir)?;
        let mut copied = false;
        if let Some(src) = &self.source_dir {
            for name in TOKENIZER_FILES {
                let from = src.join(name);
                if from.is_file() && src != dir {
                    let bytes = std::fs::read(&from).map_err(|e| io(&from, e))?;
                    st_backbone::write_atomic(&dir.join(name), &bytes)?;
                    copied |= *name == "tokenizer.json";
                }
            }
        }
        if !copied && !dir.join("tokenizer.json").is_file() {
            let path = dir.join("tokenizer.json");
            let text =
                self.tokenizer
                    .inner()
                    .to_string(true)
                    .map_err(|e| PoolingError::Invalid {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            st_backbone::write_atomic(&path, text.as_bytes())?;
        }
        let json = |value: serde_json::Value| {
            serde_json::to_string_pretty(&value).expect("json serializes") + "\n"
        };
        st_backbone::write_atomic(
            &dir.join("sentence_bert_config.json"),
            json(serde_json::json!({
                "max_seq_length": self.max_seq_length(),
                "do_lower_case": self.lowercase,
            }))
            .as_bytes(),
        )?;
        let mut modules = vec![serde_json::json!({
            "idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"
        })];
        let pooling_dir = dir.join("1_Pooling");
        std::fs::create_dir_all(&pooling_dir).map_err(|e| io(&pooling_dir, e))?;
        st_backbone::write_atomic(
            &pooling_dir.join("config.json"),
            json(serde_json::to_value(self.pooling.to_config_file()).expect("serializes"))
                .as_bytes(),
        )?;
        modules.push(serde_json::json!({
            "idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"
        }));
        for dense in &self.dense {
            let idx = modules.len();
            let name = format!("{idx}_Dense");
            dense.save_dir(&dir.join(&name))?;
            modules.push(serde_json::json!({
                "idx": idx, "name": idx.to_string(), "path": name, "type": "sentence_transformers.models.Dense"
            }));
        }
        if self.normalize {
            let idx = modules.len();
            let name = format!("{idx}_Normalize");
            let path = dir.join(&name);
            std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            modules.push(serde_json::json!({
                "idx": idx, "name": idx.to_string(), "path": name, "type": "sentence_transformers.models.Normalize"
            }));
        }
        if !self.prompts.prompts.is_empty() || self.truncate_dim.is_some() {
            let mut config = serde_json::to_value(&self.prompts).expect("serializes");
            if let Some(dim) = self.truncate_dim {
                config["truncate_dim"] = dim.into();
            }
            st_backbone::write_atomic(
                &dir.join("config_sentence_transformers.json"),
                json(config).as_bytes(),
            )?;
        }
        st_backbone::write_atomic(
            &dir.join("modules.json"),
            json(serde_json::Value::Array(modules)).as_bytes(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;

    /// A tiny encoder whose tokenizer keeps case (`do_lower_case: false` in its folder) while
    /// the sentence-transformers config lower-cases, as uncased models ship.
    fn uncased_encoder(dir: &Path) -> SentenceEncoder<Flex> {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\nHello\n";
        std::fs::write(dir.join("vocab.txt"), vocab).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"do_lower_case": false}"#,
        )
        .unwrap();
        let config = BertConfig::tiny(7);
        let bert = config.init::<Flex>(false, &Default::default());
        let tokenizer = BertTokenizer::from_dir(dir, 16).unwrap();
        let pooling = Pooling::new([PoolingMode::Mean], config.hidden_size).unwrap();
        let mut encoder = SentenceEncoder::new(bert, config, tokenizer, pooling, true).unwrap();
        encoder.lowercase = true;
        encoder
    }

    #[test]
    fn word_tokenization_lower_cases_like_sentence_tokenization() {
        let dir = tempfile::tempdir().unwrap();
        let encoder = uncased_encoder(dir.path());
        let words = vec!["Hello".to_string(), "World".to_string()];
        let (encoded, starts) = encoder.tokenize_words(&words).unwrap();
        let sentence = encoder.tokenize(&["Hello World"]).unwrap().remove(0);
        assert_eq!(encoded.ids, sentence.ids);
        // [CLS] hello world [SEP]: the cased "Hello" (id 6) and [UNK] must not appear.
        assert_eq!(encoded.ids, vec![2, 4, 5, 3]);
        assert_eq!(starts, vec![None, Some(0), Some(1), None]);
    }
}
