//! Learning-rate schedules: linear warm-up, then constant, linear or cosine decay.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Multiplier on every group's rate at a step: `step/warmup` during warm-up, then the decay from
/// 1 to 0 at `total` (as `transformers.get_linear_schedule_with_warmup` / `..._cosine_...`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl Schedule {
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            warmup: 10,
            total: 110,
            decay: Decay::Linear,
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert_eq!(s.factor(60), 0.5);
        assert_eq!(s.factor(110), 0.0);
        let c = Schedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!((c.factor(60) - 0.5).abs() < 1e-12);
        let k = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(k.factor(100), 1.0);
    }
}
