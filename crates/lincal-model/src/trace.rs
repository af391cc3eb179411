//! Chrome traces from PyTorch's profiler (Kineto) around a benchmark's timed part: every
//! operator the thread runs and, on a GPU, every kernel with its device time (whether kernels
//! replayed from CUDA graphs appear one by one has not yet been seen on a GPU). Open one in
//! Perfetto or `chrome://tracing`, or total its kernels by name with
//! `bench/gpu/trace_summary.py`. Recording slows the host side, so times measured while
//! tracing are the profiler's, not the benchmark's.

use crate::error::{ModelError, Result};
use crate::fsutil::write_file_atomic;
use crate::shim;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tch::Device;

/// Whether a trace records. libtorch does not refuse a second start (seen on the CPU), and its
/// profiler state belongs to the thread that started it, so lincal allows one trace at a
/// time in the process and keeps each on its thread.
static RECORDING: AtomicBool = AtomicBool::new(false);
/// Traces started in the process: a [`TimedPart`] closes its range only in the trace that
/// opened it (libtorch would write a stopped trace's range into freed state).
static TRACES_STARTED: AtomicU64 = AtomicU64::new(0);

mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        pub fn lincal_trace_start(cuda: c_int, error: *mut c_char, capacity: usize) -> c_int;
        pub fn lincal_trace_stop(path: *const c_char, error: *mut c_char, capacity: usize)
        -> c_int;
        pub fn lincal_trace_range_begin(
            name: *const c_char,
            range: *mut *mut c_void,
            error: *mut c_char,
            capacity: usize,
        ) -> c_int;
        pub fn lincal_trace_range_end(range: *mut c_void);
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
        TRACES_STARTED.fetch_add(1, Ordering::SeqCst);
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

/// A timed part of a step (generation, scoring, the update, ...): its wall-clock seconds and,
/// while a [`Trace`] records on this thread, a range of its name in the trace (what Python's
/// `record_function` opens), so that `bench/gpu/trace_summary.py` totals each part's kernels
/// apart. Parts may nest.
pub struct TimedPart {
    started: Instant,
    /// The profiler's range and the trace it was opened in (see [`TRACES_STARTED`]); null
    /// when none was opened.
    range: *mut c_void,
    trace: u64,
}

impl TimedPart {
    pub fn start(name: &CStr) -> TimedPart {
        let mut range = std::ptr::null_mut();
        let trace = TRACES_STARTED.load(Ordering::SeqCst);
        if RECORDING.load(Ordering::SeqCst) {
            // A range only labels a trace: one that cannot be opened leaves the trace without
            // it, and the work goes on.
            // SAFETY: `name` is NUL-terminated (libtorch copies it); the shim writes the
            // handle or leaves it null.
            let _ = shim::call(|error, capacity| {
                let status = unsafe {
                    ffi::lincal_trace_range_begin(name.as_ptr(), &mut range, error, capacity)
                };
                (status == 0).then_some(())
            });
        }
        TimedPart {
            started: Instant::now(),
            range,
            trace,
        }
    }

    /// Seconds since the start, once `device` has run the work queued so far (kernels run
    /// asynchronously); the range closes after that wait, so that it holds the part's kernels.
    pub fn finish(mut self, device: Device) -> f64 {
        crate::synchronize(device);
        let seconds = self.started.elapsed().as_secs_f64();
        self.close();
        seconds
    }

    fn close(&mut self) {
        let range = std::mem::replace(&mut self.range, std::ptr::null_mut());
        let same_trace =
            RECORDING.load(Ordering::SeqCst) && TRACES_STARTED.load(Ordering::SeqCst) == self.trace;
        // A range whose trace has stopped is left unclosed (a few bytes): closing it would
        // write into the stopped profiler's state.
        if !range.is_null() && same_trace {
            // SAFETY: `range` came from lincal_trace_range_begin in the trace still recording,
            // and is closed once (it is nulled above).
            unsafe { ffi::lincal_trace_range_end(range) };
        }
    }
}

impl Drop for TimedPart {
    /// A part left by an error closes its range.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tch::{Kind, Tensor};

    /// One trace records at a time in the process: the tests take turns.
    static ONE_TRACE: Mutex<()> = Mutex::new(());

    /// A trace holds the operators that ran while it recorded, and only one records at a time.
    #[test]
    fn a_trace_records_the_operators_run_while_it_records() {
        let _turn = ONE_TRACE.lock().unwrap_or_else(|e| e.into_inner());
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

    /// A timed part opens a range of its name while a trace records, and the operators run
    /// inside it lie within it (nested parts within theirs); without a trace it only times.
    #[test]
    fn timed_parts_are_ranges_of_the_trace_that_hold_their_operators() {
        let _turn = ONE_TRACE.lock().unwrap_or_else(|e| e.into_inner());
        let untraced = TimedPart::start(c"alone");
        assert!(untraced.range.is_null());
        assert!(untraced.finish(Device::Cpu) >= 0.0);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let a = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let trace = Trace::start(&path, Device::Cpu).unwrap();
        let outer = TimedPart::start(c"outer part");
        let _ = a.matmul(&a);
        let inner = TimedPart::start(c"inner part");
        assert!(!inner.range.is_null());
        let _ = a.softmax(-1, Kind::Float);
        inner.finish(Device::Cpu);
        // A part dropped without finishing (an error left it) still closes its range: what
        // runs after the drop is outside it.
        drop(TimedPart::start(c"dropped part"));
        let _ = a.relu();
        outer.finish(Device::Cpu);
        trace.finish().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let events = json["traceEvents"].as_array().unwrap();
        let span = |name: &str| {
            let event = events
                .iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name} missing from the trace"));
            let start = event["ts"].as_f64().unwrap();
            (
                start,
                start + event["dur"].as_f64().unwrap(),
                event["cat"].clone(),
            )
        };
        let (outer, inner) = (span("outer part"), span("inner part"));
        assert_eq!(outer.2, "user_annotation");
        assert_eq!(inner.2, "user_annotation");
        let within = |(start, end, _): &(f64, f64, serde_json::Value), op: &str| {
            let (s, e, _) = span(op);
            *start <= s && e <= *end
        };
        let dropped = span("dropped part");
        assert!(dropped.1 >= dropped.0);
        assert!(within(&outer, "dropped part"));
        assert!(!within(&dropped, "aten::relu"));
        assert!(within(&outer, "aten::matmul"));
        assert!(within(&inner, "aten::softmax"));
        assert!(!within(&inner, "aten::matmul"));
        assert!(within(&outer, "inner part"));

        // A part outliving its trace is left open, not closed into a stopped profiler or into
        // the next trace: both traces are written, the second without it.
        let trace = Trace::start(&path, Device::Cpu).unwrap();
        let outliving = TimedPart::start(c"outliving part");
        assert!(!outliving.range.is_null());
        trace.finish().unwrap();
        let next = dir.path().join("next.json");
        let trace = Trace::start(&next, Device::Cpu).unwrap();
        drop(outliving);
        trace.finish().unwrap();
        let text = std::fs::read_to_string(&next).unwrap();
        assert!(!text.contains("outliving part"), "{text}");
    }
}
