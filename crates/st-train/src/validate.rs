//! One check of a [`TrainConfig`], whether it came from flags or a TOML file: every number in
//! its range, errors naming the config key (and the flag, where there is one).

use crate::TrainError;
use crate::config::TrainConfig;
use crate::multitask::{Sampling, Weighting};

fn refuse(message: String) -> Result<(), TrainError> {
    Err(TrainError::Config(message))
}

/// `value` is finite and above `min` (or at least `min` when `inclusive`).
fn at_least(key: &str, value: f64, min: f64, inclusive: bool) -> Result<(), TrainError> {
    let ok = value.is_finite() && if inclusive { value >= min } else { value > min };
    if ok {
        return Ok(());
    }
    let bound = if inclusive { "≥" } else { ">" };
    refuse(format!(
        "{key} is {value}: it must be a finite number {bound} {min}"
    ))
}

impl TrainConfig {
    /// Checks every setting before anything is loaded or written.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.lr.validate()?;
        if self.train.is_empty() {
            return refuse("no training data: give `train` (--train FILE)".into());
        }
        for (key, value) in [
            ("`batch_size` (--batch-size)", self.batch_size),
            ("`grad_accumulation`", self.grad_accumulation),
            ("`max_seq_length` (--max-seq-length)", self.max_seq_length),
        ] {
            if value == 0 {
                return refuse(format!("{key} is 0: it must be ≥ 1"));
            }
        }
        self.validate_length()?;
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return refuse(format!(
                "`warmup_ratio` is {}: it must be in [0, 1]",
                self.warmup_ratio
            ));
        }
        at_least("`weight_decay`", self.weight_decay, 0.0, true)?;
        at_least("`adam_epsilon`", self.adam_epsilon, 0.0, false)?;
        if let Some(norm) = self.max_grad_norm {
            at_least("`max_grad_norm`", norm, 0.0, false)?;
        }
        if let Sampling::Temperature { t } = self.sampling {
            at_least("`sampling.t` (--sampling temperature:T)", t, 0.0, false)?;
        }
        match &self.weighting {
            Weighting::Dwa { temperature } => {
                at_least("`weighting.temperature`", *temperature, 0.0, false)?
            }
            Weighting::Static { weights } => {
                for (task, w) in weights {
                    at_least(&format!("`weighting.weights.{task}`"), *w, 0.0, true)?;
                }
            }
            Weighting::Famo { lr, gamma } => {
                at_least("`weighting.lr`", *lr, 0.0, false)?;
                at_least("`weighting.gamma`", *gamma, 0.0, true)?;
            }
            Weighting::Uncertainty | Weighting::Rlw => {}
        }
        for (task, options) in &self.tasks {
            if let Some(p) = options.dropout
                && !(0.0..1.0).contains(&p)
            {
                return refuse(format!(
                    "`tasks.{task}.dropout` is {p}: it must be in [0, 1)"
                ));
            }
            if options.hidden == Some(0) {
                return refuse(format!("`tasks.{task}.hidden` is 0: it must be ≥ 1"));
            }
        }
        if let Some(key) = &self.best_metric
            && !key
                .split_once('.')
                .is_some_and(|(t, m)| !t.is_empty() && !m.is_empty())
        {
            return refuse(format!(
                "`best_metric` is `{key}`: it must name `task.metric`, e.g. `topic.accuracy`"
            ));
        }
        if self.patience == Some(0) {
            return refuse(
                "`patience` is 0: it must be ≥ 1 (leave it out to never stop early)".into(),
            );
        }
        Ok(())
    }

    /// A run must train at least one step: `epochs = 0` or `max_steps = 0` would end with no
    /// model while claiming one.
    fn validate_length(&self) -> Result<(), TrainError> {
        match self.max_steps {
            Some(0) => refuse(
                "`max_steps` (--max-steps) is 0: nothing would be trained; give at least 1".into(),
            ),
            None if self.epochs == 0 => refuse(
                "`epochs` (--epochs) is 0: nothing would be trained; give at least 1 \
                 (to only evaluate a model, use `st eval`)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{DataSpec, LayerwiseLrDecay, TrainConfig};

    fn base() -> TrainConfig {
        TrainConfig::new("m", vec![DataSpec::new("t.jsonl")], "out")
    }

    fn refused(edit: impl FnOnce(&mut TrainConfig), expect: &str) {
        let mut c = base();
        edit(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
    }

    #[test]
    fn the_defaults_pass() {
        base().validate().unwrap();
    }

    #[test]
    fn bad_numbers_are_refused_by_key() {
        refused(
            |c| {
                c.lr = LayerwiseLrDecay {
                    head_lr: Some(-1.0),
                    ..LayerwiseLrDecay::flat(1e-4)
                }
            },
            "`lr.head_lr` (--head-lr) is -1",
        );
        refused(
            |c| {
                c.lr = LayerwiseLrDecay {
                    head_lr: Some(f64::NAN),
                    ..LayerwiseLrDecay::flat(1e-4)
                }
            },
            "`lr.head_lr` (--head-lr) is NaN",
        );
        refused(
            |c| c.lr = LayerwiseLrDecay::flat(f64::INFINITY),
            "`lr.base`",
        );
        refused(|c| c.epochs = 0, "`epochs` (--epochs) is 0");
        refused(|c| c.max_steps = Some(0), "`max_steps` (--max-steps) is 0");
        refused(|c| c.warmup_ratio = 1.5, "`warmup_ratio` is 1.5");
        refused(|c| c.adam_epsilon = 0.0, "`adam_epsilon` is 0");
        refused(|c| c.weight_decay = f64::NAN, "`weight_decay` is NaN");
        refused(|c| c.max_grad_norm = Some(-1.0), "`max_grad_norm`");
        refused(
            |c| c.sampling = crate::Sampling::Temperature { t: 0.0 },
            "`sampling.t`",
        );
        refused(
            |c| {
                c.weighting = crate::Weighting::Dwa {
                    temperature: f64::NAN,
                }
            },
            "`weighting.temperature` is NaN",
        );
        refused(
            |c| {
                c.weighting = crate::Weighting::Static {
                    weights: [("topic".to_string(), -2.0)].into(),
                }
            },
            "`weighting.weights.topic` is -2",
        );
        refused(
            |c| {
                c.tasks.insert(
                    "topic".into(),
                    crate::TaskOptions {
                        dropout: Some(1.0),
                        ..Default::default()
                    },
                );
            },
            "`tasks.topic.dropout` is 1",
        );
        refused(|c| c.best_metric = Some("accuracy".into()), "`best_metric`");
        refused(|c| c.patience = Some(0), "`patience` is 0");
        refused(|c| c.batch_size = 0, "`batch_size` (--batch-size) is 0");
    }

    #[test]
    fn epochs_zero_is_fine_when_max_steps_says_how_long() {
        let mut c = base();
        c.epochs = 0;
        c.max_steps = Some(3);
        c.validate().unwrap();
    }
}
