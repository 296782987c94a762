//! The sentence-transformers modules that follow pooling (`Dense`, `Normalize`) and the
//! `modules.json` that lists a model's pipeline.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu, sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn_store::{
    BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use serde::{Deserialize, Serialize};

use crate::PoolingError;

/// Activation after a [`Dense`] layer, named as sentence-transformers saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DenseActivation {
    #[serde(rename = "torch.nn.modules.activation.Tanh")]
    Tanh,
    #[serde(rename = "torch.nn.modules.linear.Identity")]
    Identity,
    #[serde(rename = "torch.nn.modules.activation.ReLU")]
    Relu,
    #[serde(rename = "torch.nn.modules.activation.GELU")]
    Gelu,
    #[serde(rename = "torch.nn.modules.activation.Sigmoid")]
    Sigmoid,
}

/// `Dense/config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenseConfigFile {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default = "tanh_name")]
    pub activation_function: DenseActivation,
}

fn yes() -> bool {
    true
}
fn tanh_name() -> DenseActivation {
    DenseActivation::Tanh
}

/// A linear projection of the sentence embedding, then an activation (sentence-transformers'
/// `Dense` module, used by models that change the embedding width).
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    /// Named `linear` to match the checkpoint key `linear.weight`.
    pub linear: Linear<B>,
    #[module(skip)]
    pub activation: DenseActivation,
}

impl<B: Backend> Dense<B> {
    /// A randomly initialized layer.
    pub fn new(config: &DenseConfigFile, device: &B::Device) -> Self {
        Self {
            linear: LinearConfig::new(config.in_features, config.out_features)
                .with_bias(config.bias)
                .init(device),
            activation: config.activation_function,
        }
    }

    /// Loads a `Dense` folder: `config.json` plus `model.safetensors` or `pytorch_model.bin`.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self, PoolingError> {
        let config: DenseConfigFile = crate::read_json(&dir.join("config.json"))?;
        let mut dense = Self::new(&config, device);
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .map(|n| dir.join(n))
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| PoolingError::MissingFile(dir.join("model.safetensors")))?;
        let fail = |message: String| PoolingError::Invalid {
            path: weights.clone(),
            message,
        };
        let result = if weights.extension().is_some_and(|e| e == "safetensors") {
            let mut store = SafetensorsStore::from_file(&weights)
                .with_from_adapter(PyTorchToBurnAdapter)
                .allow_partial(true)
                .validate(false);
            dense
                .load_from(&mut store)
                .map_err(|e| fail(e.to_string()))?
        } else {
            let mut store = PytorchStore::from_file(&weights)
                .allow_partial(true)
                .validate(false);
            dense
                .load_from(&mut store)
                .map_err(|e| fail(e.to_string()))?
        };
        let problems = st_backbone::load_problems(&result, |_| false);
        if !problems.is_empty() {
            return Err(fail(problems.join("; ")));
        }
        Ok(dense)
    }

    /// Writes a `Dense` folder as sentence-transformers does: `config.json` and
    /// `model.safetensors` with the key `linear.weight` (`[out, in]`).
    pub fn save_dir(&self, dir: &Path) -> Result<(), PoolingError> {
        std::fs::create_dir_all(dir).map_err(|e| PoolingError::Invalid {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let [in_features, out_features] = self.linear.weight.dims();
        let config = DenseConfigFile {
            in_features,
            out_features,
            bias: self.linear.bias.is_some(),
            activation_function: self.activation,
        };
        let text = serde_json::to_string_pretty(&config).expect("config serializes");
        st_backbone::write_atomic(&dir.join("config.json"), text.as_bytes())?;
        let path = dir.join("model.safetensors");
        let tmp = dir.join(".model.safetensors.tmp");
        let mut store = SafetensorsStore::from_file(&tmp).with_to_adapter(BurnToPyTorchAdapter);
        self.save_into(&mut store)
            .map_err(|e| PoolingError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
        std::fs::rename(&tmp, &path).map_err(|e| PoolingError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.linear.forward(x);
        match self.activation {
            DenseActivation::Tanh => tanh(x),
            DenseActivation::Identity => x,
            DenseActivation::Relu => relu(x),
            DenseActivation::Gelu => gelu(x),
            DenseActivation::Sigmoid => sigmoid(x),
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.linear.weight.dims()[1]
    }
}

/// Divides each row by its L2 norm (floored at 1e-12, as `torch.nn.functional.normalize` does).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// One entry of `modules.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub idx: usize,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// What a sentence-transformers folder's `modules.json` says, resolved to our modules.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleSpec {
    /// The transformer, with its folder (usually the model root).
    Transformer(PathBuf),
    /// Pooling, with its `config.json`.
    Pooling(PathBuf),
    /// A Dense layer folder.
    Dense(PathBuf),
    /// L2 normalization.
    Normalize,
}

/// Reads `modules.json` from a model folder. A folder without one is a plain Hugging Face model:
/// sentence-transformers then uses the transformer followed by mean pooling, and so do we
/// (`Ok(None)`).
pub fn read_modules(dir: &Path) -> Result<Option<Vec<ModuleSpec>>, PoolingError> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(None);
    }
    let mut entries: Vec<ModuleEntry> = crate::read_json(&path)?;
    entries.sort_by_key(|e| e.idx);
    let specs = entries
        .into_iter()
        .map(|e| {
            let folder = dir.join(&e.path);
            let short = e.kind.rsplit('.').next().unwrap_or(&e.kind);
            match short {
                "Transformer" => Ok(ModuleSpec::Transformer(folder)),
                "Pooling" => Ok(ModuleSpec::Pooling(folder.join("config.json"))),
                "Dense" => Ok(ModuleSpec::Dense(folder)),
                "Normalize" => Ok(ModuleSpec::Normalize),
                _ => Err(PoolingError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "module {} has type `{}`; supported: Transformer, Pooling, Dense, Normalize",
                        e.idx, e.kind
                    ),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    match specs.first() {
        Some(ModuleSpec::Transformer(_)) => Ok(Some(specs)),
        _ => Err(PoolingError::Invalid {
            path,
            message: "the first module must be a Transformer".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows_finite() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![3.0f32, 4.0, 0.0, 0.0], [2, 2]),
            &device,
        );
        let y = l2_normalize(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(y, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn modules_json_of_minilm_resolves() {
        let dir = std::env::temp_dir().join(format!("st-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        let specs = read_modules(&dir).unwrap().unwrap();
        assert_eq!(
            specs,
            vec![
                ModuleSpec::Transformer(dir.join("")),
                ModuleSpec::Pooling(dir.join("1_Pooling").join("config.json")),
                ModuleSpec::Normalize,
            ]
        );
    }

    #[test]
    fn unknown_module_types_are_named() {
        let dir = std::env::temp_dir().join(format!("st-modules-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_X","type":"sentence_transformers.models.LSTM"}]"#,
        )
        .unwrap();
        let err = read_modules(&dir).unwrap_err().to_string();
        assert!(
            err.contains("LSTM") && err.contains("modules.json"),
            "{err}"
        );
    }

    #[test]
    fn dense_applies_its_activation() {
        let device = Default::default();
        let config = DenseConfigFile {
            in_features: 2,
            out_features: 1,
            bias: true,
            activation_function: DenseActivation::Tanh,
        };
        let mut dense = Dense::<Flex>::new(&config, &device);
        dense.linear.weight = dense
            .linear
            .weight
            .map(|_| Tensor::from_data(TensorData::new(vec![1.0f32, 2.0], [2, 1]), &device));
        dense.linear.bias = dense
            .linear
            .bias
            .map(|b| b.map(|_| Tensor::zeros([1], &device)));
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.5f32, 0.25], [1, 2]), &device);
        let y = dense.forward(x).into_data().to_vec::<f32>().unwrap();
        assert!((y[0] - 1f32.tanh()).abs() < 1e-6, "{y:?}");
    }
}
