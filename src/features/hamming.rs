//! Hamming-distance k-nearest-neighbour search over packed binary codes: each code is
//! read as u64 words (zero-padded), the distance is the popcount of their XOR — a few
//! instructions per 64 bits, which is what makes short codes fast to search.

use rayon::prelude::*;

use super::FeaturesError;
use super::search::NO_EXCLUDE;
use super::topk::TopK;

/// A neighbour: the database row and its Hamming distance (differing bits).
pub type HammingNeighbour = (usize, u32);

/// Codes repacked into u64 words for popcount search.
pub struct HammingIndex {
    words: Vec<u64>,
    words_per_code: usize,
    bytes_per_code: usize,
    n: usize,
}

impl HammingIndex {
    /// Indexes `codes`, `n` codes of `bytes_per_code` bytes each.
    pub fn new(codes: &[u8], n: usize, bytes_per_code: usize) -> Result<Self, FeaturesError> {
        check_shape("database codes", codes.len(), n, bytes_per_code)?;
        Ok(Self {
            words: to_words(codes, bytes_per_code),
            words_per_code: bytes_per_code.div_ceil(8),
            bytes_per_code,
            n,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The `k` nearest codes of each of the `q` query codes, nearest first, ties by row;
    /// `exclude` as in [`ExactIndex::search`](super::search::ExactIndex::search).
    pub fn search(
        &self,
        queries: &[u8],
        q: usize,
        k: usize,
        exclude: Option<&[usize]>,
    ) -> Result<Vec<Vec<HammingNeighbour>>, FeaturesError> {
        check_shape("query codes", queries.len(), q, self.bytes_per_code)?;
        if let Some(e) = exclude
            && e.len() != q
        {
            return Err(FeaturesError::mismatch(
                "hamming exclude list",
                "queries",
                q,
                "exclude entries",
                e.len(),
            ));
        }
        let w = self.words_per_code;
        let query_words = to_words(queries, self.bytes_per_code);
        Ok(query_words
            .par_chunks(w)
            .enumerate()
            .map(|(i, query)| {
                let skip = exclude.map_or(NO_EXCLUDE, |e| e[i]);
                let mut heap = TopK::new(k);
                for (row, code) in self.words.chunks_exact(w).enumerate() {
                    if row != skip {
                        heap.push(distance(query, code), row);
                    }
                }
                heap.into_sorted()
            })
            .collect())
    }
}

/// The `k` nearest of `n` database codes (`bytes_per_code` each) for each of `q` query
/// codes by Hamming distance, nearest first, ties by row.
pub fn nearest(
    codes: &[u8],
    n: usize,
    bytes_per_code: usize,
    queries: &[u8],
    q: usize,
    k: usize,
    exclude_self: Option<&[usize]>,
) -> Result<Vec<Vec<HammingNeighbour>>, FeaturesError> {
    HammingIndex::new(codes, n, bytes_per_code)?.search(queries, q, k, exclude_self)
}

/// The reference: bit-by-bit distances, a full sort by (distance, row), the first k.
pub fn brute_force(
    codes: &[u8],
    n: usize,
    bytes_per_code: usize,
    queries: &[u8],
    q: usize,
    k: usize,
    exclude_self: Option<&[usize]>,
) -> Result<Vec<Vec<HammingNeighbour>>, FeaturesError> {
    check_shape("database codes", codes.len(), n, bytes_per_code)?;
    check_shape("query codes", queries.len(), q, bytes_per_code)?;
    let b = bytes_per_code;
    Ok((0..q)
        .map(|i| {
            let query = &queries[i * b..(i + 1) * b];
            let skip = exclude_self.map_or(NO_EXCLUDE, |e| e[i]);
            let mut all: Vec<(usize, u32)> = (0..n)
                .filter(|&row| row != skip)
                .map(|row| {
                    let code = &codes[row * b..(row + 1) * b];
                    let bits = (0..b * 8)
                        .filter(|&bit| (query[bit / 8] ^ code[bit / 8]) >> (bit % 8) & 1 == 1)
                        .count();
                    (row, bits as u32)
                })
                .collect();
            all.sort_by_key(|&(row, d)| (d, row));
            all.truncate(k);
            all
        })
        .collect())
}

#[inline]
fn distance(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Packs each code's bytes into little-endian u64 words, the last one zero-padded
/// (padding is equal in every code, so it never adds distance).
fn to_words(codes: &[u8], bytes_per_code: usize) -> Vec<u64> {
    let w = bytes_per_code.div_ceil(8);
    let mut words = Vec::with_capacity(codes.len() / bytes_per_code.max(1) * w);
    for code in codes.chunks_exact(bytes_per_code) {
        for chunk in code.chunks(8) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            words.push(u64::from_le_bytes(bytes));
        }
    }
    words
}

fn check_shape(what: &str, len: usize, rows: usize, bytes: usize) -> Result<(), FeaturesError> {
    if bytes == 0 {
        return Err(FeaturesError::InvalidOption {
            key: "bytes_per_code",
            reason: "must be at least 1".into(),
        });
    }
    if len != rows * bytes {
        return Err(FeaturesError::mismatch(
            format!("hamming {what}"),
            format!("{rows} codes × {bytes} bytes"),
            rows * bytes,
            "the buffer",
            len,
        ));
    }
    Ok(())
}
