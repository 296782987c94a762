//! Loading Hugging Face checkpoints (`model.safetensors`, `pytorch_model.bin`) into [`BertModel`].
//!
//! burn-store reads both formats in pure Rust. Its `PyTorchToBurnAdapter` transposes Linear
//! weights (`[out, in]` in PyTorch) and maps LayerNorm `weight`/`bias` to `gamma`/`beta`; the key
//! remapping below handles the few names Rust cannot spell.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::{
    ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use crate::{Architecture, BackboneError, BertConfig, BertModel};

/// Hugging Face key → our module path. Applied in order to every key in the file (after the
/// architecture's own renames, [`load_remapping`]).
pub const KEY_REMAPPING: &[(&str, &str)] = &[
    // BertFor* checkpoints nest the encoder under `bert.`.
    (r"^bert\.", ""),
    // Burn's LayerNorm calls its parameters gamma/beta. Old TF-converted checkpoints
    // (bert-base-uncased's .bin) already say gamma/beta; newer ones say weight/bias.
    (r"LayerNorm\.(weight|gamma)$", "layer_norm.gamma"),
    (r"LayerNorm\.(bias|beta)$", "layer_norm.beta"),
    (r"\.attention\.self\.", ".attention.self_attn."),
];

/// Our module path → Hugging Face key, for saving (the inverse of [`KEY_REMAPPING`]; the adapter
/// turns `gamma`/`beta` back into `weight`/`bias`).
const SAVE_REMAPPING: &[(&str, &str)] = &[
    (r"layer_norm\.", "LayerNorm."),
    (r"\.attention\.self_attn\.", ".attention.self."),
];

/// Every rename from a checkpoint of `architecture` to our module paths, in order.
pub fn load_remapping(architecture: Architecture) -> Vec<(&'static str, &'static str)> {
    let generic = KEY_REMAPPING.iter();
    match architecture {
        Architecture::Bert => generic.copied().collect(),
        // After the generic renames: the MPNet ones expect `layer_norm` already renamed.
        Architecture::MPNet => generic
            .chain(crate::mpnet::LOAD_REMAPPING)
            .copied()
            .collect(),
        // Before them: these turn the family's keys into BERT's Hugging Face keys.
        Architecture::Roberta | Architecture::XlmRoberta => crate::roberta::LOAD_REMAPPING
            .iter()
            .chain(generic)
            .copied()
            .collect(),
        Architecture::DistilBert => crate::distilbert::LOAD_REMAPPING
            .iter()
            .chain(generic)
            .copied()
            .collect(),
    }
}

/// Every rename from our module paths to a checkpoint of `architecture`, in order.
fn save_remapping(architecture: Architecture) -> Vec<(&'static str, &'static str)> {
    match architecture {
        Architecture::Bert | Architecture::Roberta | Architecture::XlmRoberta => {
            SAVE_REMAPPING.to_vec()
        }
        Architecture::MPNet => crate::mpnet::SAVE_REMAPPING
            .iter()
            .chain(SAVE_REMAPPING)
            .copied()
            .collect(),
        // BERT's Hugging Face keys first, then DistilBERT's names for them.
        Architecture::DistilBert => SAVE_REMAPPING
            .iter()
            .chain(crate::distilbert::SAVE_REMAPPING)
            .copied()
            .collect(),
    }
}

/// Keys a checkpoint may carry that are not encoder weights: buffers and task heads of other
/// architectures (masked-LM `cls.`, `lm_head.` and DistilBERT's `vocab_*`, sequence
/// classification `classifier.` and DistilBERT's `pre_classifier.`, QA `qa_outputs.`).
fn is_ignorable(key: &str) -> bool {
    key.ends_with("position_ids")
        || key.starts_with("cls.")
        || key.starts_with("vocab_")
        || key.starts_with("pre_classifier.")
        || key.starts_with("classifier.")
        || key.starts_with("qa_outputs.")
        || key.starts_with("lm_head.")
}

/// Every way a burn-store load went wrong, one line each: missing, mis-shaped and unexpected
/// tensors (keys for which `ignorable` is true are not reported as unexpected).
pub fn load_problems(result: &ApplyResult, ignorable: impl Fn(&str) -> bool) -> Vec<String> {
    let mut problems: Vec<String> = result
        .missing
        .iter()
        .map(|(key, _)| format!("missing: {key}"))
        .collect();
    problems.extend(result.errors.iter().map(|e| format!("mismatch: {e}")));
    problems.extend(
        result
            .unused
            .iter()
            .filter(|k| !ignorable(k))
            .map(|k| format!("unexpected: {k}")),
    );
    problems
}

/// The checkpoint file in a model folder: `model.safetensors` first, else `pytorch_model.bin`.
pub fn find_weights(dir: &Path) -> Result<PathBuf, BackboneError> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(BackboneError::MissingFile {
        path: dir.join("model.safetensors"),
        hint: "expected model.safetensors or pytorch_model.bin in the model folder".into(),
    })
}

enum Store {
    Safetensors(SafetensorsStore),
    Pytorch(PytorchStore),
}

impl Store {
    fn open(path: &Path, architecture: Architecture) -> Self {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .allow_partial(true)
                .validate(false);
            for (from, to) in load_remapping(architecture) {
                store = store.with_key_remapping(from, to);
            }
            Store::Safetensors(store)
        } else {
            let mut store = PytorchStore::from_file(path)
                .allow_partial(true)
                .validate(false);
            for (from, to) in load_remapping(architecture) {
                store = store.with_key_remapping(from, to);
            }
            Store::Pytorch(store)
        }
    }

    fn keys(&mut self) -> Result<Vec<String>, String> {
        use burn_store::ModuleStore;
        match self {
            Store::Safetensors(s) => s.keys().map_err(|e| e.to_string()),
            Store::Pytorch(s) => s.keys().map_err(|e| e.to_string()),
        }
    }

    fn apply<B: Backend>(&mut self, model: &mut BertModel<B>) -> Result<ApplyResult, String> {
        match self {
            Store::Safetensors(s) => model.load_from(s).map_err(|e| e.to_string()),
            Store::Pytorch(s) => model.load_from(s).map_err(|e| e.to_string()),
        }
    }
}

impl<B: Backend> BertModel<B> {
    /// Loads `config.json` and the checkpoint from a Hugging Face model folder.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<(Self, BertConfig), BackboneError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(BackboneError::MissingFile {
                path: config_path,
                hint: "a Hugging Face model folder holds config.json".into(),
            });
        }
        let config = BertConfig::from_file(&config_path)?;
        let weights = find_weights(dir)?;
        let model = Self::from_checkpoint(&config, &weights, device)?;
        Ok((model, config))
    }

    /// Builds a model of `config`'s shape and fills it from one checkpoint file. Every weight
    /// must be present with the right shape; keys that are neither ours nor known head/buffer
    /// keys are reported too, so a wrong file never loads silently.
    pub fn from_checkpoint(
        config: &BertConfig,
        path: &Path,
        device: &B::Device,
    ) -> Result<Self, BackboneError> {
        let fail = |message: String| BackboneError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let mut store = Store::open(path, config.architecture());
        let keys = store.keys().map_err(fail)?;
        let with_pooler = keys.iter().any(|k| k.starts_with("pooler."));
        let mut model = config.init::<B>(with_pooler, device);
        let result = store.apply(&mut model).map_err(fail)?;

        let problems = load_problems(&result, is_ignorable);
        if !problems.is_empty() {
            return Err(fail(format!(
                "{} tensor(s) do not fit a {} with this config.json:\n  {}",
                problems.len(),
                config.architecture().hf_class(),
                problems.join("\n  ")
            )));
        }
        Ok(model)
    }
}

impl<B: Backend> BertModel<B> {
    /// Saves the weights as `model.safetensors` with Hugging Face key names (loadable by
    /// `transformers.BertModel`), written atomically.
    /// An int8 model ([`BertModel::with_int8_linears`]) is refused: its float weights were
    /// released.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), BackboneError> {
        if self.is_int8() {
            return Err(BackboneError::Weights {
                path: path.to_path_buf(),
                message: "this model runs in int8 and released its float weights; save the \
                          float model (quantizing is done at load, by --dtype int8)"
                    .into(),
            });
        }
        let tmp = crate::atomic::temp_sibling(path);
        let mut store = SafetensorsStore::from_file(&tmp).with_to_adapter(BurnToPyTorchAdapter);
        for (from, to) in save_remapping(self.architecture()) {
            store = store.with_key_remapping(from, to);
        }
        let saved = self
            .save_into(&mut store)
            .map_err(|e| BackboneError::Weights {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| BackboneError::io(path, e)));
        if saved.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        saved
    }

    /// Saves `config.json` and `model.safetensors` into `dir` (created if needed): a folder that
    /// [`BertModel::from_pretrained`] and Hugging Face `transformers` both load.
    pub fn save_pretrained(&self, config: &BertConfig, dir: &Path) -> Result<(), BackboneError> {
        std::fs::create_dir_all(dir).map_err(|e| BackboneError::io(dir, e))?;
        let mut json = serde_json::to_value(config).expect("config serializes");
        json["architectures"] = serde_json::json!([config.architecture().hf_class()]);
        if config.architecture() == Architecture::DistilBert {
            // DistilBertConfig reads its own field names only (`hidden_dim`, not
            // `intermediate_size`), so a BERT-named config would load with defaults.
            crate::distilbert::to_distilbert_names(&mut json);
        }
        let text = serde_json::to_string_pretty(&json).expect("json serializes");
        crate::write_atomic(&dir.join("config.json"), text.as_bytes())?;
        self.save_safetensors(&dir.join("model.safetensors"))
    }
}
