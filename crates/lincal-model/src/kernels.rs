//! lincal's own CUDA kernels (`csrc/kernels.cpp`, built with the `cuda` feature): compiled
//! by NVRTC when first used and launched on PyTorch's current stream, each equal bit for bit
//! to the PyTorch operations it replaces (their tests compare both on the GPU). Where a
//! kernel cannot run (a CPU tensor, a build without `cuda`, a dtype it has no version for),
//! the caller takes the PyTorch path. `LINCAL_FUSED_KERNELS=0` makes every caller take it, to
//! measure what the kernels save or to rule them out.

use tch::Tensor;

#[cfg(feature = "cuda")]
mod ffi {
    use std::ffi::{c_char, c_void};
    unsafe extern "C" {
        pub fn lincal_rotary(
            x: *mut c_void,
            cos: *mut c_void,
            signed_sin: *mut c_void,
            error: *mut c_char,
            capacity: usize,
        ) -> *mut c_void;
    }
}

/// [`crate::layers::apply_rotary`] as one kernel forward and one backward, for a 4-D CUDA
/// tensor in f32, bf16 or f16 whose tables have its dtype. `None`: not such a tensor, or the
/// kernels could not be compiled on this machine (said once on stderr).
pub fn rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Option<Tensor> {
    #[cfg(feature = "cuda")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tch::Kind;
        static UNAVAILABLE: std::sync::LazyLock<AtomicBool> = std::sync::LazyLock::new(|| {
            AtomicBool::new(std::env::var("LINCAL_FUSED_KERNELS").is_ok_and(|v| v == "0"))
        });
        let kind = x.kind();
        let fits = x.device().is_cuda()
            && x.dim() == 4
            && matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half)
            && cos.kind() == kind
            && signed_sin.kind() == kind;
        if !fits || UNAVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        let pointer = |t: &Tensor| t.as_ptr().cast_mut().cast::<std::ffi::c_void>();
        // SAFETY: the pointers are live tch tensors (torch::Tensor*) for the call's duration;
        // the shim returns a new torch::Tensor* that `from_ptr` takes ownership of.
        let out = crate::shim::call(|error, capacity| {
            let out = unsafe {
                ffi::lincal_rotary(
                    pointer(x),
                    pointer(cos),
                    pointer(signed_sin),
                    error,
                    capacity,
                )
            };
            (!out.is_null()).then(|| unsafe { Tensor::from_ptr(out.cast()) })
        });
        match out {
            Ok(out) => Some(out),
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
