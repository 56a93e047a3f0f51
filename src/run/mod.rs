//! A trained run: the directory one `pipeline train` writes (`RUN/`: its recipe, its
//! metrics, its checkpoints), and what a checkpoint holds, split in two: the model card
//! (what the network is: topology, input size, classes with names, the dataset, the
//! recipe) and, optionally, the trainer's state (how far training got: step, stream
//! position, RNG, schedule, momentum).
//!
//! This is the room between `train/`, which writes runs, and everything that reads them.
//! `train/` creates and resumes runs through [`RunDir`] and [`checkpoint`]; eval,
//! classify, export-features and neighbors open one only through
//! [`TrainedRun::open`], which loads the card and the weights and never the trainer's
//! state. Every one of them opens the dataset it reads through [`compat::open_split`],
//! the one check of recipe ↔ dataset ↔ card.
//!
//! - [`dir`]: the run directory's layout, creating and finding runs.
//! - [`card`]: the [`ModelCard`].
//! - [`checkpoint`]: the safetensors file (card, trainer state, digest), and the reader
//!   of format version 1, whose one object mixed card and trainer state.
//! - [`compat`]: the compatibility check and its one error, [`Incompatible`].
//! - [`net`]: building the network, fresh or from a checkpoint's weights.

pub mod card;
pub mod checkpoint;
pub mod compat;
pub mod dir;
mod error;
pub mod net;
mod trained;

pub use card::{DatasetIdentity, ModelCard, TrainedFor};
pub use compat::Against;
pub use dir::{RUNS_ROOT, RunDir, RunInfo, newest_run, run_or_newest};
pub use error::{Incompatible, Mismatch, RunError};
pub use trained::{TrainedRun, WhichCheckpoint};
