// lincal's own CUDA kernels, compiled when first used by NVRTC (the runtime compiler that
// PyTorch's CUDA build already ships and loads) and launched through the CUDA driver API on
// PyTorch's current stream. Nothing here needs nvcc at build time: NVRTC and the driver are
// opened with dlopen, so a GPU build links nothing new.
//
// The kernels reproduce the roundings of the PyTorch operations they replace (every product
// and sum rounded to the tensors' precision in the same order, no fused multiply-adds), so
// their outputs and gradients have the unfused path's values exactly (NaN payloads and the
// sign of a zero gradient past a partial rotation aside).

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>

#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "shim.h"

namespace at::cuda::jit {
// Exported by libtorch_cuda (it is how PyTorch's own runtime-compiled kernels make sure the
// calling thread has a CUDA context before using the driver API).
void initializeCudaContext();
}  // namespace at::cuda::jit

namespace {

// NVRTC's C interface (nvrtc.h is not among the headers the torch wheel ships).
using nvrtcProgram = struct _nvrtcProgram*;
using nvrtcResult = int;

struct Nvrtc {
  nvrtcResult (*create)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                        const char* const*);
  nvrtcResult (*compile)(nvrtcProgram, int, const char* const*);
  nvrtcResult (*log_size)(nvrtcProgram, size_t*);
  nvrtcResult (*log)(nvrtcProgram, char*);
  nvrtcResult (*cubin_size)(nvrtcProgram, size_t*);
  nvrtcResult (*cubin)(nvrtcProgram, char*);
  nvrtcResult (*destroy)(nvrtcProgram*);
  const char* (*error_string)(nvrtcResult);
};

struct Driver {
  CUresult (*module_load_data)(CUmodule*, const void*);
  CUresult (*module_get_function)(CUfunction*, CUmodule, const char*);
  CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                     unsigned, CUstream, void**, void**);
  CUresult (*error_string)(CUresult, const char**);
  CUresult (*device_get)(CUdevice*, int);
  CUresult (*device_attribute)(int*, CUdevice_attribute, CUdevice);
};

template <typename F>
void bind(void* library, const char* library_name, const char* symbol, F& slot) {
  void* address = dlsym(library, symbol);
  if (address == nullptr)
    throw std::runtime_error(std::string(library_name) + " has no " + symbol);
  slot = reinterpret_cast<F>(address);
}

const Nvrtc& nvrtc() {
  static const Nvrtc api = [] {
    // PyTorch's NVRTC stub finds libnvrtc beside the torch wheel (its RUNPATH); once it is
    // loaded, opening libnvrtc by its soname returns that same library.
    dlopen("libcaffe2_nvrtc.so", RTLD_NOW | RTLD_GLOBAL);
    void* library = dlopen("libnvrtc.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) library = dlopen("libnvrtc.so", RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr)
      throw std::runtime_error(
          "NVRTC (libnvrtc.so.13) could not be loaded: install the nvidia-cuda-nvrtc wheel "
          "that PyTorch's CUDA build depends on");
    Nvrtc api{};
    bind(library, "libnvrtc", "nvrtcCreateProgram", api.create);
    bind(library, "libnvrtc", "nvrtcCompileProgram", api.compile);
    bind(library, "libnvrtc", "nvrtcGetProgramLogSize", api.log_size);
    bind(library, "libnvrtc", "nvrtcGetProgramLog", api.log);
    bind(library, "libnvrtc", "nvrtcGetCUBINSize", api.cubin_size);
    bind(library, "libnvrtc", "nvrtcGetCUBIN", api.cubin);
    bind(library, "libnvrtc", "nvrtcDestroyProgram", api.destroy);
    bind(library, "libnvrtc", "nvrtcGetErrorString", api.error_string);
    return api;
  }();
  return api;
}

const Driver& driver() {
  static const Driver api = [] {
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) throw std::runtime_error("the CUDA driver (libcuda.so.1) is missing");
    Driver api{};
    bind(library, "libcuda", "cuModuleLoadData", api.module_load_data);
    bind(library, "libcuda", "cuModuleGetFunction", api.module_get_function);
    bind(library, "libcuda", "cuLaunchKernel", api.launch);
    bind(library, "libcuda", "cuGetErrorString", api.error_string);
    bind(library, "libcuda", "cuDeviceGet", api.device_get);
    bind(library, "libcuda", "cuDeviceGetAttribute", api.device_attribute);
    return api;
  }();
  return api;
}

void check(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* text = nullptr;
  driver().error_string(result, &text);
  throw std::runtime_error(std::string(what) + ": " + (text ? text : "unknown CUDA error"));
}

// The rotary kernel's launch geometry, one definition for the host and (as text) for the
// compiled source. x and out are [d0, d1, d2, head_dim] with any strides but a unit last one;
// the tables are [d0, d1, d2, rotary_dim] by strides (zero where they broadcast). Each of
// `count` threads (rows × per_row) writes one rotated pair (channels i and i + rotary_dim / 2)
// or, past the rotary_dim / 2 pairs of a row, one channel beyond rotary_dim. Indices are
// 32-bit (the host checks that they fit): 64-bit division costs a small kernel several times
// its memory traffic.
#define LINCAL_GEOMETRY        \
  struct Geometry {            \
    long long x_stride[3];     \
    long long table_stride[3]; \
    long long out_stride[3];   \
    unsigned size[3];          \
    unsigned count;            \
    unsigned per_row;          \
    int head_dim;              \
    int rotary_dim;            \
  };
LINCAL_GEOMETRY
#define LINCAL_TEXT(...) #__VA_ARGS__
#define LINCAL_STRING(...) LINCAL_TEXT(__VA_ARGS__)

// The kernels' source. Storage types are plain integers and conversions are written out, so
// the program needs no CUDA headers. `round` gives a float the value it has once stored.
const std::string kSource = LINCAL_STRING(LINCAL_GEOMETRY) R"(
struct F32 {
  typedef float storage;
  static __device__ float load(float v) { return v; }
  static __device__ float store(float v) { return v; }
  static __device__ float round(float v) { return v; }
};
struct BF16 {
  typedef unsigned short storage;
  static __device__ float load(unsigned short v) { return __uint_as_float((unsigned)v << 16); }
  static __device__ unsigned short store(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // nearest, ties to even
  }
  static __device__ float round(float v) { return load(store(v)); }
};
struct F16 {
  typedef unsigned short storage;
  static __device__ float load(unsigned short v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
  }
  static __device__ unsigned short store(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
  }
  static __device__ float round(float v) { return load(store(v)); }
};

// Forward: out = x·cos + roll(x, half)·signed_sin, each product and the sum rounded as
// PyTorch's element-wise kernels round them. Backward (the same function's transpose, as
// autograd forms it): grad_x = g·cos + roll(g·signed_sin, -half).
template <class T>
__device__ void rotary(const typename T::storage* x, const typename T::storage* cos,
                       const typename T::storage* sin, typename T::storage* out,
                       Geometry g, int backward) {
  const int half = g.rotary_dim / 2;
  const unsigned index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index >= g.count) return;
  unsigned row = index / g.per_row;
  const int k = (int)(index - row * g.per_row);
  const long long i2 = row % g.size[2];
  row /= g.size[2];
  const long long i1 = row % g.size[1], i0 = row / g.size[1];
  const typename T::storage* xr = x + i0 * g.x_stride[0] + i1 * g.x_stride[1] + i2 * g.x_stride[2];
  typename T::storage* o = out + i0 * g.out_stride[0] + i1 * g.out_stride[1] + i2 * g.out_stride[2];
  if (k >= half) {
    const int channel = g.rotary_dim + (k - half);
    o[channel] = xr[channel];
    return;
  }
  const long long t = i0 * g.table_stride[0] + i1 * g.table_stride[1] + i2 * g.table_stride[2];
  const float a = T::load(xr[k]), b = T::load(xr[k + half]);
  const float cos_a = T::load(cos[t + k]), cos_b = T::load(cos[t + k + half]);
  float sin_a = T::load(sin[t + k]), sin_b = T::load(sin[t + k + half]);
  if (backward) {
    const float swap = sin_a;
    sin_a = sin_b;
    sin_b = swap;
  }
  o[k] = T::store(T::round(a * cos_a) + T::round(b * sin_a));
  o[k + half] = T::store(T::round(b * cos_b) + T::round(a * sin_b));
}

#define LINCAL_ROTARY(NAME, T)                                                           \
  extern "C" __global__ void NAME(const T::storage* x, const T::storage* cos,            \
                                  const T::storage* sin, T::storage* out, Geometry g,    \
                                  int backward) {                                        \
    rotary<T>(x, cos, sin, out, g, backward);                                            \
  }
LINCAL_ROTARY(lincal_rotary_f32, F32)
LINCAL_ROTARY(lincal_rotary_bf16, BF16)
LINCAL_ROTARY(lincal_rotary_f16, F16)
)";

// The module of kSource for one device, compiled for its architecture on first use.
CUmodule module_for(const at::Device& device) {
  static std::mutex mutex;
  static std::map<int, CUmodule> modules;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = modules.find(device.index());
  if (found != modules.end()) return found->second;

  CUdevice handle = 0;
  int major = 0, minor = 0;
  check(driver().device_get(&handle, device.index()), "cuDeviceGet");
  check(driver().device_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle),
        "cuDeviceGetAttribute");
  check(driver().device_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle),
        "cuDeviceGetAttribute");
  const Nvrtc& api = nvrtc();
  std::string arch = "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor);
  const char* options[] = {arch.c_str(), "--fmad=false", "--std=c++17"};
  nvrtcProgram program = nullptr;
  auto nvrtc_check = [&](nvrtcResult result, const char* what) {
    if (result == 0) return;
    std::string message = std::string(what) + ": " + api.error_string(result);
    size_t size = 0;
    if (program != nullptr && api.log_size(program, &size) == 0 && size > 1) {
      std::string log(size, '\0');
      api.log(program, log.data());
      message += "\n" + log;
    }
    if (program != nullptr) api.destroy(&program);
    throw std::runtime_error(message);
  };
  nvrtc_check(api.create(&program, kSource.c_str(), "lincal_kernels.cu", 0, nullptr, nullptr),
              "nvrtcCreateProgram");
  nvrtc_check(api.compile(program, 3, options), "compiling lincal's CUDA kernels");
  size_t size = 0;
  nvrtc_check(api.cubin_size(program, &size), "nvrtcGetCUBINSize");
  std::vector<char> cubin(size);
  nvrtc_check(api.cubin(program, cubin.data()), "nvrtcGetCUBIN");
  api.destroy(&program);

  CUmodule module = nullptr;
  check(driver().module_load_data(&module, cubin.data()), "loading lincal's CUDA kernels");
  modules.emplace(device.index(), module);
  return module;
}

CUfunction function(const at::Device& device, const char* name) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::string>, CUfunction> functions;
  CUmodule module = module_for(device);
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(static_cast<int>(device.index()), std::string(name));
  auto found = functions.find(key);
  if (found != functions.end()) return found->second;
  CUfunction fn = nullptr;
  check(driver().module_get_function(&fn, module, name), name);
  functions.emplace(key, fn);
  return fn;
}

// Whether the rotary kernel takes these inputs; where it does not, the caller runs PyTorch's
// operations for this call.
bool rotary_takes(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (x.dim() != 4 || cos.dim() != 4 || sin.dim() != 4 || !x.is_cuda()) return false;
  if (cos.device() != x.device() || sin.device() != x.device()) return false;
  const auto kind = x.scalar_type();
  if (kind != at::kFloat && kind != at::kBFloat16 && kind != at::kHalf) return false;
  if (cos.scalar_type() != kind || sin.scalar_type() != kind) return false;
  // The tables are constants to the autograd function: it forms no gradient for them.
  if (cos.requires_grad() || sin.requires_grad()) return false;
  const int64_t rotary_dim = cos.size(3), head_dim = x.size(3);
  if (rotary_dim % 2 != 0 || rotary_dim > head_dim || sin.sizes() != cos.sizes()) return false;
  for (int d = 0; d < 3; ++d)
    if (cos.size(d) != x.size(d) && cos.size(d) != 1) return false;
  if (cos.stride(3) != 1 || cos.strides() != sin.strides()) return false;
  const int64_t pairs = x.size(0) * x.size(1) * x.size(2) * (rotary_dim / 2 + head_dim - rotary_dim);
  return pairs <= std::numeric_limits<int32_t>::max();
}

// Launches the rotary kernel (see kSource) on inputs `rotary_takes` (or gradients shaped like
// them) and returns its output, a new contiguous tensor shaped like `x`.
at::Tensor rotate(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin,
                  bool backward) {
  TORCH_CHECK(rotary_takes(x_in, cos, sin), "rotary: inputs the kernel does not take");
  const char* name = nullptr;
  switch (x_in.scalar_type()) {
    case at::kFloat: name = "lincal_rotary_f32"; break;
    case at::kBFloat16: name = "lincal_rotary_bf16"; break;
    case at::kHalf: name = "lincal_rotary_f16"; break;
    default: TORCH_CHECK(false, "rotary: no kernel for ", x_in.scalar_type());
  }
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const int64_t rotary_dim = cos.size(3), head_dim = x.size(3);
  std::vector<int64_t> table_shape(x.sizes().begin(), x.sizes().end());
  table_shape[3] = rotary_dim;
  const at::Tensor cos_view = cos.expand(table_shape), sin_view = sin.expand(table_shape);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t per_row = rotary_dim / 2 + (head_dim - rotary_dim);
  const int64_t count = x.size(0) * x.size(1) * x.size(2) * per_row;
  if (count == 0) return out;

  Geometry geometry{};
  for (int d = 0; d < 3; ++d) {
    geometry.size[d] = static_cast<unsigned>(x.size(d));
    geometry.x_stride[d] = x.stride(d);
    geometry.table_stride[d] = cos_view.stride(d);
    geometry.out_stride[d] = out.stride(d);
  }
  geometry.count = static_cast<unsigned>(count);
  geometry.per_row = static_cast<unsigned>(per_row);
  geometry.head_dim = static_cast<int>(head_dim);
  geometry.rotary_dim = static_cast<int>(rotary_dim);

  c10::DeviceGuard guard(x.device());
  // As PyTorch's own runtime-compiled kernels do before each launch: a thread that has not
  // used this device yet may have no current driver context.
  at::cuda::jit::initializeCudaContext();
  CUfunction fn = function(x.device(), name);
  const void* x_ptr = x.data_ptr();
  const void* cos_ptr = cos_view.data_ptr();
  const void* sin_ptr = sin_view.data_ptr();
  void* out_ptr = out.data_ptr();
  int backward_flag = backward ? 1 : 0;
  void* args[] = {&x_ptr, &cos_ptr, &sin_ptr, &out_ptr, &geometry, &backward_flag};
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>((count + threads - 1) / threads);
  auto stream = reinterpret_cast<CUstream>(c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  check(driver().launch(fn, blocks, 1, 1, threads, 1, 1, 0, stream, args, nullptr),
        "launching the rotary kernel");
  return out;
}

// Autograd sees the rotation as one operation: the backward pass is one kernel too, and
// nothing but the tables is saved for it.
struct Rotary : public torch::autograd::Function<Rotary> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotate(x, cos, sin, false);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], true), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Rotary embedding of `x` (a torch::Tensor*, [d0, d1, d2, head_dim]) with the cos and signed
// sine tables (broadcastable to [d0, d1, d2, rotary_dim]); see kSource. Returns a new
// torch::Tensor* that autograd can differentiate (first-order), or null: with `*unsupported`
// set where the kernel does not take these inputs, else with the error in `error`.
void* lincal_rotary(void* x, void* cos, void* signed_sin, int* unsupported, char* error,
                    size_t capacity) {
  at::Tensor* out = nullptr;
  lincal_shim_try(error, capacity, [&] {
    const auto& x_tensor = *static_cast<at::Tensor*>(x);
    const auto& cos_tensor = *static_cast<at::Tensor*>(cos);
    const auto& sin_tensor = *static_cast<at::Tensor*>(signed_sin);
    *unsupported = rotary_takes(x_tensor, cos_tensor, sin_tensor) ? 0 : 1;
    if (*unsupported == 0) out = new at::Tensor(Rotary::apply(x_tensor, cos_tensor, sin_tensor));
  });
  return out;
}

}  // extern "C"
