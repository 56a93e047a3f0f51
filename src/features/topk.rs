//! The k smallest (distance, row) pairs seen so far: a bounded max-heap, so each
//! candidate costs one comparison with the current worst unless it gets in.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A candidate ordered by distance, then by row, so ties resolve the same way on
/// every run and in every search (the brute-force references sort the same way).
#[derive(Clone, Copy, Debug)]
struct Candidate<D> {
    distance: D,
    row: usize,
}

/// Distances the heap can order totally (`f32` by `total_cmp`, integers as usual).
pub trait Distance: Copy {
    fn order(&self, other: &Self) -> Ordering;
}

impl Distance for f32 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Distance for u32 {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

impl<D: Distance> Ord for Candidate<D> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .order(&other.distance)
            .then(self.row.cmp(&other.row))
    }
}

impl<D: Distance> PartialOrd for Candidate<D> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<D: Distance> PartialEq for Candidate<D> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<D: Distance> Eq for Candidate<D> {}

/// Keeps the `k` smallest candidates pushed into it.
pub struct TopK<D> {
    k: usize,
    heap: BinaryHeap<Candidate<D>>,
}

impl<D: Distance> TopK<D> {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, distance: D, row: usize) {
        let candidate = Candidate { distance, row };
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(worst) = self.heap.peek()
            && candidate < *worst
        {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    /// The kept candidates, nearest first, as (row, distance).
    pub fn into_sorted(self) -> Vec<(usize, D)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|c| (c.row, c.distance))
            .collect()
    }
}
