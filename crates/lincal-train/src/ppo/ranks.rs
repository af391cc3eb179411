//! An RL step spread over the ranks of a data-parallel job (PPO's and GRPO's). Each rank
//! generates, scores and trains on its contiguous share of the step's prompts (whole groups
//! for GRPO); what spans the step is summed over the ranks (whitening, the loss's normaliser
//! of each optimizer step, gradients through the optimizer) or gathered (every rollout's
//! statistics and dump lines), so that every rank logs the whole step's numbers and the
//! update is that of one process taking the whole step. With one rank every collective is the
//! identity, and the trainer is the plain one.

use crate::data::epoch_order;
use crate::distributed::Communicator;
use crate::error::{Result, TrainError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The ranks of an RL run, and the device their collectives take tensors on.
#[derive(Debug, Clone)]
pub(crate) struct Ranks {
    pub comm: Arc<dyn Communicator>,
    pub device: Device,
}

impl Ranks {
    pub fn new(comm: Arc<dyn Communicator>, device: Device) -> Self {
        Ranks { comm, device }
    }

    /// One process on `device`.
    pub fn single(device: Device) -> Self {
        Ranks {
            comm: Arc::new(crate::distributed::SingleProcess),
            device,
        }
    }

    pub fn world(&self) -> usize {
        self.comm.world_size()
    }

    /// Rank 0, which writes the run directory.
    pub fn writes(&self) -> bool {
        self.comm.rank() == 0
    }

    /// The rows of `count` that this rank takes, in whole units of `unit` rows (GRPO's groups)
    /// (see [`crate::distributed::share`]).
    pub fn share(&self, count: usize, unit: usize) -> Range<usize> {
        let units = crate::distributed::share(count / unit, self.world(), self.comm.rank());
        units.start * unit..units.end * unit
    }

    /// Locks libtorch's global generator and seeds it for the update's `pass`-th minibatch of
    /// step `step` on this rank: dropout draws from it, so a resumed run draws the masks of an
    /// uninterrupted one, and holding the lock keeps other threads (tests, or ranks as threads)
    /// from reseeding it in between. Release it before a collective, which waits for the
    /// other ranks.
    pub fn seed_dropout(
        &self,
        seed: u64,
        step: u64,
        pass: usize,
    ) -> std::sync::MutexGuard<'static, ()> {
        let guard = lincal_model::lock_libtorch_rng();
        let stream = (pass as u64) << 24 | (self.comm.rank() as u64) << 48;
        tch::manual_seed((seed.wrapping_add(step) ^ stream) as i64);
        guard
    }

    /// `values` summed over the ranks.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world() == 1 {
            return Ok(values.to_vec());
        }
        let mut sums = Tensor::from_slice(values).to_device(self.device);
        self.comm.all_reduce_sum(&mut sums)?;
        Ok(Vec::<f64>::try_from(sums.to_device(Device::Cpu))?)
    }

    /// An optimizer step's normaliser: `of` this rank's `rows` of the minibatch (0 where it
    /// has none) summed over the ranks, at least 1.
    pub fn step_total(&self, rows: &[usize], of: impl FnOnce(&[usize]) -> f64) -> Result<f64> {
        let local = if rows.is_empty() { 0.0 } else { of(rows) };
        Ok(self.sum(&[local])?[0].max(1.0))
    }

    /// Every rank's `value`, in rank order (as JSON bytes: first their lengths, then the
    /// bytes padded to the longest).
    pub fn gather<T: Serialize + DeserializeOwned + Clone>(&self, value: &T) -> Result<Vec<T>> {
        let world = self.world();
        if world == 1 {
            return Ok(vec![value.clone()]);
        }
        let mut bytes = serde_json::to_vec(value).expect("gathered values serialise");
        let length = Tensor::from_slice(&[bytes.len() as i64]).to_device(self.device);
        let mut lengths = Tensor::zeros([world as i64], (Kind::Int64, self.device));
        self.comm.all_gather(&length, &mut lengths)?;
        let lengths = Vec::<i64>::try_from(lengths.to_device(Device::Cpu))?;
        let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
        bytes.resize(longest, 0);
        let shard = Tensor::from_slice(&bytes).to_device(self.device);
        let mut all = Tensor::zeros([(longest * world) as i64], (Kind::Uint8, self.device));
        self.comm.all_gather(&shard, &mut all)?;
        let all = Vec::<u8>::try_from(all.to_device(Device::Cpu))?;
        all.chunks(longest.max(1))
            .zip(&lengths)
            .enumerate()
            .map(|(rank, (chunk, &len))| {
                serde_json::from_slice(&chunk[..len as usize]).map_err(|e| {
                    TrainError::Collective(format!("rank {rank} sent unreadable data ({e})"))
                })
            })
            .collect()
    }

    /// [`Self::gather`]ed lists joined in rank order.
    pub fn gather_all<T: Serialize + DeserializeOwned + Clone>(
        &self,
        items: Vec<T>,
    ) -> Result<Vec<T>> {
        if self.world() == 1 {
            return Ok(items);
        }
        Ok(self.gather(&items)?.into_iter().flatten().collect())
    }
}

/// This rank's rows of each minibatch of an update, in training order: `epochs` shuffles
/// (seeded by `seed`) of the step's `rows` rows, each cut into minibatches of `size`, whose
/// rows in this rank's `share` are given as indices into it (a minibatch may have none here).
pub(crate) fn minibatches(
    rows: usize,
    share: &Range<usize>,
    (seed, epochs, size): (u64, usize, usize),
) -> Vec<Vec<usize>> {
    (0..epochs)
        .flat_map(|epoch| {
            let order = epoch_order(rows, seed, epoch as u64);
            order
                .chunks(size)
                .map(|minibatch| local_rows(minibatch, share))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The rows of `minibatch` (rows of the whole step) in this rank's `share`, as indices into
/// the share.
fn local_rows(minibatch: &[usize], share: &Range<usize>) -> Vec<usize> {
    minibatch
        .iter()
        .filter(|row| share.contains(row))
        .map(|row| row - share.start)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::on_ranks;

    #[test]
    fn shares_sums_and_gathers_over_thread_ranks() {
        let results = on_ranks(3, |comm| {
            let ranks = Ranks {
                comm,
                device: Device::Cpu,
            };
            let rank = ranks.comm.rank();
            // 10 rows in groups of 2: 5 groups as 2, 2, 1.
            let share = ranks.share(10, 2);
            let sums = ranks.sum(&[1.0, rank as f64]).unwrap();
            // Values of different lengths, one empty.
            let words: Vec<String> = (0..rank).map(|i| format!("r{rank}-{i}")).collect();
            let gathered = ranks.gather_all(words).unwrap();
            (share, sums, gathered)
        });
        let shares: Vec<_> = results.iter().map(|r| r.0.clone()).collect();
        assert_eq!(shares, vec![0..4, 4..8, 8..10]);
        for (_, sums, gathered) in &results {
            assert_eq!(sums, &vec![3.0, 3.0]);
            assert_eq!(gathered, &vec!["r1-0", "r2-0", "r2-1"]);
        }
    }

    #[test]
    fn local_rows_keep_the_minibatch_order() {
        assert_eq!(local_rows(&[7, 2, 5, 4, 0], &(4..8)), vec![3, 1, 0]);
        assert_eq!(local_rows(&[1, 2], &(4..8)), Vec::<usize>::new());
    }
}
