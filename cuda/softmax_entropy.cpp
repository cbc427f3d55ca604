// softmax_entropy: p = softmax(alpha) per row and h = -sum_k p_k ln p_k per row (Li, Chen, Sun 2021,
// eq. 6), with the fused backward
//   d/d alpha_j = p_j (gp_j - sum_k p_k gp_k) - gh p_j (ln p_j + h),
// where ln p_j = (alpha_j - max alpha) - ln sum exp(alpha - max alpha) stays finite when p_j underflows to 0. Schema and CPU kernels;
// the CUDA kernels are in softmax_entropy.cu. Reference: mdarts_rs.ops._ref.softmax_entropy_ref.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace mdarts {

void check_softmax_entropy_args(const at::Tensor& alpha) {
  TORCH_CHECK(alpha.dim() == 2, "softmax_entropy: alpha must be (E, K), got ", alpha.dim(), " dimensions");
  TORCH_CHECK(alpha.size(1) > 0, "softmax_entropy: alpha needs at least one column");
  TORCH_CHECK(at::isFloatingType(alpha.scalar_type()), "softmax_entropy: alpha must be floating point, got ",
              alpha.scalar_type());
}

namespace {

// The row maximum and ln sum exp(alpha - max): ln p_k = (alpha_k - max) - ln z, exact for the largest entries.
template <typename scalar_t, typename acc_t>
void row_norm(const scalar_t* row, int64_t K, acc_t& mx, acc_t& logz) {
  mx = -std::numeric_limits<acc_t>::infinity();
  for (int64_t k = 0; k < K; ++k) mx = std::max(mx, static_cast<acc_t>(row[k]));
  acc_t z = 0;
  for (int64_t k = 0; k < K; ++k) z += std::exp(static_cast<acc_t>(row[k]) - mx);
  logz = std::log(z);
}

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
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* row = a + e * K;
        acc_t mx, logz;
        row_norm<scalar_t, acc_t>(row, K, mx, logz);
        acc_t ent = 0;
        for (int64_t k = 0; k < K; ++k) {
          const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
          const acc_t pk = std::exp(logp);
          pp[e * K + k] = static_cast<scalar_t>(pk);
          ent -= pk * logp;
        }
        hp[e] = static_cast<scalar_t>(ent);
      }
    });
  });
  return {p, h};
}

at::Tensor softmax_entropy_backward_cpu(const at::Tensor& grad_p_in, const at::Tensor& grad_h_in,
                                        const at::Tensor& alpha_in) {
  check_softmax_entropy_args(alpha_in);
  TORCH_CHECK(grad_p_in.sizes() == alpha_in.sizes(), "softmax_entropy_backward: grad_p has shape ",
              grad_p_in.sizes(), " but alpha has ", alpha_in.sizes());
  TORCH_CHECK(grad_h_in.dim() == 1 && grad_h_in.size(0) == alpha_in.size(0),
              "softmax_entropy_backward: grad_h must have shape (", alpha_in.size(0), ",), got ", grad_h_in.sizes());
  auto alpha = alpha_in.contiguous();
  auto gp = grad_p_in.to(alpha.scalar_type()).contiguous();
  auto gh = grad_h_in.to(alpha.scalar_type()).contiguous();
  const int64_t E = alpha.size(0), K = alpha.size(1);
  auto grad_alpha = at::empty_like(alpha);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "softmax_entropy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    const scalar_t* g = gp.const_data_ptr<scalar_t>();
    const scalar_t* ghp = gh.const_data_ptr<scalar_t>();
    scalar_t* out = grad_alpha.data_ptr<scalar_t>();
    at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* row = a + e * K;
        acc_t mx, logz;
        row_norm<scalar_t, acc_t>(row, K, mx, logz);
        acc_t dot = 0, ent = 0;
        for (int64_t k = 0; k < K; ++k) {
          const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
          const acc_t pk = std::exp(logp);
          dot += pk * static_cast<acc_t>(g[e * K + k]);
          ent -= pk * logp;
        }
        const acc_t ghe = static_cast<acc_t>(ghp[e]);
        for (int64_t k = 0; k < K; ++k) {
          const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
          const acc_t pk = std::exp(logp);
          out[e * K + k] = static_cast<scalar_t>(pk * (static_cast<acc_t>(g[e * K + k]) - dot) - ghe * pk * (logp + ent));
        }
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
