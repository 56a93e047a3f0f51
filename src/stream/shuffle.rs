//! The shuffle buffer: rows arrive in row-group order (already a seeded
//! permutation of row groups); each row leaves at a uniformly random time while
//! the buffer is full, so a batch mixes rows from about `capacity / rows_per_group`
//! row groups even when every shard holds one class.
//!
//! Quality, stated: a row's output position is displaced from its input position
//! by a geometric delay with mean `capacity`; with the default 4096 rows and 64-row
//! row groups, each batch of 128 draws from ~64 row groups.

use rand::{RngExt, SeedableRng};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub struct ShuffleBuffer<T> {
    items: Vec<T>,
    capacity: usize,
    rng: ChaCha8Rng,
}

impl<T> ShuffleBuffer<T> {
    /// `capacity` 0 or 1 passes rows straight through.
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self { items: Vec::with_capacity(capacity), capacity, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Offers a row; once the buffer is full, returns a uniformly drawn row in exchange.
    pub fn push(&mut self, item: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(item);
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
            return None;
        }
        let slot = self.rng.random_range(0..self.capacity);
        Some(std::mem::replace(&mut self.items[slot], item))
    }

    /// The remaining rows in random order, at the end of the input.
    pub fn drain(mut self) -> Vec<T> {
        self.items.shuffle(&mut self.rng);
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_comes_out_exactly_once_in_a_seeded_order() {
        let run = |seed| {
            let mut buffer = ShuffleBuffer::new(10, seed);
            let mut out: Vec<u32> = (0..100).filter_map(|i| buffer.push(i)).collect();
            out.extend(buffer.drain());
            out
        };
        let a = run(1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        assert_ne!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn capacity_zero_passes_through() {
        let mut buffer = ShuffleBuffer::new(0, 0);
        assert_eq!(buffer.push(5), Some(5));
        assert!(buffer.drain().is_empty());
    }
}
