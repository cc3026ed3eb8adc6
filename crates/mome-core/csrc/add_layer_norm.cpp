// Residual add + layer norm as one autograd operation (mome_core::norm).
//
// tch has no custom autograd functions. This file defines one through libtorch's C++
// API (torch::autograd::Function): its forward and backward allocate their outputs
// and hand every tensor to two C functions of the Rust side (mome_core::fused), which
// run mome's CUDA kernels on CUDA tensors and the same arithmetic in libtorch
// operators elsewhere. The forward saves the normalised input (the sum), the row means
// and 1/std, as torch's own layer norm does.
//
// AddLayerNorm: x (the residual [.., d]), y (the branch, same shape), w, b ([d], x's
// kind), eps, the branch's dropout probability p, the output's ScalarType -> (sum in
// x's kind, out); backward dx (x's kind), dy (y's kind), dw, db. With p > 0 the
// forward draws an int64 seed from the device's generator and saves it: the kernels
// hash it with each element's index for the mask, forward and backward alike.
// LayerNormOnly: the same without y -> (out).
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cstdio>
#include <limits>
#include <exception>

extern "C" {
// Tensors in order: x, y, w, b, sum, out, mean, rstd, seed (y and sum may be null; the
// seed, int64 [1], is null without dropout); then eps and the dropout probability.
typedef int (*mome_add_ln_fwd_fn)(const at::Tensor *const *t, double eps, double p, char *err,
                                  size_t err_len);
// Tensors in order: sum, mean, rstd, w, grad_out, grad_sum, dx, dy, dw, db, seed
// (grad_sum, dy and the seed may be null); then the dropout probability.
typedef int (*mome_add_ln_bwd_fn)(const at::Tensor *const *t, double p, char *err,
                                  size_t err_len);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward of both functions below (`y` undefined: a plain layer norm).
variable_list forward_impl(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &y,
                           const at::Tensor &w, const at::Tensor &b, double eps, double p,
                           int64_t out_kind, int64_t fwd, int64_t bwd) {
  const int64_t d = x.size(-1);
  const int64_t rows = x.numel() / d;
  const bool has_y = y.defined();
  auto f32 = x.options().dtype(at::kFloat);
  // Outputs in the caller's shape; the callbacks see [rows, d] views of everything.
  at::Tensor sum = has_y ? at::empty(x.sizes(), x.options()) : at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(static_cast<at::ScalarType>(out_kind)));
  at::Tensor mean = at::empty({rows}, f32);
  at::Tensor rstd = at::empty({rows}, f32);
  at::Tensor x2 = x.view({rows, d});
  at::Tensor y2 = has_y ? y.view({rows, d}) : at::Tensor();
  at::Tensor sum2 = has_y ? sum.view({rows, d}) : at::Tensor();
  at::Tensor out2 = out.view({rows, d});
  // The mask's seed, from the device's default generator (as torch's dropout draws).
  const bool drop = has_y && p > 0.0;
  at::Tensor seed = drop ? at::randint(std::numeric_limits<int64_t>::max(), {1},
                                       x.options().dtype(at::kLong))
                         : at::Tensor();
  const at::Tensor *t[9] = {&x2,  has_y ? &y2 : nullptr, &w, &b, has_y ? &sum2 : nullptr,
                            &out2, &mean, &rstd, drop ? &seed : nullptr};
  char err[1024] = {0};
  if (reinterpret_cast<mome_add_ln_fwd_fn>(fwd)(t, eps, p, err, sizeof err) != 0) {
    TORCH_CHECK(false, "add + layer norm forward: ", err);
  }
  ctx->save_for_backward({has_y ? sum : x, w, mean, rstd, seed});
  ctx->saved_data["bwd"] = bwd;
  ctx->saved_data["p"] = drop ? p : 0.0;
  ctx->saved_data["y_kind"] = has_y ? static_cast<int64_t>(y.scalar_type()) : int64_t(-1);
  ctx->saved_data["out_kind"] = out_kind;
  if (has_y) {
    return {sum, out};
  }
  return {out};
}

// The backward of both: (dx, dy, dw, db), dy undefined without a branch.
std::array<at::Tensor, 4> backward_impl(AutogradContext *ctx, const variable_list &grads) {
  auto saved = ctx->get_saved_variables();
  const at::Tensor &s = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
  const at::Tensor &seed = saved[4];
  const double p = ctx->saved_data["p"].toDouble();
  const int64_t y_kind = ctx->saved_data["y_kind"].toInt();
  const bool has_y = y_kind >= 0;
  const int64_t out_kind = ctx->saved_data["out_kind"].toInt();
  const auto shape = s.sizes();
  const int64_t d = s.size(-1), rows = s.numel() / d;
  at::Tensor s2 = s.view({rows, d});
  at::Tensor g_out = grads[has_y ? 1 : 0];
  at::Tensor g_sum = has_y ? grads[0] : at::Tensor();
  auto out_opts = s.options().dtype(static_cast<at::ScalarType>(out_kind));
  g_out = g_out.defined() ? g_out.reshape({rows, d}).contiguous() : at::zeros({rows, d}, out_opts);
  if (g_sum.defined()) {
    g_sum = g_sum.reshape({rows, d}).contiguous();
  }
  at::Tensor dx = at::empty({rows, d}, s.options());
  at::Tensor dy =
      has_y ? at::empty({rows, d}, s.options().dtype(static_cast<at::ScalarType>(y_kind)))
            : at::Tensor();
  at::Tensor dw = at::empty({d}, w.options());
  at::Tensor db = at::empty({d}, w.options());
  const at::Tensor *t[11] = {&s2, &mean, &rstd, &w, &g_out, g_sum.defined() ? &g_sum : nullptr,
                             &dx, has_y ? &dy : nullptr, &dw, &db,
                             seed.defined() ? &seed : nullptr};
  char err[1024] = {0};
  auto bwd = reinterpret_cast<mome_add_ln_bwd_fn>(ctx->saved_data["bwd"].toInt());
  if (bwd(t, p, err, sizeof err) != 0) {
    TORCH_CHECK(false, "add + layer norm backward: ", err);
  }
  return {dx.view(shape), has_y ? dy.view(shape) : dy, dw, db};
}

// (x + y, LN(x + y)).
struct AddLayerNorm : public torch::autograd::Function<AddLayerNorm> {
  static variable_list forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &y,
                               const at::Tensor &w, const at::Tensor &b, double eps, double p,
                               int64_t out_kind, int64_t fwd, int64_t bwd) {
    return forward_impl(ctx, x, y, w, b, eps, p, out_kind, fwd, bwd);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto g = backward_impl(ctx, grads);
    return {g[0],         g[1],         g[2],         g[3],        at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// (LN(x)).
struct LayerNormOnly : public torch::autograd::Function<LayerNormOnly> {
  static variable_list forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                               const at::Tensor &b, double eps, int64_t out_kind, int64_t fwd,
                               int64_t bwd) {
    return forward_impl(ctx, x, at::Tensor(), w, b, eps, 0.0, out_kind, fwd, bwd);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto g = backward_impl(ctx, grads);
    return {g[0], g[2], g[3], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" {

// out[0] = sum (null without a branch), out[1] = the normalised rows, both new
// tensors owned by the caller (tch's at::Tensor* handles). Returns 0, or -1 with a
// message in `err`.
int mome_add_layer_norm(const at::Tensor *x, const at::Tensor *y, const at::Tensor *w,
                        const at::Tensor *b, double eps, double p, int out_kind,
                        mome_add_ln_fwd_fn fwd,
                        mome_add_ln_bwd_fn bwd, at::Tensor **out, char *err, size_t err_len) {
  try {
    const auto f = reinterpret_cast<int64_t>(fwd), g = reinterpret_cast<int64_t>(bwd);
    if (y) {
      auto r = AddLayerNorm::apply(*x, *y, *w, *b, eps, p, int64_t(out_kind), f, g);
      out[0] = new at::Tensor(r[0]);
      out[1] = new at::Tensor(r[1]);
    } else {
      auto r = LayerNormOnly::apply(*x, *w, *b, eps, int64_t(out_kind), f, g);
      out[0] = nullptr;
      out[1] = new at::Tensor(r[0]);
    }
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return -1;
  }
}

} // extern "C"
