//! One seeded permutation per epoch, identical on every rank; each global batch is cut into equal
//! per-replica shards.
//!
//! Tail policy: when the data set does not divide into whole global batches, the last (short) batch
//! is trimmed to the largest multiple of the replica count, so every replica takes the same number
//! of steps with shards of equal size (a rank with one step fewer would hang the others inside the
//! all-reduce, and unequal shards would bias the averaged gradient). With one replica nothing is
//! dropped, which matches PyTorch's DataLoader with `drop_last=False`.

use crate::util::{mix_seed, SplitMix64};

#[derive(Debug, Clone)]
pub struct Sampler {
    pub num_samples: usize,
    pub global_batch: usize,
    pub replicas: usize,
    pub seed: u64,
}

impl Sampler {
    /// `global_batch` must be a multiple of `replicas` (validated at start-up).
    pub fn new(num_samples: usize, global_batch: usize, replicas: usize, seed: u64) -> Self {
        assert!(
            replicas > 0 && global_batch.is_multiple_of(replicas),
            "global batch must divide by replicas"
        );
        Sampler {
            num_samples,
            global_batch,
            replicas,
            seed,
        }
    }

    /// The training order of `epoch` (Fisher-Yates driven by a seed derived from (seed, epoch)).
    pub fn permutation(&self, epoch: usize) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.num_samples as i64).collect();
        let mut rng = SplitMix64::new(mix_seed(&[self.seed, epoch as u64, 0x5a3b]));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    fn tail(&self) -> usize {
        let rem = self.num_samples % self.global_batch;
        rem - rem % self.replicas
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.num_samples / self.global_batch + usize::from(self.tail() > 0)
    }

    /// Samples used per epoch (all but the trimmed remainder).
    pub fn samples_per_epoch(&self) -> usize {
        (self.num_samples / self.global_batch) * self.global_batch + self.tail()
    }

    /// The global batch of `step` within an epoch's permutation.
    pub fn global_batch_at<'a>(&self, order: &'a [i64], step: usize) -> &'a [i64] {
        let start = step * self.global_batch;
        let full = self.num_samples / self.global_batch;
        let len = if step < full {
            self.global_batch
        } else {
            self.tail()
        };
        &order[start..start + len]
    }

    /// This replica's shard of `step`'s global batch.
    pub fn shard<'a>(&self, order: &'a [i64], step: usize, replica: usize) -> &'a [i64] {
        shard_indices(self.global_batch_at(order, step), replica, self.replicas)
    }
}

/// Cuts `batch` into `replicas` equal contiguous shards and returns shard `replica`.
pub fn shard_indices(batch: &[i64], replica: usize, replicas: usize) -> &[i64] {
    let per = batch.len() / replicas;
    &batch[replica * per..(replica + 1) * per]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let s = Sampler::new(1000, 64, 1, 7);
        let mut p = s.permutation(0);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, s.permutation(0));
        assert_ne!(p, s.permutation(1));
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn shards_partition_each_global_batch() {
        for replicas in [1, 2, 4] {
            let s = Sampler::new(1000, 64, replicas, 3);
            let order = s.permutation(2);
            let mut seen = Vec::new();
            for step in 0..s.steps_per_epoch() {
                let shards: Vec<&[i64]> = (0..replicas).map(|r| s.shard(&order, step, r)).collect();
                assert!(shards.iter().all(|x| x.len() == shards[0].len() && !x.is_empty()));
                let joined: Vec<i64> = shards.concat();
                assert_eq!(joined, s.global_batch_at(&order, step));
                seen.extend(joined);
            }
            assert_eq!(seen.len(), s.samples_per_epoch());
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), s.samples_per_epoch());
        }
    }

    #[test]
    fn tail_policy() {
        // 1000 = 15 * 64 + 40: serial keeps the 40-image tail, like PyTorch's DataLoader.
        assert_eq!(Sampler::new(1000, 64, 1, 0).steps_per_epoch(), 16);
        assert_eq!(Sampler::new(1000, 64, 1, 0).samples_per_epoch(), 1000);
        // 3 replicas, batch 63: tail 1000 - 15*63 = 55 -> trimmed to 54 = 3 x 18.
        let s = Sampler::new(1000, 63, 3, 0);
        assert_eq!(s.steps_per_epoch(), 16);
        assert_eq!(s.samples_per_epoch(), 999);
        // Tail smaller than the replica count: dropped, so no rank gets an empty shard.
        let s = Sampler::new(130, 64, 4, 0);
        assert_eq!(s.steps_per_epoch(), 2);
        assert_eq!(s.samples_per_epoch(), 128);
    }
}
