// PyTorch's profiler (Kineto), which tch does not bind: operators on the CPU and, when asked,
// every CUDA kernel with its device time, saved as a Chrome trace. Every entry point catches
// C++ exceptions and returns their text, since an exception must not unwind into Rust.

#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdio>
#include <exception>
#include <set>

namespace {

using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

void write_error(char* error, size_t capacity, const std::exception& e) {
  std::snprintf(error, capacity, "%s", e.what());
}

}  // namespace

extern "C" {

// Starts recording on this thread's operators, and CUDA kernels when `cuda` is non-zero.
// Returns 0, or 1 with the error's text in `error`.
int lincal_trace_start(int cuda, char* error, size_t capacity) {
  try {
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) activities.insert(ActivityType::CUDA);
    ProfilerConfig config(ProfilerState::KINETO);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return 1;
  }
}

// Stops recording and, when `path` is not null, writes the Chrome trace there.
int lincal_trace_stop(const char* path, char* error, size_t capacity) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr) result->save(path);
    return 0;
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return 1;
  }
}

}  // extern "C"
