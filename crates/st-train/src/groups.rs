//! Parameter groups and their learning rates: layer-wise LR decay and explicit overrides.
//!
//! Groups follow the model's depth: `embeddings` (depth 0), `layer.i` (depth i+1), `pooler`
//! (the BERT pooler and Dense modules, depth L+1) and one `head.NAME` per task head (depth L+1).
//! Layer-wise decay in the ELECTRA form gives each group `base · decay^(L+1−depth)`: the top
//! learns at `base`, each layer below a factor `decay` slower, embeddings slowest. Heads use
//! `head_lr` when set. Overrides by parameter-path pattern come last and win.

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One trainable tensor of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry {
    /// Dotted module path, e.g. `encoder.bert.encoder.layer.3.attention.self_attn.query.weight`.
    pub path: String,
    pub id: ParamId,
    /// Number of dimensions (1 for biases and norms, 2 for matrices and embeddings).
    pub rank: usize,
    pub numel: usize,
}

impl ParamEntry {
    /// PyTorch/Hugging Face convention: no weight decay on biases and LayerNorm parameters.
    pub fn decays(&self) -> bool {
        !(self.path.ends_with(".bias")
            || self.path.ends_with(".gamma")
            || self.path.ends_with(".beta"))
    }
}

/// Every float parameter of a module, in visiting order.
pub fn params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamEntry> {
    module
        .collect(None, None, false)
        .into_iter()
        .filter(|s| s.dtype.is_float())
        .filter_map(|s| {
            Some(ParamEntry {
                path: s.full_path(),
                id: s.tensor_id?,
                rank: s.shape.num_dims(),
                numel: s.shape.num_elements(),
            })
        })
        .collect()
}

/// The group a parameter path belongs to and its depth, for a `MultiTaskModel` with `layers`
/// encoder layers and heads named `head_names` (in order).
pub fn group_of(path: &str, layers: usize, head_names: &[String]) -> (String, usize) {
    let top = layers + 1;
    if let Some(rest) = path.strip_prefix("heads.") {
        let index: usize = rest
            .split('.')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let name = head_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| index.to_string());
        return (format!("head.{name}"), top);
    }
    // MPNet's relative-position table serves every layer, like the position embeddings.
    if path.contains("bert.embeddings.")
        || path.starts_with("embeddings.")
        || path.contains("encoder.relative_attention_bias.")
    {
        return ("embeddings".into(), 0);
    }
    if let Some(pos) = path.find("encoder.layer.") {
        let rest = &path[pos + "encoder.layer.".len()..];
        if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
            return (format!("layer.{i}"), i + 1);
        }
    }
    if path.contains("pooler.") || path.starts_with("encoder.dense.") {
        return ("pooler".into(), top);
    }
    ("other".into(), top)
}

/// A learning rate for every parameter whose path matches `pattern` (`*` matches any run of
/// characters, e.g. `heads.*` or `*.attention.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrOverride {
    pub pattern: String,
    pub lr: f64,
}

/// How learning rates are spread over the groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerwiseLrDecay {
    /// Learning rate of the top of the network (pooler and, unless `head_lr`, the heads).
    pub base: f64,
    /// Factor per layer going down; 1.0 is one flat learning rate.
    #[serde(default = "one")]
    pub decay: f64,
    /// Learning rate of every task head (default: `base`).
    #[serde(default)]
    pub head_lr: Option<f64>,
    /// Explicit rates by parameter path; the first match wins over decay and `head_lr`.
    #[serde(default)]
    pub overrides: Vec<LrOverride>,
}

fn one() -> f64 {
    1.0
}

impl LayerwiseLrDecay {
    pub fn flat(base: f64) -> Self {
        Self {
            base,
            decay: 1.0,
            head_lr: None,
            overrides: Vec::new(),
        }
    }

    /// The rate of the task heads: `head_lr`, else `base`. Per-task parameters outside the
    /// model (uncertainty weighting's log-variances) learn at it too.
    pub fn head_rate(&self) -> f64 {
        self.head_lr.unwrap_or(self.base)
    }

    /// The rate of a group at `depth` in a network of `layers` layers.
    pub fn lr(&self, group: &str, depth: usize, layers: usize) -> f64 {
        if group.starts_with("head.")
            && let Some(lr) = self.head_lr
        {
            return lr;
        }
        let steps_down = (layers + 1).saturating_sub(depth) as i32;
        self.base * self.decay.powi(steps_down)
    }

    /// Every rate positive and finite, the decay in (0, 1]; errors name the config key and
    /// the flag.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if !(self.base > 0.0 && self.base.is_finite()) {
            return bad(format!(
                "`lr.base` (--lr) is {}: a learning rate must be a positive finite number",
                self.base
            ));
        }
        if let Some(head) = self.head_lr
            && !(head > 0.0 && head.is_finite())
        {
            return bad(format!(
                "`lr.head_lr` (--head-lr) is {head}: a learning rate must be a positive finite number"
            ));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return bad(format!(
                "`lr.decay` (--layer-decay) is {}: it must be in (0, 1]",
                self.decay
            ));
        }
        for o in &self.overrides {
            if !(o.lr >= 0.0 && o.lr.is_finite()) {
                return bad(format!(
                    "`lr.overrides` `{}`: lr {} must be a finite number ≥ 0",
                    o.pattern, o.lr
                ));
            }
        }
        Ok(())
    }
}

/// `*`-glob match.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Parameters that share a learning rate and are stepped together.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    pub name: String,
    pub depth: usize,
    pub lr: f64,
    pub params: Vec<ParamEntry>,
}

impl ParamGroup {
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.numel).sum()
    }
}

/// Splits parameters into groups with their rates. Overridden parameters form their own group,
/// named `GROUP[pattern]`.
pub fn build_groups(
    params: &[ParamEntry],
    layers: usize,
    head_names: &[String],
    policy: &LayerwiseLrDecay,
) -> Vec<ParamGroup> {
    let mut groups: Vec<ParamGroup> = Vec::new();
    for p in params {
        let (mut name, depth) = group_of(&p.path, layers, head_names);
        let mut lr = policy.lr(&name, depth, layers);
        if let Some(o) = policy
            .overrides
            .iter()
            .find(|o| glob_match(&o.pattern, &p.path))
        {
            name = format!("{name}[{}]", o.pattern);
            lr = o.lr;
        }
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.params.push(p.clone()),
            None => groups.push(ParamGroup {
                name,
                depth,
                lr,
                params: vec![p.clone()],
            }),
        }
    }
    groups.sort_by_key(|g| g.depth);
    groups
}

/// The table printed at the start of training: group, #params, lr.
pub fn group_table(groups: &[ParamGroup], trainable: impl Fn(&ParamGroup) -> bool) -> String {
    let mut out = format!(
        "{:<28} {:>12} {:>12}  {}\n",
        "group", "params", "lr", "trains"
    );
    for g in groups {
        out.push_str(&format!(
            "{:<28} {:>12} {:>12.3e}  {}\n",
            g.name,
            g.numel(),
            g.lr,
            if trainable(g) { "yes" } else { "frozen" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_groups_and_depths() {
        let heads = vec!["topic".to_string(), "sentiment".to_string()];
        let g = |p| group_of(p, 6, &heads);
        assert_eq!(
            g("encoder.bert.embeddings.word_embeddings.weight"),
            ("embeddings".into(), 0)
        );
        assert_eq!(
            g("encoder.bert.encoder.layer.0.attention.self_attn.query.weight"),
            ("layer.0".into(), 1)
        );
        assert_eq!(
            g("encoder.bert.encoder.layer.5.output.dense.bias"),
            ("layer.5".into(), 6)
        );
        assert_eq!(g("encoder.bert.pooler.dense.weight"), ("pooler".into(), 7));
        assert_eq!(
            g("heads.1.classifier.out.weight"),
            ("head.sentiment".into(), 7)
        );
    }

    /// Groups go by our module paths, which every family's checkpoint is renamed into at load:
    /// a DistilBERT checkpoint (`transformer.layer.N.ffn.lin1`, ...) still gives one group per
    /// layer, by index, and bottom-k freezing picks them by depth.
    #[test]
    fn distilbert_layers_group_by_index() {
        use crate::freeze::{Freeze, FreezePlan};
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../st-backbone/tests/fixtures/distilbert/model"
        );
        let (model, config) =
            st_backbone::BertModel::<burn_flex::Flex>::from_pretrained(dir, &Default::default())
                .unwrap();
        assert_eq!(model.architecture(), st_backbone::Architecture::DistilBert);
        let layers = config.num_hidden_layers;
        let policy = LayerwiseLrDecay {
            base: 1e-3,
            decay: 0.5,
            head_lr: None,
            overrides: vec![],
        };
        let groups = build_groups(&params(&model), layers, &[], &policy);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["embeddings", "layer.0", "layer.1"]);
        // Attention (4 × (w, b)), 2 LayerNorms, 2 feed-forward linears: 16 tensors per layer.
        assert!(groups[1..].iter().all(|g| g.params.len() == 16));
        assert_eq!(groups[1].numel(), groups[2].numel());
        assert_eq!((groups[1].lr, groups[2].lr), (1e-3 * 0.25, 1e-3 * 0.5));
        let plan = FreezePlan {
            rules: vec![Freeze::Bottom(1)],
            gradual: None,
        };
        let trains: Vec<bool> = groups
            .iter()
            .map(|g| plan.trains(g, layers, 0, 0))
            .collect();
        assert_eq!(trains, [false, false, true]);
    }

    #[test]
    fn electra_style_decay() {
        let p = LayerwiseLrDecay {
            base: 1e-3,
            decay: 0.5,
            head_lr: Some(5e-3),
            overrides: vec![],
        };
        assert_eq!(p.lr("layer.5", 6, 6), 1e-3 * 0.5);
        assert_eq!(p.lr("embeddings", 0, 6), 1e-3 * 0.5f64.powi(7));
        assert_eq!(p.lr("pooler", 7, 6), 1e-3);
        assert_eq!(p.lr("head.topic", 7, 6), 5e-3);
    }

    #[test]
    fn globs() {
        assert!(glob_match("heads.*", "heads.0.classifier.out.weight"));
        assert!(glob_match(
            "*.attention.*",
            "encoder.bert.encoder.layer.0.attention.output.dense.bias"
        ));
        assert!(!glob_match(
            "*.attention.*",
            "encoder.bert.embeddings.layer_norm.beta"
        ));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
    }

    #[test]
    fn no_decay_on_biases_and_norms() {
        let e = |p: &str| ParamEntry {
            path: p.into(),
            id: ParamId::new(),
            rank: 1,
            numel: 1,
        };
        assert!(!e("x.layer_norm.gamma").decays());
        assert!(!e("x.dense.bias").decays());
        assert!(e("x.dense.weight").decays());
    }
}
