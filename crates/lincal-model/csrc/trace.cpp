// PyTorch's profiler (Kineto), which tch does not bind: operators on the CPU and, when asked,
// every CUDA kernel with its device time, saved as a Chrome trace.

#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <memory>
#include <set>

#include "shim.h"

extern "C" {

// Starts recording this thread's operators, and CUDA kernels when `cuda` is non-zero.
int lincal_trace_start(int cuda, char* error, size_t capacity) {
  return lincal_shim_try(error, capacity, [&] {
    using torch::profiler::impl::ActivityType;
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) activities.insert(ActivityType::CUDA);
    torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops recording and, when `path` is not null, writes the Chrome trace there.
int lincal_trace_stop(const char* path, char* error, size_t capacity) {
  return lincal_shim_try(error, capacity, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr) result->save(path);
  });
}

// Opens a range named `name` (copied) in the recording profiler, as Python's
// `record_function` does; `*range` becomes its handle for lincal_trace_range_end (null when
// nothing records on this thread, as libtorch then runs no callbacks).
int lincal_trace_range_begin(const char* name, void** range, char* error, size_t capacity) {
  *range = nullptr;
  return lincal_shim_try(error, capacity, [&] {
    auto opened = std::make_unique<at::RecordFunction>(at::RecordScope::USER_SCOPE);
    if (!opened->isActive()) return;
    opened->before(std::string_view(name));
    *range = opened.release();
  });
}

// Closes a range of lincal_trace_range_begin (its destructor ends it), while the profiler
// that opened it still records.
void lincal_trace_range_end(void* range) { delete static_cast<at::RecordFunction*>(range); }

}  // extern "C"
