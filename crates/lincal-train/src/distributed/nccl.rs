//! The [`Communicator`] of a job of GPU processes: NCCL, the library PyTorch's own data
//! parallelism uses, loaded at run time from the `libnccl.so.2` that the PyTorch wheel
//! brings (libtorch_cuda links it, so it is already in the process), so that building lincal
//! needs no NCCL headers. Rank 0 creates the communicator's unique id and hands it to the
//! others over TCP at the job's master address; collectives run on the legacy default CUDA
//! stream, the one libtorch's kernels use, so they order with the training's kernels without
//! extra synchronisation.

use super::{Communicator, collective_error};
use crate::error::Result;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// `ncclUniqueId`: what every rank passes to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type Comm = *mut c_void;
type Stream = *mut c_void;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int;
type ReduceScatter = AllReduce;
type CommAbort = unsafe extern "C" fn(Comm) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// `ncclRedOp_t::ncclSum`.
const SUM: c_int = 0;

/// The NCCL functions lincal calls.
struct Library {
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    all_gather: AllGather,
    reduce_scatter: ReduceScatter,
    comm_abort: CommAbort,
    get_error_string: GetErrorString,
}

impl Library {
    fn load() -> Result<Self> {
        // SAFETY: dlopen of a library name; the handle is kept for the process's life.
        let handle =
            unsafe { libc::dlopen(c"libnccl.so.2".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            return Err(collective_error(
                "libnccl.so.2 could not be loaded; it comes with the PyTorch wheel \
                 (site-packages/nvidia/nccl/lib): add that folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        // SAFETY: each field's type is the C signature of the NCCL function of that name
        // (nccl.h, stable across NCCL 2.x).
        unsafe {
            Ok(Library {
                get_unique_id: function(handle, c"ncclGetUniqueId")?,
                comm_init_rank: function(handle, c"ncclCommInitRank")?,
                all_reduce: function(handle, c"ncclAllReduce")?,
                all_gather: function(handle, c"ncclAllGather")?,
                reduce_scatter: function(handle, c"ncclReduceScatter")?,
                comm_abort: function(handle, c"ncclCommAbort")?,
                get_error_string: function(handle, c"ncclGetErrorString")?,
            })
        }
    }

    fn check(&self, what: &str, code: c_int) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static NUL-terminated string for any result code.
        let text = unsafe { CStr::from_ptr((self.get_error_string)(code)) }.to_string_lossy();
        Err(collective_error(format!(
            "NCCL {what} failed: {text} (code {code})"
        )))
    }
}

/// The function `name` of the library `handle` as a `T`.
///
/// # Safety
/// `handle` is a live `dlopen` handle and `T` is the function's C signature (a fn pointer).
unsafe fn function<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T> {
    // SAFETY: dlsym on a live handle with a NUL-terminated name.
    let pointer = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if pointer.is_null() {
        return Err(collective_error(format!(
            "libnccl.so.2 has no {}; use the NCCL of PyTorch's wheel (2.18 or later)",
            name.to_string_lossy()
        )));
    }
    // SAFETY: the caller's promise that T is this symbol's function pointer type.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&pointer) })
}

/// How long ranks wait for rank 0 at the master address (it may still be loading).
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank of a job of GPU processes, connected over NCCL.
pub struct NcclRank {
    library: Library,
    comm: Comm,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; lincal's
// trainers call it from one thread.
unsafe impl Send for NcclRank {}
unsafe impl Sync for NcclRank {}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NCCL rank {} of {}", self.rank, self.world)
    }
}

impl NcclRank {
    /// Joins the job of `world` ranks as `rank`, meeting the others at `master`
    /// (`ADDR:PORT`, where rank 0 listens), on the current CUDA device.
    pub fn connect(rank: usize, world: usize, master: &str) -> Result<Self> {
        let library = Library::load()?;
        let id = if rank == 0 {
            let mut id = UniqueId { internal: [0; 128] };
            // SAFETY: NCCL fills the id it is given.
            library.check("ncclGetUniqueId", unsafe {
                (library.get_unique_id)(&mut id)
            })?;
            hand_out(&id, world, master)?;
            id
        } else {
            fetch(rank, master)?
        };
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: every rank passes the same id; NCCL writes the new communicator.
        library.check("ncclCommInitRank", unsafe {
            (library.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int)
        })?;
        Ok(NcclRank {
            library,
            comm,
            rank,
            world,
        })
    }
}

/// Rank 0: sends the id to each of the other `world - 1` ranks as they connect.
fn hand_out(id: &UniqueId, world: usize, master: &str) -> Result<()> {
    let listener = TcpListener::bind(master).map_err(|e| {
        collective_error(format!(
            "rank 0 cannot listen at {master} ({e}); pick a free port with --master"
        ))
    })?;
    let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
    for _ in 1..world {
        let (mut stream, _) = listener
            .accept()
            .map_err(|e| collective_error(format!("rank 0 at {master}: {e}")))?;
        stream
            .write_all(&bytes)
            .map_err(|e| collective_error(format!("rank 0 at {master}: {e}")))?;
    }
    Ok(())
}

/// Ranks but 0: reads the id from rank 0, retrying until it listens.
fn fetch(rank: usize, master: &str) -> Result<UniqueId> {
    let deadline = Instant::now() + RENDEZVOUS_TIMEOUT;
    let mut stream = loop {
        match TcpStream::connect(master) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(collective_error(format!(
                    "rank {rank} found no rank 0 at {master} within {} s ({e}); check \
                     --master on every node",
                    RENDEZVOUS_TIMEOUT.as_secs()
                )));
            }
        }
    };
    let mut bytes = [0u8; 128];
    stream
        .read_exact(&mut bytes)
        .map_err(|e| collective_error(format!("rank {rank} reading from {master}: {e}")))?;
    Ok(UniqueId {
        internal: bytes.map(|b| b as c_char),
    })
}

/// NCCL's `ncclDataType_t` of a tensor kind.
fn data_type(kind: Kind) -> Result<c_int> {
    Ok(match kind {
        Kind::Int8 => 0,
        Kind::Uint8 => 1,
        Kind::Int => 2,
        Kind::Int64 => 4,
        Kind::Half => 6,
        Kind::Float => 7,
        Kind::Double => 8,
        Kind::BFloat16 => 9,
        other => {
            return Err(collective_error(format!(
                "NCCL has no collective for {other:?} tensors"
            )));
        }
    })
}

fn on_gpu(tensor: &Tensor, what: &str) -> Result<()> {
    if !matches!(tensor.device(), Device::Cuda(_)) || !tensor.is_contiguous() {
        return Err(collective_error(format!(
            "NCCL {what} needs a contiguous GPU tensor; got one on {:?}",
            tensor.device()
        )));
    }
    Ok(())
}

impl Communicator for NcclRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn barrier(&self) -> Result<()> {
        let mut token = Tensor::zeros([1], (Kind::Float, Device::Cuda(0)));
        self.all_reduce_sum(&mut token)?;
        token.double_value(&[0]);
        Ok(())
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        on_gpu(tensor, "all-reduce")?;
        let data = tensor.data_ptr();
        // SAFETY: in place over the tensor's live, contiguous storage of numel elements.
        self.library.check("all-reduce", unsafe {
            (self.library.all_reduce)(
                data.cast_const(),
                data,
                tensor.numel(),
                data_type(tensor.kind())?,
                SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        })
    }

    fn all_gather(&self, shard: &Tensor, full: &mut Tensor) -> Result<()> {
        super::check_gather(shard, full, self.world)?;
        on_gpu(shard, "all-gather")?;
        on_gpu(full, "all-gather")?;
        // SAFETY: `shard` and `full` are live and contiguous, `full` world × shard long; NCCL
        // allows `shard` to be this rank's slice of `full` (in place).
        self.library.check("all-gather", unsafe {
            (self.library.all_gather)(
                shard.data_ptr().cast_const(),
                full.data_ptr(),
                shard.numel(),
                data_type(shard.kind())?,
                self.comm,
                std::ptr::null_mut(),
            )
        })
    }

    fn reduce_scatter_sum(&self, full: &Tensor, shard: &mut Tensor) -> Result<()> {
        super::check_gather(shard, full, self.world)?;
        on_gpu(full, "reduce-scatter")?;
        on_gpu(shard, "reduce-scatter")?;
        // SAFETY: `full` and `shard` are live and contiguous, `full` world × shard long; NCCL
        // allows `shard` to be this rank's slice of `full` (in place).
        self.library.check("reduce-scatter", unsafe {
            (self.library.reduce_scatter)(
                full.data_ptr().cast_const(),
                shard.data_ptr(),
                shard.numel(),
                data_type(full.kind())?,
                SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for NcclRank {
    fn drop(&mut self) {
        // Abort, not destroy: destroy waits for the peers, which may be gone.
        // SAFETY: the communicator is live and not used after this.
        unsafe {
            (self.library.comm_abort)(self.comm);
        }
    }
}
