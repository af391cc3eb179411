//! Chrome traces from PyTorch's profiler (Kineto) around a benchmark's timed part: every
//! operator the thread runs and, on a GPU, every kernel with its device time (whether kernels
//! replayed from CUDA graphs appear one by one has not yet been seen on a GPU). Open one in
//! Perfetto or `chrome://tracing`, or total its kernels by name with
//! `bench/gpu/trace_summary.py`. Recording slows the host side, so times measured while
//! tracing are the profiler's, not the benchmark's.

use crate::error::{ModelError, Result};
use crate::fsutil::write_file_atomic;
use crate::shim;
use std::ffi::{CString, c_char, c_int};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Device;

/// Whether a trace records. libtorch does not refuse a second start (seen on the CPU), and its
/// profiler state belongs to the thread that started it, so lincal allows one trace at a
/// time in the process and keeps each on its thread.
static RECORDING: AtomicBool = AtomicBool::new(false);

mod ffi {
    use std::ffi::{c_char, c_int};
    unsafe extern "C" {
        pub fn lincal_trace_start(cuda: c_int, error: *mut c_char, capacity: usize) -> c_int;
        pub fn lincal_trace_stop(path: *const c_char, error: *mut c_char, capacity: usize)
        -> c_int;
    }
}

/// A profiler recording; [`Trace::finish`] writes it, dropping it discards it. It stays on
/// the thread that started it (it is not `Send`), where libtorch's profiler state is.
pub struct Trace {
    path: PathBuf,
    device: Device,
    recording: bool,
    thread_bound: PhantomData<*const ()>,
}

impl Trace {
    /// Starts recording what runs on `device` (its kernels too when it is a GPU), to be
    /// written to `path`, whose directory must exist and take files (checked now, so that a
    /// bad path fails before the work it would trace). One trace records at a time in a
    /// process.
    pub fn start(path: &Path, device: Device) -> Result<Trace> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tempfile::tempfile_in(dir).map_err(|e| ModelError::io(path, e))?;
        if RECORDING.swap(true, Ordering::SeqCst) {
            return Err(ModelError::Invalid(
                "starting the profiler: another trace is recording in this process".into(),
            ));
        }
        let cuda = c_int::from(device.is_cuda());
        // SAFETY: the shim only calls libtorch and reports failures through the buffer.
        shim::call(|error, capacity| {
            (unsafe { ffi::lincal_trace_start(cuda, error, capacity) } == 0).then_some(())
        })
        .map_err(|message| {
            RECORDING.store(false, Ordering::SeqCst);
            ModelError::Invalid(format!("starting the profiler: {message}"))
        })?;
        Ok(Trace {
            path: path.to_path_buf(),
            device,
            recording: true,
            thread_bound: PhantomData,
        })
    }

    /// [`Trace::start`] when `path` names a file, else no trace.
    pub fn start_if(path: Option<&Path>, device: Device) -> Result<Option<Trace>> {
        path.map(|path| Trace::start(path, device)).transpose()
    }

    /// Waits for the device, stops recording and writes the trace (through a temporary file
    /// beside it, renamed into place).
    pub fn finish(mut self) -> Result<()> {
        crate::synchronize(self.device);
        let path = self.path.clone();
        write_file_atomic(&path, |tmp| {
            let tmp = CString::new(tmp.as_os_str().as_encoded_bytes()).map_err(|_| {
                ModelError::Invalid(format!("{}: a path with a NUL byte", path.display()))
            })?;
            self.stop(tmp.as_ptr())
                .map_err(|message| ModelError::Invalid(format!("{}: {message}", path.display())))
        })
    }

    /// Stops recording; writes the trace to `path` unless it is null.
    fn stop(&mut self, path: *const c_char) -> std::result::Result<(), String> {
        self.recording = false;
        // SAFETY: `path` is null or a NUL-terminated string alive for the call; the shim only
        // calls libtorch and reports failures through the buffer.
        let stopped = shim::call(|error, capacity| {
            (unsafe { ffi::lincal_trace_stop(path, error, capacity) } == 0).then_some(())
        });
        RECORDING.store(false, Ordering::SeqCst);
        stopped
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.recording {
            // Nothing to report from a drop: the recording is discarded either way.
            let _ = self.stop(std::ptr::null());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// A trace holds the operators that ran while it recorded, and only one records at a time.
    #[test]
    fn a_trace_records_the_operators_run_while_it_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let a = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let trace = Trace::start(&path, Device::Cpu).unwrap();
        let error = Trace::start(&dir.path().join("other.json"), Device::Cpu)
            .err()
            .expect("a second trace is refused while one records")
            .to_string();
        assert!(error.starts_with("starting the profiler: "), "{error}");
        let _ = a.matmul(&a).softmax(-1, Kind::Float);
        trace.finish().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let names: Vec<&str> = json["traceEvents"]
            .as_array()
            .expect("a Chrome trace")
            .iter()
            .filter_map(|event| event["name"].as_str())
            .collect();
        for op in ["aten::matmul", "aten::softmax"] {
            assert!(names.contains(&op), "{op} missing from {names:?}");
        }
        // Only the trace is left in the directory (no temporary file).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A dropped trace stops recording: the next one starts.
        drop(Trace::start(&path, Device::Cpu).unwrap());
        Trace::start(&path, Device::Cpu).unwrap().finish().unwrap();
        // A trace that could not be written fails at its start, naming the path.
        let missing = dir.path().join("no/such/dir/trace.json");
        let error = Trace::start(&missing, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with(&missing.display().to_string()), "{error}");
        Trace::start(&path, Device::Cpu).unwrap().finish().unwrap();
    }
}
