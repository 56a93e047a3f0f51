//! The epoch plan: which row groups a rank reads, in which order, and how many
//! batches it yields. Pure arithmetic over shard metadata, so it is the same on
//! every rank and every run with the same seed.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One row group of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroupRef {
    pub shard: usize,
    pub row_group: usize,
    pub rows: usize,
}

/// What one rank reads in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPlan {
    /// Row groups in reading order.
    pub row_groups: Vec<RowGroupRef>,
    /// Rows this rank consumes (its row groups may hold a few more, dropped at
    /// the end so every rank yields the same number of batches).
    pub rows: usize,
    pub batches: usize,
}

/// Derives an independent stream of randomness from a seed and a path of
/// integers (SplitMix64 mixing): e.g. `derive_seed(seed, &[epoch, rank, SHUFFLE])`.
pub fn derive_seed(seed: u64, path: &[u64]) -> u64 {
    let mut state = seed;
    for &part in path {
        state = splitmix(state ^ splitmix(part.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    state
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Labels for [`derive_seed`] paths, so streams of randomness never collide.
pub const PURPOSE_ROW_GROUPS: u64 = 1;
pub const PURPOSE_SHUFFLE: u64 = 2;
pub const PURPOSE_SAMPLE: u64 = 3;

/// How a split is traversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Permute row groups and shuffle rows (training); otherwise file order.
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: u64,
    pub rank: usize,
    pub world_size: usize,
    pub batch_size: usize,
    /// Drop the last partial batch (training: every batch full, every rank equal).
    pub drop_last: bool,
}

/// Plans one epoch for one rank.
///
/// Row groups are permuted globally (seeded by seed and epoch, identical on all
/// ranks), then dealt round-robin to ranks, so ranks read disjoint rows. Every
/// rank then stops after the same number of batches: the smallest rank's rows,
/// rounded down to whole batches when `drop_last`.
pub fn plan_epoch(all: &[RowGroupRef], options: PlanOptions) -> EpochPlan {
    let PlanOptions {
        shuffle,
        seed,
        epoch,
        rank,
        world_size,
        batch_size,
        drop_last,
    } = options;
    assert!(
        world_size >= 1 && rank < world_size,
        "rank {rank} outside world size {world_size}"
    );
    assert!(batch_size >= 1, "batch size must be positive");
    let mut order = all.to_vec();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            seed,
            &[epoch, PURPOSE_ROW_GROUPS],
        )));
    }
    let rank_rows = |r: usize| -> usize {
        order
            .iter()
            .skip(r)
            .step_by(world_size)
            .map(|g| g.rows)
            .sum()
    };
    let fewest = (0..world_size).map(rank_rows).min().unwrap_or(0);
    let (rows, batches) = if drop_last {
        let batches = fewest / batch_size;
        (batches * batch_size, batches)
    } else {
        (fewest, fewest.div_ceil(batch_size))
    };
    let row_groups = order.into_iter().skip(rank).step_by(world_size).collect();
    EpochPlan {
        row_groups,
        rows,
        batches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(sizes: &[usize]) -> Vec<RowGroupRef> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &rows)| RowGroupRef {
                shard: i / 4,
                row_group: i % 4,
                rows,
            })
            .collect()
    }

    fn options(rank: usize, world_size: usize) -> PlanOptions {
        PlanOptions {
            shuffle: true,
            seed: 7,
            epoch: 0,
            rank,
            world_size,
            batch_size: 8,
            drop_last: true,
        }
    }

    #[test]
    fn ranks_get_disjoint_row_groups_and_equal_batches() {
        let all = groups(&[16, 16, 16, 16, 16, 16, 16, 5, 16, 16, 3]);
        let plans: Vec<EpochPlan> = (0..3).map(|r| plan_epoch(&all, options(r, 3))).collect();
        let mut seen: Vec<(usize, usize)> = plans
            .iter()
            .flat_map(|p| p.row_groups.iter().map(|g| (g.shard, g.row_group)))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            all.len(),
            "every row group read by exactly one rank"
        );
        assert!(
            plans
                .iter()
                .all(|p| p.batches == plans[0].batches && p.rows == plans[0].rows)
        );
        for p in &plans {
            assert!(p.row_groups.iter().map(|g| g.rows).sum::<usize>() >= p.rows);
        }
    }

    #[test]
    fn the_permutation_depends_on_seed_and_epoch_only() {
        let all = groups(&[10; 12]);
        let a = plan_epoch(&all, options(0, 1));
        assert_eq!(a, plan_epoch(&all, options(0, 1)));
        let next = plan_epoch(
            &all,
            PlanOptions {
                epoch: 1,
                ..options(0, 1)
            },
        );
        assert_ne!(a.row_groups, next.row_groups);
        let unshuffled = plan_epoch(
            &all,
            PlanOptions {
                shuffle: false,
                ..options(0, 1)
            },
        );
        assert_eq!(unshuffled.row_groups, all);
    }

    #[test]
    fn keeping_the_last_partial_batch() {
        let all = groups(&[10, 10, 3]);
        let plan = plan_epoch(
            &all,
            PlanOptions {
                shuffle: false,
                drop_last: false,
                ..options(0, 1)
            },
        );
        assert_eq!((plan.rows, plan.batches), (23, 3));
        let plan = plan_epoch(
            &all,
            PlanOptions {
                shuffle: false,
                ..options(0, 1)
            },
        );
        assert_eq!((plan.rows, plan.batches), (16, 2));
    }
}
