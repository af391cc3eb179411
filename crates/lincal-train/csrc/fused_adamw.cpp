// PyTorch's fused AdamW kernel (torch.optim.AdamW(fused=True)), which tch does not bind:
// one pass over parameters, gradients and both moments, on the CPU or a GPU, instead of
// about ten element-wise kernels each reading and writing whole buffers.

#include <ATen/ATen.h>

#include <vector>

#include "shim.h"

extern "C" {

// Updates `count` parameter tensors in place. Each of the arrays holds `count` pointers to
// tch tensors (torch::Tensor*); `steps` are float32 scalars already counting this step.
// Returns 0, or 1 with the error's text in `error`.
int lincal_fused_adamw(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs,
                       void** steps, size_t count, double lr, double beta1, double beta2,
                       double weight_decay, double eps, char* error, size_t capacity) {
  return lincal_shim_try(error, capacity, [&] {
    auto list = [count](void** tensors) {
      std::vector<at::Tensor> out;
      out.reserve(count);
      for (size_t i = 0; i < count; ++i) out.push_back(*static_cast<at::Tensor*>(tensors[i]));
      return out;
    };
    at::_fused_adamw_(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), {},
                      list(steps), lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

}  // extern "C"
