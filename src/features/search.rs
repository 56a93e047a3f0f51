//! Exact Euclidean k-nearest-neighbour search (paper §6.1: images whose fc7 vectors are
//! close in Euclidean distance are semantically similar).
//!
//! Distances come from matrix products, block by block:
//! `‖q − x‖² = ‖q‖² + ‖x‖² − 2 q·x`, where the `q·x` of a block of queries against a
//! block of database rows is one gemm (candle's CPU matmul), so the work runs at
//! matrix-multiply speed instead of one scalar loop per pair. Each query keeps a bounded
//! heap of its k best rows across database blocks; the k winners' distances are then
//! recomputed directly (the expanded form loses precision when two vectors are close
//! relative to their norms) and ordered by (distance, row).

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::FeaturesError;
use super::topk::TopK;

/// A neighbour: the database row and its Euclidean distance to the query.
pub type Neighbour = (usize, f32);

/// "No row to exclude" for a query in an `exclude` list.
pub const NO_EXCLUDE: usize = usize::MAX;

/// Block sizes of the search. Larger blocks mean fewer, larger gemms and more memory:
/// a block of distances holds `query_block × database_block` f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    /// Queries per gemm (default 256).
    pub query_block: usize,
    /// Database rows per gemm (default 4096): 256 × 4096 distances = 4 MiB.
    pub database_block: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            query_block: 256,
            database_block: 4096,
        }
    }
}

/// A database held ready for search: the rows (borrowed, and copied once into a CPU
/// tensor for the gemms) and their squared norms.
pub struct ExactIndex<'a> {
    database: &'a [f32],
    rows: Tensor,
    norms: Vec<f32>,
    n: usize,
    dim: usize,
    options: SearchOptions,
}

impl<'a> ExactIndex<'a> {
    /// Indexes `database`, row-major `n × dim`.
    pub fn new(database: &'a [f32], n: usize, dim: usize) -> Result<Self, FeaturesError> {
        Self::with_options(database, n, dim, SearchOptions::default())
    }

    pub fn with_options(
        database: &'a [f32],
        n: usize,
        dim: usize,
        options: SearchOptions,
    ) -> Result<Self, FeaturesError> {
        check_shape("database", database.len(), n, dim)?;
        if options.query_block == 0 || options.database_block == 0 {
            return Err(FeaturesError::InvalidOption {
                key: "search blocks",
                reason: format!("must be at least 1, got {options:?}"),
            });
        }
        let rows = Tensor::from_slice(database, (n, dim), &Device::Cpu)
            .map_err(FeaturesError::candle("search: database tensor"))?;
        let norms = database.par_chunks(dim).map(squared_norm).collect();
        Ok(Self {
            database,
            rows,
            norms,
            n,
            dim,
            options,
        })
    }

    /// Rows in the database.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k` nearest database rows of each of the `q` queries (row-major `q × dim`),
    /// nearest first (fewer when the database is smaller). `exclude`, one entry per
    /// query, names a database row to skip for that query — its own row when the
    /// queries are the database ([`NO_EXCLUDE`]: none).
    pub fn search(
        &self,
        queries: &[f32],
        q: usize,
        k: usize,
        exclude: Option<&[usize]>,
    ) -> Result<Vec<Vec<Neighbour>>, FeaturesError> {
        check_shape("queries", queries.len(), q, self.dim)?;
        check_exclude(exclude, q)?;
        let dim = self.dim;
        let mut results = Vec::with_capacity(q);
        for q_start in (0..q).step_by(self.options.query_block) {
            let q_len = self.options.query_block.min(q - q_start);
            let block = &queries[q_start * dim..(q_start + q_len) * dim];
            let block_norms: Vec<f32> = block.par_chunks(dim).map(squared_norm).collect();
            let block_tensor = Tensor::from_slice(block, (q_len, dim), &Device::Cpu)
                .map_err(FeaturesError::candle("search: query tensor"))?;
            let mut heaps: Vec<TopK<f32>> = (0..q_len).map(|_| TopK::new(k)).collect();
            for d_start in (0..self.n).step_by(self.options.database_block) {
                let d_len = self.options.database_block.min(self.n - d_start);
                // (q_len, dim) · (dim, d_len): the transpose is a strided view gemm reads as is.
                let dots = self
                    .rows
                    .narrow(0, d_start, d_len)
                    .and_then(|rows| block_tensor.matmul(&rows.t()?))
                    .and_then(|d| d.flatten_all())
                    .and_then(|d| d.to_vec1::<f32>())
                    .map_err(FeaturesError::candle("search: distance gemm"))?;
                let norms = &self.norms[d_start..d_start + d_len];
                heaps
                    .par_iter_mut()
                    .zip(dots.par_chunks(d_len))
                    .enumerate()
                    .for_each(|(i, (heap, dots))| {
                        let skip = exclude.map_or(NO_EXCLUDE, |e| e[q_start + i]);
                        let qn = block_norms[i];
                        for (j, (&dot, &xn)) in dots.iter().zip(norms).enumerate() {
                            let row = d_start + j;
                            if row != skip {
                                heap.push(qn + xn - 2.0 * dot, row);
                            }
                        }
                    });
            }
            // Exact distances for the winners, then the final order.
            let refined: Vec<Vec<Neighbour>> = heaps
                .into_par_iter()
                .enumerate()
                .map(|(i, heap)| {
                    let query = &block[i * dim..(i + 1) * dim];
                    let mut best: Vec<Neighbour> = heap
                        .into_sorted()
                        .into_iter()
                        .map(|(row, _)| {
                            (
                                row,
                                euclidean(query, &self.database[row * dim..(row + 1) * dim]),
                            )
                        })
                        .collect();
                    best.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                    best
                })
                .collect();
            results.extend(refined);
        }
        Ok(results)
    }
}

/// The `k` nearest rows of `database` (`n × dim`) for each query (`q × dim`), by
/// Euclidean distance, nearest first; `exclude_self` as in [`ExactIndex::search`].
/// Builds an [`ExactIndex`] for one call; keep the index to search it again.
pub fn nearest(
    database: &[f32],
    n: usize,
    dim: usize,
    queries: &[f32],
    q: usize,
    k: usize,
    exclude_self: Option<&[usize]>,
) -> Result<Vec<Vec<Neighbour>>, FeaturesError> {
    ExactIndex::new(database, n, dim)?.search(queries, q, k, exclude_self)
}

/// The reference the fast search is checked against: every pair's distance by a
/// scalar loop in f64, a full sort by (distance, row), the first k. O(n·q·dim) with no
/// blocking — for tests and the bench's baseline only.
pub fn brute_force(
    database: &[f32],
    n: usize,
    dim: usize,
    queries: &[f32],
    q: usize,
    k: usize,
    exclude_self: Option<&[usize]>,
) -> Result<Vec<Vec<Neighbour>>, FeaturesError> {
    check_shape("database", database.len(), n, dim)?;
    check_shape("queries", queries.len(), q, dim)?;
    check_exclude(exclude_self, q)?;
    Ok((0..q)
        .into_par_iter()
        .map(|i| {
            let query = &queries[i * dim..(i + 1) * dim];
            let skip = exclude_self.map_or(NO_EXCLUDE, |e| e[i]);
            let mut all: Vec<(usize, f64)> = (0..n)
                .filter(|&row| row != skip)
                .map(|row| {
                    let x = &database[row * dim..(row + 1) * dim];
                    (
                        row,
                        query
                            .iter()
                            .zip(x)
                            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                            .sum::<f64>(),
                    )
                })
                .collect();
            all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            all.into_iter()
                .take(k)
                .map(|(row, d2)| (row, d2.sqrt() as f32))
                .collect()
        })
        .collect())
}

/// `‖a − b‖`, accumulated in f64.
pub fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32
}

fn squared_norm(row: &[f32]) -> f32 {
    row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32
}

fn check_shape(what: &str, len: usize, rows: usize, dim: usize) -> Result<(), FeaturesError> {
    if dim == 0 {
        return Err(FeaturesError::InvalidOption {
            key: "dim",
            reason: "must be at least 1".into(),
        });
    }
    if len != rows * dim {
        return Err(FeaturesError::mismatch(
            format!("search {what}"),
            format!("{rows} rows × dim {dim}"),
            rows * dim,
            "the buffer",
            len,
        ));
    }
    Ok(())
}

fn check_exclude(exclude: Option<&[usize]>, q: usize) -> Result<(), FeaturesError> {
    match exclude {
        Some(e) if e.len() != q => Err(FeaturesError::mismatch(
            "search exclude list",
            "queries",
            q,
            "exclude entries",
            e.len(),
        )),
        _ => Ok(()),
    }
}
