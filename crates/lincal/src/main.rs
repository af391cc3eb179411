//! The `lincal` command line: argument parsing only; the commands live in the `lincal` library.

use clap::Parser;

fn main() {
    keep_large_allocations_in_the_heap();
    if let Err(error) = lincal::cli::run(lincal::cli::Cli::parse()) {
        eprintln!("error: {}", lincal::error_message(&error));
        std::process::exit(1);
    }
}

/// libtorch frees and re-allocates buffers of hundreds of MB (attention over long prompts)
/// every step; glibc serves each from a fresh mmap and unmaps it on free, so every step
/// page-faults that memory in again. Measured on 32 prompts of ~900 tokens with SmolLM2 on two
/// cores: 33.6 s of 140 s CPU time in the kernel and 72 s wall clock, against 11 s and 59 s
/// with the heap keeping them (the same tokens out; bench/RESULTS.md, run 13).
fn keep_large_allocations_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a glibc allocator setting; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
    }
}
