// Multi-tensor kernels of libtorch's optimizers (mome_core::fused).
//
// tch 0.24 generates no bindings for `_fused_adamw_` and the `_foreach_` ops. These
// C functions call them through ATen's C++ API, as torch.optim.AdamW(fused=True) and
// torch.nn.utils.clip_grad_norm_(foreach=True) do: one multi-tensor kernel over a
// list of tensors instead of several kernels per tensor.
//
// Tensors come in as arrays of `at::Tensor*` (tch's C tensors). Every function
// returns 0 (or a new tensor) on success; on failure it writes a message into `err`
// and returns -1 (or null).
#include <ATen/ATen.h>

#include <cstdio>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(const at::Tensor *const *ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

void write_err(char *err, size_t err_len, const char *msg) {
  if (err != nullptr && err_len > 0) {
    std::snprintf(err, err_len, "%s", msg);
  }
}

// Runs `f`; a C++ exception becomes a message in `err` (libtorch's without its C++
// backtrace) and `false`: nothing may unwind into Rust.
template <typename F>
bool guarded(char *err, size_t err_len, F &&f) {
  try {
    f();
    return true;
  } catch (const c10::Error &e) {
    write_err(err, err_len, e.what_without_backtrace());
  } catch (const std::exception &e) {
    write_err(err, err_len, e.what());
  } catch (...) {
    write_err(err, err_len, "unknown C++ exception");
  }
  return false;
}

}  // namespace

extern "C" {

// One AdamW step (decoupled weight decay, bias correction) over `n` parameters with
// their gradients and moments, all contiguous, of one dtype and on one device:
// `at::_fused_adamw_`. `step` is a 0-d fp32 tensor on that device holding the step
// number (1 for the first step), read by the kernel for the bias corrections.
int mome_fused_adamw(const at::Tensor *const *params, const at::Tensor *const *grads,
                     const at::Tensor *const *exp_avgs, const at::Tensor *const *exp_avg_sqs,
                     size_t n, const at::Tensor *step, double lr, double beta1, double beta2,
                     double weight_decay, double eps, char *err, size_t err_len) {
  bool ok = guarded(err, err_len, [&] {
    auto p = list(params, n);
    auto g = list(grads, n);
    auto m = list(exp_avgs, n);
    auto v = list(exp_avg_sqs, n);
    std::vector<at::Tensor> steps(n, *step);
    at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  });
  return ok ? 0 : -1;
}

// The sum of the squared L2 norms of `n` tensors of one device, as a new 0-d fp32
// tensor on that device: `at::_foreach_norm` (accumulated in fp32), then the sum of
// the squares of the per-tensor norms.
at::Tensor *mome_foreach_sq_norm(const at::Tensor *const *tensors, size_t n, char *err,
                                 size_t err_len) {
  at::Tensor *out = nullptr;
  guarded(err, err_len, [&] {
    auto norms = at::_foreach_norm(list(tensors, n), 2, at::kFloat);
    auto s = at::stack(norms);
    out = new at::Tensor(at::dot(s, s));
  });
  return out;
}

// Multiplies `n` tensors of one device in place by the 0-d tensor `scalar` (on that
// device or the CPU): `at::_foreach_mul_`.
int mome_foreach_mul_(const at::Tensor *const *tensors, size_t n, const at::Tensor *scalar,
                      char *err, size_t err_len) {
  bool ok = guarded(err, err_len, [&] {
    auto ts = list(tensors, n);
    at::_foreach_mul_(ts, *scalar);
  });
  return ok ? 0 : -1;
}

}  // extern "C"
