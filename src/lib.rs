//! `pipeline`: the AlexNet paper's data and training pipeline.
//!
//! Data flows one way: ImageNet folders → [`ingest`] → a dataset directory
//! ([`dataset`]: Parquet shards + `dataset.json` + `mean.npy`) → the staged
//! stream → the trainer → run directories and exported features.

pub mod augment;
pub mod buffer_pool;
pub mod classify;
pub mod dataset;
pub mod demo;
pub mod device;
pub mod experiment;
pub mod export;
pub mod features;
pub mod fnv;
pub mod fonts;
pub mod huge_pages;
pub mod ingest;
pub mod model;
pub mod progress;
pub mod recipe;
pub mod report;
pub mod run;
pub mod sample;
pub mod store;
pub mod stream;
pub mod train;
