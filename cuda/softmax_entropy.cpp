// softmax_entropy: p = softmax(alpha) per row and h = -sum_k p_k ln p_k per row (Li, Chen, Sun 2021,
// eq. 6), with the fused backward
//   d/d alpha_j = p_j (gp_j - sum_k p_k gp_k) - gh p_j (ln p_j + h),
// where ln p_j = (alpha_j - max alpha) - ln sum exp(alpha - max alpha) stays finite when p_j underflows to 0. Schema and CPU kernels;
// the CUDA kernels are in softmax_entropy.cu. Reference: mdarts_rs.ops._ref.softmax_entropy_ref.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "softmax_entropy.h"

namespace mdarts {

void check_softmax_entropy_args(const at::Tensor& alpha) {
  TORCH_CHECK(alpha.dim() == 2, "softmax_entropy: alpha must be (E, K), got ", alpha.dim(), " dimensions");
  TORCH_CHECK(alpha.size(1) > 0, "softmax_entropy: alpha needs at least one column");
  TORCH_CHECK(at::isFloatingType(alpha.scalar_type()), "softmax_entropy: alpha must be floating point, got ",
              alpha.scalar_type());
}

SoftmaxEntropyGrads prepare_softmax_entropy_backward(const at::Tensor& grad_p, const at::Tensor& grad_h,
                                                     const at::Tensor& alpha) {
  check_softmax_entropy_args(alpha);
  TORCH_CHECK(grad_p.sizes() == alpha.sizes(), "softmax_entropy_backward: grad_p has shape ", grad_p.sizes(),
              " but alpha has ", alpha.sizes());
  TORCH_CHECK(grad_h.dim() == 1 && grad_h.size(0) == alpha.size(0), "softmax_entropy_backward: grad_h must have shape (",
              alpha.size(0), ",), got ", grad_h.sizes());
  return {alpha.contiguous(), grad_p.to(alpha.scalar_type()).contiguous(), grad_h.to(alpha.scalar_type()).contiguous()};
}

namespace {

std::tuple<at::Tensor, at::Tensor> softmax_entropy_cpu(const at::Tensor& alpha_in) {
  check_softmax_entropy_args(alpha_in);
  auto alpha = alpha_in.contiguous();
  const int64_t E = alpha.size(0), K = alpha.size(1);
  auto p = at::empty_like(alpha);
  auto h = at::empty({E}, alpha.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "softmax_entropy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) row::forward<scalar_t, acc_t>(a + e * K, K, pp + e * K, hp + e);
    });
  });
  return {p, h};
}

at::Tensor softmax_entropy_backward_cpu(const at::Tensor& grad_p, const at::Tensor& grad_h, const at::Tensor& alpha_in) {
  const SoftmaxEntropyGrads in = prepare_softmax_entropy_backward(grad_p, grad_h, alpha_in);
  const at::Tensor& alpha = in.alpha;
  const int64_t E = alpha.size(0), K = alpha.size(1);
  auto grad_alpha = at::empty_like(alpha);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "softmax_entropy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    const scalar_t* g = in.gp.const_data_ptr<scalar_t>();
    const scalar_t* ghp = in.gh.const_data_ptr<scalar_t>();
    scalar_t* out = grad_alpha.data_ptr<scalar_t>();
    at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        row::backward<scalar_t, acc_t>(a + e * K, g + e * K, static_cast<acc_t>(ghp[e]), K, out + e * K);
      }
    });
  });
  return grad_alpha;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdarts, m) {
  m.def("softmax_entropy(Tensor alpha) -> (Tensor, Tensor)");
  m.def("softmax_entropy_backward(Tensor grad_p, Tensor grad_h, Tensor alpha) -> Tensor");
}

TORCH_LIBRARY_IMPL(mdarts, CPU, m) {
  m.impl("softmax_entropy", &softmax_entropy_cpu);
  m.impl("softmax_entropy_backward", &softmax_entropy_backward_cpu);
}

}  // namespace mdarts
