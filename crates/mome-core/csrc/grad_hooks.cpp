// Gradient-ready hooks for the data-parallel all-reduce (mome_core::dist::overlap).
//
// tch exposes no autograd hooks. This file adds, through libtorch's C++ API, the one
// PyTorch DDP uses (torch/csrc/distributed/c10d/reducer.cpp): a post hook on the
// AccumulateGrad node of a parameter, which runs right after the parameter's
// gradient has been accumulated into `.grad` during backward. The hook calls a C
// function of the Rust side with the parameter's index.
//
// The handle keeps the AccumulateGrad node alive (a variable holds only a weak
// reference to it; without the handle the node, and the hook with it, would be
// recreated by the next forward).
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdio>
#include <exception>
#include <memory>

extern "C" {

typedef void (*mome_grad_ready_fn)(void *ctx, size_t index);

struct mome_grad_hook {
  std::shared_ptr<torch::autograd::Node> accumulator;
  uintptr_t key;
};

// Registers `ready(ctx, index)` to run after the gradient of `param` (a leaf that
// requires grad) is accumulated. Returns null and writes a message into `err` on
// failure.
mome_grad_hook *mome_grad_hook_register(const at::Tensor *param, mome_grad_ready_fn ready,
                                        void *ctx, size_t index, char *err, size_t err_len) {
  try {
    auto accumulator = torch::autograd::impl::grad_accumulator(*param);
    if (!accumulator) {
      std::snprintf(err, err_len, "the tensor does not require grad");
      return nullptr;
    }
    auto key = accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [ready, ctx, index](const torch::autograd::variable_list &outputs,
                            const torch::autograd::variable_list & /*inputs*/) {
          ready(ctx, index);
          return outputs;
        }));
    return new mome_grad_hook{std::move(accumulator), key};
  } catch (const c10::Error &e) {
    std::snprintf(err, err_len, "%s", e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return nullptr;
  } catch (...) {
    std::snprintf(err, err_len, "unknown C++ exception");
    return nullptr;
  }
}

// Removes the hook and frees the handle (null: no-op).
void mome_grad_hook_remove(mome_grad_hook *hook) {
  if (hook == nullptr) {
    return;
  }
  try {
    hook->accumulator->del_post_hook(hook->key);
  } catch (...) {
  }
  delete hook;
}

}  // extern "C"
