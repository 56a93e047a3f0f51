//! fc7 export and retrieval (paper §6.1): feature vectors of a trained network written
//! to Parquet, exact Euclidean nearest-neighbour search, short binary codes searched by
//! Hamming distance, the precision@k evaluation that puts the paper's claim into
//! numbers, and Figure 4's contact sheet.
//!
//! ```text
//! DataSource (centre crop) ─▶ AlexNet::forward_features ─▶ FeatureWriter ─▶ features.parquet
//!                                                          (codes: CodeModel::encode)
//! FeatureTable::read ─▶ search::ExactIndex (gemm distances) ─▶ neighbours ─▶ sheet PNG
//!                   └─▶ codes::train_codes ─▶ CodeModel ─▶ hamming::HammingIndex (popcount)
//! eval::retrieval_eval: pixels vs features vs codes, precision@k and queries/s
//! ```
//!
//! Files: `schema.rs` the file contract (`schemas/features.md`), `writer.rs`/`reader.rs`
//! the file, `export.rs` the model pass, `search.rs` exact kNN, `hamming.rs` code kNN,
//! `topk.rs` the bounded heap both share, `codes.rs` the auto-encoder, `images.rs`
//! dataset rows by key, `eval.rs` the evaluation, `sheet.rs` the picture.

pub mod codes;
pub mod commands;
mod error;
pub mod eval;
pub mod export;
pub mod hamming;
pub mod images;
pub mod reader;
pub mod schema;
pub mod search;
pub mod sheet;
mod topk;
pub mod writer;

pub use codes::{CodeModel, CodeOptions, train_codes};
pub use error::FeaturesError;
pub use eval::{EvalOptions, RetrievalReport, retrieval_eval};
pub use export::{ExportOptions, ExportSummary, add_codes, export_features, features_of_images};
pub use reader::FeatureTable;
pub use schema::feature_schema;
pub use writer::FeatureWriter;
