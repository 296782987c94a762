//! What trains: freezing by group, and gradual unfreezing from the top (ULMFiT).

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::groups::ParamGroup;

/// `model` with autodiff tracking exactly the `trainable` parameters. A frozen parameter then
/// costs no backward at all: below the lowest trainable one, autodiff stops (a frozen backbone
/// backpropagates into the heads only). Without it, autodiff computed every gradient and the
/// optimizer merely left the frozen ones out.
pub(crate) fn track_only<B: AutodiffBackend, M: Module<B>>(
    model: M,
    trainable: &HashSet<ParamId>,
) -> M {
    struct Track<'a>(&'a HashSet<ParamId>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Track<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let trains = self.0.contains(&param.id);
            param.set_require_grad(trains)
        }
    }
    model.map(&mut Track(trainable))
}

/// One freezing rule. In a config: `"none"`, `"all"`, `"backbone"`, `"embeddings"`,
/// `"bottom:K"` (embeddings and the K lowest layers) or `"head:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freeze {
    None,
    All,
    Backbone,
    Embeddings,
    Bottom(usize),
    Head(String),
}

impl std::str::FromStr for Freeze {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s {
            "none" => Freeze::None,
            "all" => Freeze::All,
            "backbone" | "encoder" => Freeze::Backbone,
            "embeddings" => Freeze::Embeddings,
            _ => {
                if let Some(k) = s.strip_prefix("bottom:") {
                    Freeze::Bottom(k.parse().map_err(|_| {
                        TrainError::Config(format!("freeze `{s}`: K in bottom:K must be a number"))
                    })?)
                } else if let Some(name) = s.strip_prefix("head:") {
                    Freeze::Head(name.to_string())
                } else {
                    return Err(TrainError::Config(format!(
                        "unknown freeze rule `{s}`; expected none, all, backbone, embeddings, \
                         bottom:K or head:NAME"
                    )));
                }
            }
        })
    }
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freeze::None => write!(f, "none"),
            Freeze::All => write!(f, "all"),
            Freeze::Backbone => write!(f, "backbone"),
            Freeze::Embeddings => write!(f, "embeddings"),
            Freeze::Bottom(k) => write!(f, "bottom:{k}"),
            Freeze::Head(n) => write!(f, "head:{n}"),
        }
    }
}

impl Serialize for Freeze {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Freeze {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// When gradual unfreezing advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Steps,
    Epochs,
}

/// Start with only the heads and pooler training; every `every` units, one more encoder layer
/// from the top joins, embeddings last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradualUnfreeze {
    pub every: usize,
    pub unit: Unit,
}

/// Freezing rules plus optional gradual unfreezing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FreezePlan {
    #[serde(default)]
    pub rules: Vec<Freeze>,
    #[serde(default)]
    pub gradual: Option<GradualUnfreeze>,
}

impl FreezePlan {
    /// True when nothing can ever train (`all`).
    pub fn freezes_everything(&self) -> bool {
        self.rules.contains(&Freeze::All)
    }

    /// Checks head names against the model's.
    pub fn validate(&self, layers: usize, heads: &[String]) -> Result<(), TrainError> {
        for rule in &self.rules {
            match rule {
                Freeze::Head(name) if !heads.contains(name) => {
                    return Err(TrainError::Config(format!(
                        "freeze rule `head:{name}` names no head; heads are: {}",
                        heads.join(", ")
                    )));
                }
                Freeze::Bottom(k) if *k > layers => {
                    return Err(TrainError::Config(format!(
                        "freeze rule `bottom:{k}`: the encoder has only {layers} layers"
                    )));
                }
                _ => {}
            }
        }
        if let Some(g) = self.gradual
            && g.every == 0
        {
            return Err(TrainError::Config(
                "gradual unfreezing `every` must be ≥ 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether `group` trains at this point (`step` and `epoch` count from 0).
    pub fn trains(&self, group: &ParamGroup, layers: usize, step: usize, epoch: usize) -> bool {
        let name = group.name.split('[').next().unwrap_or(&group.name);
        let is_backbone = !name.starts_with("head.");
        for rule in &self.rules {
            let frozen = match rule {
                Freeze::None => false,
                Freeze::All => true,
                Freeze::Backbone => is_backbone,
                Freeze::Embeddings => name == "embeddings",
                Freeze::Bottom(k) => {
                    name == "embeddings"
                        || (group.depth >= 1 && group.depth <= *k && name.starts_with("layer."))
                }
                Freeze::Head(h) => name == format!("head.{h}"),
            };
            if frozen {
                return false;
            }
        }
        if let Some(g) = self.gradual {
            let elapsed = match g.unit {
                Unit::Steps => step,
                Unit::Epochs => epoch,
            };
            let stage = elapsed / g.every;
            // Stage 0: depth L+1 only (heads, pooler); stage s adds depths down to L+1-s.
            return group.depth + stage > layers;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, depth: usize) -> ParamGroup {
        ParamGroup {
            name: name.into(),
            depth,
            lr: 1.0,
            params: vec![],
        }
    }

    #[test]
    fn rules_parse_and_print() {
        for s in [
            "none",
            "all",
            "backbone",
            "embeddings",
            "bottom:3",
            "head:topic",
        ] {
            assert_eq!(s.parse::<Freeze>().unwrap().to_string(), s);
        }
        assert!("bottom:x".parse::<Freeze>().is_err());
        assert!(
            "everything"
                .parse::<Freeze>()
                .unwrap_err()
                .to_string()
                .contains("head:NAME")
        );
    }

    #[test]
    fn backbone_and_bottom_k() {
        let plan = FreezePlan {
            rules: vec![Freeze::Backbone],
            gradual: None,
        };
        assert!(!plan.trains(&group("layer.3", 4), 6, 0, 0));
        assert!(!plan.trains(&group("pooler", 7), 6, 0, 0));
        assert!(plan.trains(&group("head.topic", 7), 6, 0, 0));
        let plan = FreezePlan {
            rules: vec![Freeze::Bottom(2)],
            gradual: None,
        };
        assert!(!plan.trains(&group("embeddings", 0), 6, 0, 0));
        assert!(!plan.trains(&group("layer.1", 2), 6, 0, 0));
        assert!(plan.trains(&group("layer.2", 3), 6, 0, 0));
    }

    #[test]
    fn gradual_unfreezing_goes_top_down() {
        let plan = FreezePlan {
            rules: vec![],
            gradual: Some(GradualUnfreeze {
                every: 10,
                unit: Unit::Steps,
            }),
        };
        let layers = 6;
        assert!(plan.trains(&group("head.a", 7), layers, 0, 0));
        assert!(!plan.trains(&group("layer.5", 6), layers, 9, 0));
        assert!(plan.trains(&group("layer.5", 6), layers, 10, 0));
        assert!(!plan.trains(&group("layer.4", 5), layers, 10, 0));
        assert!(!plan.trains(&group("embeddings", 0), layers, 69, 0));
        assert!(plan.trains(&group("embeddings", 0), layers, 70, 0));
    }

    #[test]
    fn unknown_heads_are_refused() {
        let plan = FreezePlan {
            rules: vec![Freeze::Head("nope".into())],
            gradual: None,
        };
        let e = plan.validate(6, &["topic".into()]).unwrap_err().to_string();
        assert!(e.contains("head:nope") && e.contains("topic"), "{e}");
    }
}
