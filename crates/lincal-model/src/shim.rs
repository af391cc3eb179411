//! Calls into lincal's C++ shims over libtorch (CUDA graphs, the profiler, lincal-train's
//! fused AdamW): each catches C++ exceptions, which must not unwind into Rust, and writes
//! their text into a buffer the caller passes.

use std::ffi::{CStr, c_char};

/// Runs `call` with an error buffer and its capacity. `call` returns `None` when the shim
/// reported a failure; the error is then the text the shim wrote.
pub fn call<T>(call: impl FnOnce(*mut c_char, usize) -> Option<T>) -> Result<T, String> {
    let mut error = [0 as c_char; 1024];
    call(error.as_mut_ptr(), error.len()).ok_or_else(|| {
        // SAFETY: the buffer starts zeroed and a shim writes a NUL-terminated message with
        // snprintf, which never passes the capacity.
        unsafe { CStr::from_ptr(error.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    })
}
