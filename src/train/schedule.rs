//! The learning-rate schedule (paper §5: "divide the learning rate by 10 when the
//! validation error rate stopped improving with the current learning rate … reduced
//! three times") and the record of the best validation result.
//!
//! Everything here is plain data saved in every checkpoint, and validation results are
//! kept as integer counts, so a resumed run takes exactly the same decisions.

use serde::{Deserialize, Serialize};

use crate::recipe::train::{ScheduleKind, TrainConfig};

/// A validation result as counts: exact to store and compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValCounts {
    /// Images whose true class was not the top prediction.
    pub top1_errors: usize,
    /// Images whose true class was not among the top five predictions.
    pub top5_errors: usize,
    pub images: usize,
}

impl ValCounts {
    pub fn top1_err(&self) -> f64 {
        ratio(self.top1_errors, self.images)
    }

    pub fn top5_err(&self) -> f64 {
        ratio(self.top5_errors, self.images)
    }

    /// `self` has a strictly lower top-1 error than `other` (exact, by cross-multiplying).
    pub fn better_than(&self, other: &ValCounts) -> bool {
        (self.top1_errors as u128) * (other.images as u128)
            < (other.top1_errors as u128) * (self.images as u128)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Where the schedule stands; saved in every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// plateau: how many times the learning rate has been divided so far.
    pub drops: usize,
    /// The best validation result so far and the epoch (1-based) it came after.
    pub best: Option<(usize, ValCounts)>,
    /// plateau: the result later ones must beat by `min_delta` to count as progress.
    pub reference: Option<ValCounts>,
    /// plateau: the epoch of the last improvement or drop (patience counts from here).
    pub since_epoch: usize,
}

/// What one validation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// This result is the best so far.
    pub best: bool,
    /// The learning rate was divided (it applies from the next epoch).
    pub dropped: bool,
}

impl ScheduleState {
    /// The learning rate for the epoch after `epochs_done` finished epochs.
    pub fn lr(&self, cfg: &TrainConfig, epochs_done: usize) -> f64 {
        let drops = match cfg.schedule {
            ScheduleKind::Plateau => self.drops,
            ScheduleKind::Step => cfg
                .step_epochs
                .iter()
                .filter(|&&e| e <= epochs_done)
                .count(),
        };
        cfg.lr / cfg.lr_drop_factor.powi(drops as i32)
    }

    /// Records the validation result after epoch `epoch` (1-based).
    pub fn observe(&mut self, cfg: &TrainConfig, epoch: usize, val: ValCounts) -> Observation {
        let best = self.best.is_none_or(|(_, b)| val.better_than(&b));
        if best {
            self.best = Some((epoch, val));
        }
        let mut dropped = false;
        if cfg.schedule == ScheduleKind::Plateau {
            let improved = self
                .reference
                .is_none_or(|r| val.top1_err() < r.top1_err() - cfg.min_delta);
            if improved {
                self.reference = Some(val);
                self.since_epoch = epoch;
            } else if epoch - self.since_epoch >= cfg.patience && self.drops < cfg.max_lr_drops {
                self.drops += 1;
                self.since_epoch = epoch;
                dropped = true;
            }
        }
        Observation { best, dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(top1_errors: usize) -> ValCounts {
        ValCounts {
            top1_errors,
            top5_errors: 0,
            images: 1000,
        }
    }

    #[test]
    fn plateau_divides_by_ten_after_patience_at_most_max_times() {
        let cfg = TrainConfig {
            patience: 2,
            max_lr_drops: 2,
            min_delta: 0.005,
            ..Default::default()
        };
        let mut s = ScheduleState::default();
        assert_eq!(s.lr(&cfg, 0), 0.01);
        assert_eq!(
            s.observe(&cfg, 1, val(500)),
            Observation {
                best: true,
                dropped: false
            }
        );
        assert_eq!(
            s.observe(&cfg, 2, val(400)),
            Observation {
                best: true,
                dropped: false
            }
        );
        assert_eq!(s.observe(&cfg, 3, val(400)), Observation::default());
        // Better by less than min_delta: the best, but not progress for the schedule,
        // so after `patience` epochs without progress the rate drops.
        assert_eq!(
            s.observe(&cfg, 4, val(397)),
            Observation {
                best: true,
                dropped: true
            }
        );
        assert_eq!(s.lr(&cfg, 4), 0.001);
        assert_eq!(s.observe(&cfg, 5, val(450)), Observation::default());
        assert_eq!(
            s.observe(&cfg, 6, val(450)),
            Observation {
                best: false,
                dropped: true
            }
        );
        assert!((s.lr(&cfg, 6) - 1e-4).abs() < 1e-18);
        // At most max_lr_drops.
        for e in 7..12 {
            assert!(!s.observe(&cfg, e, val(450)).dropped);
        }
        assert_eq!(s.drops, 2);
        assert_eq!(s.best, Some((4, val(397))));
    }

    #[test]
    fn step_schedule_drops_at_listed_epochs() {
        let cfg = TrainConfig {
            schedule: ScheduleKind::Step,
            step_epochs: vec![2, 4],
            ..Default::default()
        };
        let mut s = ScheduleState::default();
        let lrs: Vec<f64> = (0..6).map(|e| s.lr(&cfg, e)).collect();
        assert_eq!(lrs[..2], [0.01, 0.01]);
        assert!((lrs[2] - 0.001).abs() < 1e-15 && (lrs[4] - 0.0001).abs() < 1e-15);
        assert!(!s.observe(&cfg, 1, val(900)).dropped);
    }

    #[test]
    fn better_is_exact_across_different_image_counts() {
        let a = ValCounts {
            top1_errors: 1,
            top5_errors: 0,
            images: 3,
        };
        let b = ValCounts {
            top1_errors: 2,
            top5_errors: 0,
            images: 6,
        };
        assert!(!a.better_than(&b) && !b.better_than(&a));
        assert!(
            ValCounts {
                top1_errors: 1,
                top5_errors: 0,
                images: 4
            }
            .better_than(&a)
        );
    }
}
