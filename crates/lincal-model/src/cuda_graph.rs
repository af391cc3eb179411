//! CUDA graphs: a decode step is recorded once and replayed for every token, so its ~1,600
//! kernel launches cost the CPU one launch. tch has no binding for libtorch's `CUDAGraph`; a
//! small C++ shim (`csrc/cuda_graph.cpp`, built with the `cuda` feature) provides one, and
//! the caching allocator's `emptyCache`, which tch does not bind either.
//!
//! Recorded work must not synchronise with the host (no `.item()`, no data-dependent shapes),
//! and every tensor it reads or writes must keep its address between replays.

use crate::error::{ModelError, Result};
use tch::Device;

/// Whether graphs can be captured on `device` by this build.
pub fn supported(device: Device) -> bool {
    cfg!(feature = "cuda") && device.is_cuda()
}

#[cfg(feature = "cuda")]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        pub fn lincal_side_stream_enter(
            device: c_int,
            error: *mut c_char,
            capacity: usize,
        ) -> *mut c_void;
        pub fn lincal_side_stream_exit(
            handle: *mut c_void,
            error: *mut c_char,
            capacity: usize,
        ) -> c_int;
        pub fn lincal_graph_capture_begin(error: *mut c_char, capacity: usize) -> *mut c_void;
        pub fn lincal_graph_capture_end(
            graph: *mut c_void,
            error: *mut c_char,
            capacity: usize,
        ) -> c_int;
        pub fn lincal_graph_replay(
            graph: *mut c_void,
            error: *mut c_char,
            capacity: usize,
        ) -> c_int;
        pub fn lincal_graph_free(graph: *mut c_void);
        pub fn lincal_empty_cache(error: *mut c_char, capacity: usize) -> c_int;
    }
}

/// Returns the memory that libtorch's caching allocator holds but no tensor uses to the
/// driver (`torch.cuda.empty_cache()`), e.g. after many small tensors were moved into one
/// large buffer, whose freed blocks could not serve the next large allocation. Does nothing
/// in builds without the `cuda` feature.
pub fn empty_cache() -> Result<()> {
    #[cfg(feature = "cuda")]
    // SAFETY: the shim only calls libtorch and reports failures through the buffer.
    return shim_call(|error, capacity| {
        (unsafe { ffi::lincal_empty_cache(error, capacity) } == 0).then_some(())
    });
    #[cfg(not(feature = "cuda"))]
    Ok(())
}

/// A recorded sequence of kernels; dropping it frees its private memory pool.
pub struct CudaGraph {
    #[cfg(feature = "cuda")]
    handle: *mut std::ffi::c_void,
    /// Without the `cuda` feature no graph can exist.
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

#[cfg(feature = "cuda")]
fn shim_call<T>(call: impl FnOnce(*mut std::ffi::c_char, usize) -> Option<T>) -> Result<T> {
    crate::shim::call(call).map_err(|message| ModelError::Invalid(format!("CUDA graph: {message}")))
}

impl CudaGraph {
    /// Records what `step` issues on `device`. With `warm_up`, `step` first runs once for
    /// real, so lazy set-up (cuBLAS workspaces, kernel selection) happens outside the
    /// recording; `step` must therefore be idempotent. The recorded work has not run when
    /// this returns: call `replay`.
    #[cfg(feature = "cuda")]
    pub fn capture(device: Device, warm_up: bool, mut step: impl FnMut()) -> Result<CudaGraph> {
        let Device::Cuda(index) = device else {
            return Err(ModelError::Invalid(format!(
                "CUDA graphs need a CUDA device, not {device:?}"
            )));
        };
        // SAFETY: the handles passed back are the ones the shim returned, each used once.
        unsafe {
            let side = shim_call(|e, n| {
                Some(ffi::lincal_side_stream_enter(index as i32, e, n)).filter(|h| !h.is_null())
            })?;
            let recorded = (|| {
                if warm_up {
                    step();
                }
                let handle = shim_call(|e, n| {
                    Some(ffi::lincal_graph_capture_begin(e, n)).filter(|h| !h.is_null())
                })?;
                let graph = CudaGraph { handle };
                step();
                shim_call(|e, n| {
                    (ffi::lincal_graph_capture_end(graph.handle, e, n) == 0).then_some(())
                })?;
                Ok(graph)
            })();
            shim_call(|e, n| (ffi::lincal_side_stream_exit(side, e, n) == 0).then_some(()))?;
            recorded
        }
    }

    #[cfg(not(feature = "cuda"))]
    pub fn capture(device: Device, _warm_up: bool, _step: impl FnMut()) -> Result<CudaGraph> {
        Err(ModelError::Invalid(format!(
            "cannot capture a CUDA graph on {device:?}: this lincal was built without the \
             `cuda` feature"
        )))
    }

    /// Runs the recorded work again on the current stream.
    pub fn replay(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        // SAFETY: `handle` is a live graph owned by `self`.
        return shim_call(|e, n| {
            (unsafe { ffi::lincal_graph_replay(self.handle, e, n) } == 0).then_some(())
        });
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }
}

#[cfg(feature = "cuda")]
impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `handle` came from capture_begin and is freed once.
        unsafe { ffi::lincal_graph_free(self.handle) }
    }
}
