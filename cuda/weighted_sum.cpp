// weighted_sum: out = sum_k w[k] * xs[k], the DARTS mixed op (Liu et al. 2019, eq. 1), and its backward
// grad_xs[k] = w[k] * g, grad_w[k] = sum(g * xs[k]). Schema and CPU kernels; the CUDA kernels are in
// weighted_sum.cu. The plain-torch reference is mdarts_rs.ops._ref.weighted_sum_ref.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "weighted_sum.h"

namespace mdarts {

void check_weighted_sum_args(const at::TensorList xs, const at::Tensor& w) {
  TORCH_CHECK(!xs.empty(), "weighted_sum: needs at least one input tensor");
  TORCH_CHECK(w.dim() == 1, "weighted_sum: w must be 1-D, got ", w.dim(), " dimensions");
  TORCH_CHECK(w.size(0) == static_cast<int64_t>(xs.size()), "weighted_sum: ", xs.size(),
              " inputs but ", w.size(0), " weights");
  for (size_t k = 0; k < xs.size(); ++k) {
    TORCH_CHECK(xs[k].sizes() == xs[0].sizes(), "weighted_sum: xs[", k, "] has shape ", xs[k].sizes(),
                " but xs[0] has ", xs[0].sizes());
    TORCH_CHECK(xs[k].scalar_type() == xs[0].scalar_type(), "weighted_sum: xs[", k, "] is ",
                xs[k].scalar_type(), " but xs[0] is ", xs[0].scalar_type());
    TORCH_CHECK(xs[k].device() == w.device(), "weighted_sum: xs[", k, "] is on ", xs[k].device(),
                " but w is on ", w.device());
  }
  TORCH_CHECK(at::isFloatingType(xs[0].scalar_type()), "weighted_sum: inputs must be floating point, got ",
              xs[0].scalar_type());
}

std::vector<at::Tensor> dense_inputs(const at::TensorList xs) {
  // Inputs that share one dense layout (NCHW-contiguous or channels-last alike) are read as flat buffers
  // in memory order; anything else is made contiguous first.
  bool same = xs[0].is_non_overlapping_and_dense();
  for (const auto& x : xs) same = same && x.strides() == xs[0].strides();
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(same ? x : x.contiguous());
  return out;
}

BackwardSetup prepare_backward(const at::Tensor& grad, const at::TensorList xs, const at::Tensor& w, bool need_xs,
                               bool need_w) {
  check_weighted_sum_args(xs, w);
  TORCH_CHECK(grad.sizes() == xs[0].sizes(), "weighted_sum_backward: grad has shape ", grad.sizes(),
              " but the inputs have ", xs[0].sizes());
  std::vector<at::Tensor> all(xs.begin(), xs.end());
  all.push_back(grad);
  BackwardSetup s;
  s.xs = dense_inputs(all);
  s.g = s.xs.back();
  s.xs.pop_back();
  if (need_xs) {
    for (size_t k = 0; k < s.xs.size(); ++k) s.grad_xs.push_back(at::empty_like(s.g));
  }
  s.grad_w = need_w ? at::zeros_like(w) : at::empty({0}, w.options());
  return s;
}

namespace {

at::Tensor weighted_sum_cpu(at::TensorList xs_in, const at::Tensor& w_in) {
  check_weighted_sum_args(xs_in, w_in);
  auto xs = dense_inputs(xs_in);
  auto out = at::empty_like(xs[0]);
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(xs.size());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    std::vector<const scalar_t*> ptrs(K);
    for (int64_t k = 0; k < K; ++k) ptrs[k] = xs[k].const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += wp[k] * static_cast<acc_t>(ptrs[k][i]);
        op[i] = static_cast<scalar_t>(s);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(const at::Tensor& grad_in,
                                                                           at::TensorList xs_in,
                                                                           const at::Tensor& w_in, bool need_xs,
                                                                           bool need_w) {
  // Named references rather than structured bindings: lambdas capture those only from C++20 on.
  BackwardSetup setup = prepare_backward(grad_in, xs_in, w_in, need_xs, need_w);
  const at::Tensor& g = setup.g;
  const std::vector<at::Tensor>& dense = setup.xs;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  at::Tensor& grad_w = setup.grad_w;
  const int64_t n = g.numel();
  const int64_t K = static_cast<int64_t>(dense.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    if (need_xs && n > 0) {
      std::vector<scalar_t*> outs(K);
      for (int64_t k = 0; k < K; ++k) outs[k] = grad_xs[k].data_ptr<scalar_t>();
      at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const acc_t gi = static_cast<acc_t>(gp[i]);
          for (int64_t k = 0; k < K; ++k) outs[k][i] = static_cast<scalar_t>(wp[k] * gi);
        }
      });
    }
    if (need_w && n > 0) {
      // One pass over g for all K dot products; fixed chunks summed in order, so the result does not
      // depend on the thread count.
      constexpr int64_t chunk = 16384;
      const int64_t chunks = (n + chunk - 1) / chunk;
      std::vector<double> partial(chunks * K, 0.0);
      std::vector<const scalar_t*> ptrs(K);
      for (int64_t k = 0; k < K; ++k) ptrs[k] = dense[k].const_data_ptr<scalar_t>();
      at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t c = cb; c < ce; ++c) {
          const int64_t lo = c * chunk, hi = std::min(n, lo + chunk);
          for (int64_t k = 0; k < K; ++k) {
            double s = 0;
            const scalar_t* x = ptrs[k];
            for (int64_t i = lo; i < hi; ++i) s += static_cast<double>(gp[i]) * static_cast<double>(x[i]);
            partial[c * K + k] = s;
          }
        }
      });
      std::vector<double> total(K, 0.0);
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t k = 0; k < K; ++k) total[k] += partial[c * K + k];
      auto tw = at::tensor(total, at::TensorOptions().dtype(at::kDouble));
      grad_w.copy_(tw);
    }
  });
  return {grad_xs, grad_w};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdarts, m) {
  m.def("weighted_sum(Tensor[] xs, Tensor w) -> Tensor");
  m.def(
      "weighted_sum_backward(Tensor grad, Tensor[] xs, Tensor w, bool need_xs, bool need_w) -> (Tensor[], "
      "Tensor)");
}

TORCH_LIBRARY_IMPL(mdarts, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace mdarts
