//! The shuffle: rows arrive in row-group order (already a seeded permutation of
//! row groups); the shuffle holds `groups` whole row groups and draws each row
//! uniformly at random from every row they still hold; when a group's last row
//! has been drawn, the next group takes its place.
//!
//! Holding whole groups rather than single rows is what lets rows stay where
//! the source mapped them (zero copy): memory is exactly the held groups, while
//! a buffer of single rows taken from mapped groups would pin a group until its
//! *last* row left, about ln(rows per group) times as many groups.
//!
//! Quality, stated: every batch draws from about `groups` row groups at once
//! (64 with the paper recipe's 4096 rows in 64-row groups), so batches mix
//! classes even when every shard holds one class; a row leaves at a uniformly
//! random time within its group's stay, which lasts about `groups` groups' worth
//! of rows.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct GroupShuffle<T> {
    /// The rows each held group has left.
    held: Vec<Vec<T>>,
    /// Rows in `held`, summed.
    rows: usize,
    /// Groups held at once; 0 passes rows through in order.
    groups: usize,
    rng: ChaCha8Rng,
}

impl<T> GroupShuffle<T> {
    /// Holds `groups` row groups at once; 0 passes rows through in arrival order.
    pub fn new(groups: usize, seed: u64) -> Self {
        Self {
            held: Vec::with_capacity(groups.max(1)),
            rows: 0,
            groups,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Whether the shuffle takes another group before the next draw.
    pub fn wants_group(&self) -> bool {
        self.held.len() < self.groups.max(1)
    }

    /// Adds one row group's rows (empty groups are ignored).
    pub fn add_group(&mut self, rows: Vec<T>) {
        if !rows.is_empty() {
            self.rows += rows.len();
            self.held.push(rows);
        }
    }

    /// The next row: drawn uniformly from every held row (in order when
    /// passing through); `None` when nothing is held.
    pub fn draw(&mut self) -> Option<T> {
        if self.rows == 0 {
            return None;
        }
        let (group, row) = if self.groups == 0 {
            (0, 0)
        } else {
            let mut pick = self.rng.random_range(0..self.rows);
            let group = self.held.iter().position(|g| {
                let inside = pick < g.len();
                if !inside {
                    pick -= g.len();
                }
                inside
            });
            (group.expect("pick < rows held"), pick)
        };
        let rows = &mut self.held[group];
        let item = if self.groups == 0 {
            rows.remove(row)
        } else {
            rows.swap_remove(row)
        };
        self.rows -= 1;
        if rows.is_empty() {
            self.held.remove(group);
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(groups: usize, seed: u64) -> Vec<u32> {
        let mut shuffle = GroupShuffle::new(groups, seed);
        let mut input = (0..100u32)
            .collect::<Vec<_>>()
            .chunks(8)
            .map(<[u32]>::to_vec)
            .collect::<Vec<_>>()
            .into_iter();
        let mut out = Vec::new();
        loop {
            while shuffle.wants_group() {
                match input.next() {
                    Some(group) => shuffle.add_group(group),
                    None => break,
                }
            }
            match shuffle.draw() {
                Some(row) => out.push(row),
                None => break,
            }
        }
        out
    }

    #[test]
    fn every_row_comes_out_exactly_once_in_a_seeded_order() {
        let a = run(4, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, run(4, 1));
        assert_ne!(a, run(4, 2));
        assert_ne!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn rows_mix_across_the_held_groups() {
        // The first 16 rows drawn come from several of the 4 groups held.
        let groups: std::collections::BTreeSet<u32> =
            run(4, 3)[..16].iter().map(|r| r / 8).collect();
        assert!(groups.len() >= 3, "drawn from groups {groups:?}");
        assert!(
            groups.iter().all(|&g| g < 5),
            "only held groups are drawn from: {groups:?}"
        );
    }

    #[test]
    fn zero_groups_passes_rows_through_in_order() {
        assert_eq!(run(0, 0), (0..100).collect::<Vec<_>>());
    }
}
