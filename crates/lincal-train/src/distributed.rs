//! Data-parallel training's side of the world: the collective operations a trainer needs
//! ([`Communicator`]), the job a process belongs to ([`from_env`], set by `lincal launch`),
//! how a flat buffer and a step's examples are cut among ranks, NCCL between GPU processes
//! (`cuda` builds), and an in-process group of ranks as threads ([`thread_group`]) that the
//! multi-rank logic is tested against, since NCCL needs several GPUs.
//!
//! Every rank runs the same program on its share of each step's data; each rank receives the
//! gradients of its slice of the weights summed over ranks (a reduce-scatter) and updates that
//! slice with its slice of the optimizer state (ZeRO stage 1), then the slices are gathered
//! back.

use crate::error::{Result, TrainError};
use std::sync::{Arc, Condvar, Mutex};
use tch::{Device, Kind, Tensor};

#[cfg(feature = "cuda")]
mod nccl;
#[cfg(feature = "cuda")]
pub use nccl::NcclRank;

/// This process's rank in the job, set by `lincal launch`.
pub const RANK_ENV: &str = "LINCAL_RANK";
/// The number of ranks in the job.
pub const WORLD_SIZE_ENV: &str = "LINCAL_WORLD_SIZE";
/// `ADDR:PORT` where rank 0 meets the others.
pub const MASTER_ENV: &str = "LINCAL_MASTER";
/// Where rank 0 listens unless told otherwise (torchrun's port).
pub const DEFAULT_MASTER: &str = "127.0.0.1:29500";

/// The job this process is one rank of, from the `LINCAL_*` variables `lincal launch` sets;
/// without them, the process alone.
pub fn from_env() -> Result<Arc<dyn Communicator>> {
    let read = |name: &str| -> Result<Option<usize>> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(value) => value.trim().parse().map(Some).map_err(|_| {
                collective_error(format!(
                    "environment variable {name}={value:?} is not a count; \
                     start data-parallel runs with `lincal launch`"
                ))
            }),
        }
    };
    let world = read(WORLD_SIZE_ENV)?.unwrap_or(1);
    if world <= 1 {
        return Ok(Arc::new(SingleProcess));
    }
    let rank = read(RANK_ENV)?.unwrap_or(usize::MAX);
    if rank >= world {
        return Err(collective_error(format!(
            "{WORLD_SIZE_ENV}={world} needs {RANK_ENV} below it; start data-parallel runs \
             with `lincal launch`"
        )));
    }
    #[cfg(feature = "cuda")]
    {
        let master = std::env::var(MASTER_ENV).unwrap_or_else(|_| DEFAULT_MASTER.into());
        Ok(Arc::new(nccl::NcclRank::connect(rank, world, &master)?))
    }
    #[cfg(not(feature = "cuda"))]
    Err(without_cuda(world))
}

/// Refuses a job of `world` ranks in a build that cannot connect processes (one without
/// CUDA), before any rank starts.
pub fn check_collectives_available(world: usize) -> Result<()> {
    if world > 1 && !cfg!(feature = "cuda") {
        return Err(without_cuda(world));
    }
    Ok(())
}

fn without_cuda(world: usize) -> TrainError {
    collective_error(format!(
        "a data-parallel job of {world} ranks runs its collectives over NCCL between GPUs, \
         and this lincal was built without CUDA: use the GPU build (`cargo xtask gpu-build`)"
    ))
}

/// The collectives of a group of `world_size` ranks. Every rank calls the same collectives
/// in the same order; a call returns once all ranks have made it, or fails if a rank left
/// the group (it failed or was killed) before making it.
pub trait Communicator: Send + Sync + std::fmt::Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Sums `tensor` over the ranks in place. Every rank gets the same bits (the sum is taken
    /// in rank order).
    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()>;
    /// Fills the 1-D `full` with the 1-D `shard` of every rank in rank order; shards are of
    /// equal length, `full` is `world_size` times as long.
    fn all_gather(&self, shard: &Tensor, full: &mut Tensor) -> Result<()>;
    /// Sums the 1-D `full` over the ranks and leaves this rank's part of the sum (its
    /// `shard.numel()` elements from `rank × shard.numel()`) in `shard`, which may be that
    /// slice of `full`; `full` is `world_size` times as long. Half the traffic of an
    /// all-reduce, for a rank that needs only its part.
    fn reduce_scatter_sum(&self, full: &Tensor, shard: &mut Tensor) -> Result<()>;
}

/// The group of one: every collective is the identity, so that a trainer with this
/// communicator is the plain trainer, bit for bit.
#[derive(Debug)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum(&self, _tensor: &mut Tensor) -> Result<()> {
        Ok(())
    }

    fn all_gather(&self, shard: &Tensor, full: &mut Tensor) -> Result<()> {
        check_gather(shard, full, 1)?;
        if shard.data_ptr() != full.data_ptr() {
            tch::no_grad(|| full.f_copy_(shard))?;
        }
        Ok(())
    }

    fn reduce_scatter_sum(&self, full: &Tensor, shard: &mut Tensor) -> Result<()> {
        check_gather(shard, full, 1)?;
        if shard.data_ptr() != full.data_ptr() {
            tch::no_grad(|| shard.f_copy_(full))?;
        }
        Ok(())
    }
}

fn check_gather(shard: &Tensor, full: &Tensor, world: usize) -> Result<()> {
    if full.numel() != shard.numel() * world {
        return Err(collective_error(format!(
            "all_gather of {} elements a rank into a buffer of {} over {world} ranks",
            shard.numel(),
            full.numel()
        )));
    }
    Ok(())
}

fn collective_error(message: String) -> TrainError {
    TrainError::Collective(message)
}

/// Where a flat buffer of `len` elements is cut among `world` ranks: padded to a multiple of
/// the world size, each rank owns one equal, contiguous chunk (the last ones may cover only
/// padding), so that an all-gather of the chunks rebuilds the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatShards {
    pub len: i64,
    /// `len` rounded up to a multiple of the world size.
    pub padded: i64,
    /// Elements each rank owns.
    pub chunk: i64,
}

impl FlatShards {
    pub fn new(len: i64, world: usize) -> Self {
        let world = world.max(1) as i64;
        let chunk = (len + world - 1) / world;
        FlatShards {
            len,
            padded: chunk * world,
            chunk,
        }
    }

    /// The first element `rank` owns.
    pub fn start(&self, rank: usize) -> i64 {
        rank as i64 * self.chunk
    }
}

/// The contiguous part of `count` items (a step's examples) that `rank` of `world` takes:
/// parts differ in size by at most one, the first `count % world` ranks taking the larger.
pub fn share(count: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    let (base, extra) = (count / world, count % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// `world` communicators whose ranks are threads of this process: the in-process test double
/// of a real group. A rank that drops its communicator (it finished, failed or panicked)
/// leaves the group; a collective that still needs it fails on the other ranks with a message
/// naming it, instead of waiting forever.
pub fn thread_group(world: usize) -> Vec<ThreadRank> {
    let shared = Arc::new(Shared {
        state: Mutex::new(Round {
            contributions: vec![None; world],
            arrived: 0,
            taken: 0,
            distributing: false,
            left: None,
        }),
        changed: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadRank {
            rank,
            world,
            shared: shared.clone(),
        })
        .collect()
}

/// One rank of a [`thread_group`].
pub struct ThreadRank {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThreadRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread rank {} of {}", self.rank, self.world)
    }
}

struct Shared {
    state: Mutex<Round>,
    changed: Condvar,
}

/// One collective in progress: each rank deposits its tensor, and once all have, each takes
/// every rank's; the last to take opens the next round.
struct Round {
    contributions: Vec<Option<CpuTensor>>,
    arrived: usize,
    taken: usize,
    distributing: bool,
    /// The first rank that left the group.
    left: Option<usize>,
}

/// A tensor copied to the host, so that ranks on different threads never share storage.
struct CpuTensor(Tensor);

impl Clone for CpuTensor {
    fn clone(&self) -> Self {
        CpuTensor(self.0.copy())
    }
}

impl ThreadRank {
    /// Deposits `contribution` and returns every rank's, in rank order.
    fn exchange(&self, contribution: &Tensor) -> Result<Vec<Tensor>> {
        let copy = CpuTensor(tch::no_grad(|| {
            contribution
                .to_device(Device::Cpu)
                .to_kind(Kind::Double)
                .copy()
        }));
        let left = |rank: usize| {
            collective_error(format!(
                "rank {rank} left the group before a collective that rank {} was in \
                 (it failed or was killed); the whole job stops, and a restart resumes from \
                 the last checkpoint",
                self.rank
            ))
        };
        let mut round = self
            .shared
            .state
            .lock()
            .expect("no rank panics holding the lock");
        // The previous round must be fully taken before this one collects.
        while round.distributing {
            round = self.shared.changed.wait(round).expect("lock");
        }
        if let Some(rank) = round.left {
            return Err(left(rank));
        }
        round.contributions[self.rank] = Some(copy);
        round.arrived += 1;
        if round.arrived == self.world {
            round.distributing = true;
            self.shared.changed.notify_all();
        }
        while !round.distributing {
            if let Some(rank) = round.left {
                return Err(left(rank));
            }
            round = self.shared.changed.wait(round).expect("lock");
        }
        let all = round
            .contributions
            .iter()
            .map(|t| t.as_ref().expect("every rank arrived").0.shallow_clone())
            .collect();
        round.taken += 1;
        if round.taken == self.world {
            round.contributions.iter_mut().for_each(|t| *t = None);
            (round.arrived, round.taken, round.distributing) = (0, 0, false);
            self.shared.changed.notify_all();
        }
        Ok(all)
    }
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(&Tensor::zeros([1], (Kind::Float, Device::Cpu)))
            .map(drop)
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        let all = self.exchange(tensor)?;
        let sum = all
            .into_iter()
            .reduce(|sum, t| sum + t)
            .expect("a group has ranks");
        tch::no_grad(|| tensor.f_copy_(&sum))?;
        Ok(())
    }

    fn all_gather(&self, shard: &Tensor, full: &mut Tensor) -> Result<()> {
        check_gather(shard, full, self.world)?;
        let all = self.exchange(shard)?;
        tch::no_grad(|| full.f_copy_(&Tensor::cat(&all, 0)))?;
        Ok(())
    }

    fn reduce_scatter_sum(&self, full: &Tensor, shard: &mut Tensor) -> Result<()> {
        check_gather(shard, full, self.world)?;
        let all = self.exchange(full)?;
        let sum = all
            .into_iter()
            .reduce(|sum, t| sum + t)
            .expect("a group has ranks");
        let len = shard.numel() as i64;
        tch::no_grad(|| shard.f_copy_(&sum.narrow(0, self.rank as i64 * len, len)))?;
        Ok(())
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        if let Ok(mut round) = self.shared.state.lock() {
            round.left.get_or_insert(self.rank);
            self.shared.changed.notify_all();
        }
    }
}

/// Runs `work` on each rank of a [`thread_group`] of `world`, one thread a rank, and returns
/// the results in rank order. A rank's communicator is dropped when its work returns.
#[cfg(test)]
pub(crate) fn on_ranks<T: Send>(
    world: usize,
    work: impl Fn(Arc<dyn Communicator>) -> T + Sync,
) -> Vec<T> {
    let ranks = thread_group(world);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                let work = &work;
                scope.spawn(move || work(Arc::new(rank)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_buffers_are_padded_and_cut_into_equal_chunks() {
        assert_eq!(
            FlatShards::new(10, 4),
            FlatShards {
                len: 10,
                padded: 12,
                chunk: 3
            }
        );
        assert_eq!(FlatShards::new(10, 4).start(3), 9);
        assert_eq!(FlatShards::new(12, 3).padded, 12);
        // More ranks than elements: each owns one, some only padding.
        assert_eq!(FlatShards::new(2, 3).chunk, 1);
        assert_eq!(FlatShards::new(7, 1).padded, 7);
    }

    #[test]
    fn a_steps_examples_are_shared_without_gaps_or_overlap() {
        let parts: Vec<_> = (0..3).map(|rank| share(8, 3, rank)).collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..8]);
        assert_eq!(share(2, 4, 3), 2..2);
        assert_eq!(share(5, 1, 0), 0..5);
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_all_gather_concatenates() {
        let results = on_ranks(3, |comm| {
            let rank = comm.rank() as f32;
            let mut summed = Tensor::from_slice(&[rank, 10.0 * rank]);
            comm.all_reduce_sum(&mut summed).unwrap();
            let mut full = Tensor::zeros([6], (Kind::Float, Device::Cpu));
            comm.all_gather(&Tensor::from_slice(&[rank, -rank]), &mut full)
                .unwrap();
            (
                Vec::<f32>::try_from(&summed).unwrap(),
                Vec::<f32>::try_from(&full).unwrap(),
            )
        });
        for (summed, full) in results {
            assert_eq!(summed, vec![3.0, 30.0]);
            assert_eq!(full, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
        }
    }

    /// Each rank gets its part of the sum, written into its own slice of the buffer in place
    /// (as ZeRO-1 reduces gradients); one process keeps the buffer as it is.
    #[test]
    fn reduce_scatter_leaves_each_rank_its_part_of_the_sum() {
        let results = on_ranks(3, |comm| {
            let rank = comm.rank() as f32;
            // Rank r holds (r, 1, 10r, 2, 100r, 3): sums (3, 3, 30, 6, 300, 9).
            let full = Tensor::from_slice(&[rank, 1.0, 10.0 * rank, 2.0, 100.0 * rank, 3.0]);
            let mut own = full.narrow(0, 2 * comm.rank() as i64, 2);
            comm.reduce_scatter_sum(&full, &mut own).unwrap();
            Vec::<f32>::try_from(&own).unwrap()
        });
        assert_eq!(
            results,
            vec![vec![3.0, 3.0], vec![30.0, 6.0], vec![300.0, 9.0]]
        );
        let full = Tensor::from_slice(&[1.0f32, 2.0]);
        let mut copy = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        SingleProcess.reduce_scatter_sum(&full, &mut copy).unwrap();
        assert_eq!(Vec::<f32>::try_from(&copy).unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_collectives_naming_it() {
        let results = on_ranks(3, |comm| {
            let mut t = Tensor::from_slice(&[1.0f32]);
            comm.all_reduce_sum(&mut t).unwrap();
            if comm.rank() == 1 {
                // Rank 1 dies here; its communicator is dropped when the thread ends.
                return None;
            }
            Some(comm.all_reduce_sum(&mut t).unwrap_err().to_string())
        });
        assert!(results[1].is_none());
        for message in [&results[0], &results[2]] {
            let message = message.as_ref().unwrap();
            assert!(message.contains("rank 1 left the group"), "{message}");
        }
    }

    #[test]
    fn a_gather_into_the_wrong_size_is_refused() {
        let mut full = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let error = SingleProcess
            .all_gather(&Tensor::from_slice(&[1.0f32, 2.0]), &mut full)
            .unwrap_err();
        assert!(
            error.to_string().contains("all_gather of 2 elements"),
            "{error}"
        );
    }
}
