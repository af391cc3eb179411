// CUDA graph capture and replay through libtorch's own at::cuda::CUDAGraph, which tch does
// not bind. Capturing through libtorch (not the raw CUDA API) matters: it moves the caching
// allocator into a private pool while recording, so the addresses baked into the graph stay
// valid. Every entry point catches C++ exceptions and returns their text, since an exception
// must not unwind into Rust.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdio>
#include <exception>

namespace {

struct SideStream {
  c10::cuda::CUDAStream previous;
};

void write_error(char* error, size_t capacity, const std::exception& e) {
  std::snprintf(error, capacity, "%s", e.what());
}

}  // namespace

extern "C" {

// Waits for the device, then makes a pool stream current on `device`: graphs cannot be
// captured on the default stream. Returns a handle for lincal_side_stream_exit, or null.
void* lincal_side_stream_enter(int device, char* error, size_t capacity) {
  try {
    c10::cuda::device_synchronize();
    auto previous = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device)));
    return new SideStream{previous};
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return nullptr;
  }
}

// Waits for the device and makes the stream current before lincal_side_stream_enter again.
int lincal_side_stream_exit(void* handle, char* error, size_t capacity) {
  auto* side = static_cast<SideStream*>(handle);
  try {
    c10::cuda::device_synchronize();
    c10::cuda::setCurrentCUDAStream(side->previous);
    delete side;
    return 0;
  } catch (const std::exception& e) {
    delete side;
    write_error(error, capacity, e);
    return 1;
  }
}

// Starts recording the work issued on the current (side) stream. Returns the graph or null.
void* lincal_graph_capture_begin(char* error, size_t capacity) {
  auto* graph = new at::cuda::CUDAGraph();
  try {
    graph->capture_begin();
    return graph;
  } catch (const std::exception& e) {
    delete graph;
    write_error(error, capacity, e);
    return nullptr;
  }
}

int lincal_graph_capture_end(void* graph, char* error, size_t capacity) {
  try {
    static_cast<at::cuda::CUDAGraph*>(graph)->capture_end();
    return 0;
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return 1;
  }
}

// Launches the recorded work on the current stream.
int lincal_graph_replay(void* graph, char* error, size_t capacity) {
  try {
    static_cast<at::cuda::CUDAGraph*>(graph)->replay();
    return 0;
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return 1;
  }
}

void lincal_graph_free(void* graph) {
  delete static_cast<at::cuda::CUDAGraph*>(graph);
}

// Returns the caching allocator's unused blocks to the driver (torch.cuda.empty_cache).
int lincal_empty_cache(char* error, size_t capacity) {
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
    return 0;
  } catch (const std::exception& e) {
    write_error(error, capacity, e);
    return 1;
  }
}

}  // extern "C"
