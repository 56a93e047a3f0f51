//! The trainer's state: everything besides the tensors that a run needs to continue bit
//! for bit, saved as JSON in every checkpoint beside the model card (which says what the
//! network is; this says how far training got).

use serde::{Deserialize, Serialize};

use super::schedule::{ScheduleState, ValCounts};
use crate::model::DropoutState;
use crate::stream::StreamPosition;

/// What a checkpoint holds for `--resume`. The field names are those of the combined
/// metadata of checkpoint format 1, so that object reads as this one (its other
/// fields, the card's, are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps applied so far.
    pub step: u64,
    /// The next training batch: reopening the stream here yields exactly the rest.
    pub position: StreamPosition,
    /// The dropout RNG, positioned for the next step.
    pub dropout: DropoutState,
    pub schedule: ScheduleState,
    /// Partial sums of the epoch in progress (zero at an epoch boundary).
    pub progress: EpochProgress,
    /// The validation result this checkpoint was saved after, if it closes an epoch.
    pub val: Option<ValCounts>,
}

/// Running sums over the batches of the current epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Sum of the batch losses (a decimal string that parses back to the same f64).
    #[serde(with = "exact_f64")]
    pub loss_sum: f64,
    pub batches: usize,
    pub images: usize,
    /// Training images whose top prediction (with dropout) was wrong.
    pub top1_errors: usize,
    /// Wall seconds spent in the training loop this epoch (not bit-exact across resumes).
    pub train_s: f64,
    /// Of which waiting for the data stream.
    pub stall_s: f64,
}

/// f64 as its shortest round-tripping decimal string: JSON number parsing is not
/// guaranteed to be correctly rounded, `str::parse::<f64>` is.
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly_and_reads_the_format_1_object() {
        let state = TrainerState {
            step: 7,
            position: StreamPosition { epoch: 1, batch: 3 },
            dropout: crate::model::DropoutRng::new(3).state(),
            schedule: ScheduleState::default(),
            progress: EpochProgress {
                loss_sum: 0.1 + 0.2,
                batches: 3,
                images: 96,
                top1_errors: 5,
                train_s: 1.5,
                stall_s: 0.1,
            },
            val: None,
        };
        let json = serde_json::to_string(&state).unwrap();
        let back: TrainerState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.progress.loss_sum.to_bits(), (0.1f64 + 0.2).to_bits());
        // Format 1 held the card's fields in the same object.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old["format_version"] = 1.into();
        old["classes"] = serde_json::json!(["n01", "n02"]);
        old["input_size"] = 64.into();
        let back: TrainerState = serde_json::from_value(old).unwrap();
        assert_eq!(back, state);
    }
}
