//! lincal's own CUDA kernels (`csrc/kernels.cpp`, built with the `cuda` feature): compiled
//! by NVRTC when first used and launched on PyTorch's current stream, each giving the values
//! of the PyTorch operations it replaces exactly (their tests compare both on the GPU). Where
//! a kernel cannot run (a CPU tensor, a build without `cuda`, inputs it does not take), the
//! caller takes the PyTorch path. `LINCAL_FUSED_KERNELS=0` makes every caller take it, to
//! measure what the kernels save or to rule them out.

use tch::Tensor;

#[cfg(feature = "cuda")]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        pub fn lincal_rotary(
            x: *mut c_void,
            cos: *mut c_void,
            signed_sin: *mut c_void,
            unsupported: *mut c_int,
            error: *mut c_char,
            capacity: usize,
        ) -> *mut c_void;
    }
}

/// [`crate::layers::apply_rotary`] as one kernel forward and one backward (first-order
/// gradients; the tables get none). `None`: a CPU tensor, inputs the kernel does not take
/// (see `rotary_takes` in `csrc/kernels.cpp`: dtypes other than f32, bf16 and f16, tables
/// that require grad or do not broadcast to `x`, ...), or the kernels failed on this machine
/// (said once on stderr; PyTorch's path runs from then on).
pub fn rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Option<Tensor> {
    #[cfg(feature = "cuda")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static UNAVAILABLE: std::sync::LazyLock<AtomicBool> = std::sync::LazyLock::new(|| {
            AtomicBool::new(std::env::var("LINCAL_FUSED_KERNELS").is_ok_and(|v| v == "0"))
        });
        if !x.device().is_cuda() || UNAVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        let pointer = |t: &Tensor| t.as_ptr().cast_mut().cast::<std::ffi::c_void>();
        let mut unsupported = 0;
        // SAFETY: the pointers are live tch tensors (torch::Tensor*) for the call's duration;
        // the shim returns a new torch::Tensor* that `from_ptr` takes ownership of.
        let out = crate::shim::call(|error, capacity| {
            let out = unsafe {
                ffi::lincal_rotary(
                    pointer(x),
                    pointer(cos),
                    pointer(signed_sin),
                    &mut unsupported,
                    error,
                    capacity,
                )
            };
            if out.is_null() {
                (unsupported != 0).then_some(None)
            } else {
                Some(Some(unsafe { Tensor::from_ptr(out.cast()) }))
            }
        });
        match out {
            Ok(out) => out,
            Err(message) => {
                if !UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: lincal's rotary kernel failed, PyTorch's operations run \
                         instead: {message}"
                    );
                }
                None
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, cos, signed_sin);
        None
    }
}
