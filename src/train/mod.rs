//! Training: the paper's SGD rule, schedule, loop, checkpoints, metrics.

pub mod sgd;
