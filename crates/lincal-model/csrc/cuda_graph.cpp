// CUDA graph capture and replay through libtorch's own at::cuda::CUDAGraph, which tch does
// not bind. Capturing through libtorch (not the raw CUDA API) matters: it moves the caching
// allocator into a private pool while recording, so the addresses baked into the graph stay
// valid.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>

#include "shim.h"

namespace {

struct SideStream {
  c10::cuda::CUDAStream previous;
};

}  // namespace

extern "C" {

// Waits for the device, then makes a pool stream current on `device`: graphs cannot be
// captured on the default stream. Returns a handle for lincal_side_stream_exit, or null.
void* lincal_side_stream_enter(int device, char* error, size_t capacity) {
  SideStream* side = nullptr;
  lincal_shim_try(error, capacity, [&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::cuda::device_synchronize();
    auto previous = c10::cuda::getCurrentCUDAStream(index);
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, index));
    side = new SideStream{previous};
  });
  return side;
}

// Waits for the device and makes the stream current before lincal_side_stream_enter again.
// Frees the handle whether or not that succeeds.
int lincal_side_stream_exit(void* handle, char* error, size_t capacity) {
  std::unique_ptr<SideStream> side(static_cast<SideStream*>(handle));
  return lincal_shim_try(error, capacity, [&] {
    c10::cuda::device_synchronize();
    c10::cuda::setCurrentCUDAStream(side->previous);
  });
}

// Starts recording the work issued on the current (side) stream. Returns the graph or null.
void* lincal_graph_capture_begin(char* error, size_t capacity) {
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  if (lincal_shim_try(error, capacity, [&] { graph->capture_begin(); }) != 0) return nullptr;
  return graph.release();
}

int lincal_graph_capture_end(void* graph, char* error, size_t capacity) {
  return lincal_shim_try(error, capacity,
                         [&] { static_cast<at::cuda::CUDAGraph*>(graph)->capture_end(); });
}

// Launches the recorded work on the current stream.
int lincal_graph_replay(void* graph, char* error, size_t capacity) {
  return lincal_shim_try(error, capacity,
                         [&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
}

void lincal_graph_free(void* graph) {
  delete static_cast<at::cuda::CUDAGraph*>(graph);
}

// Returns the caching allocator's unused blocks to the driver (torch.cuda.empty_cache).
int lincal_empty_cache(char* error, size_t capacity) {
  return lincal_shim_try(error, capacity,
                         [] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}

}  // extern "C"
