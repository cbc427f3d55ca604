// CUDA kernels of softmax_entropy (schema, CPU kernels and the gradient formula in softmax_entropy.cpp).
// α tables are tiny (14 × 8 per table), so one thread handles one row; what matters is launching one
// kernel per table on the current stream with no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "softmax_entropy.h"

namespace mdarts {
namespace {

constexpr int kThreads = 128;

template <typename scalar_t, typename acc_t>
__global__ void softmax_entropy_fwd_kernel(const scalar_t* __restrict__ a, int64_t E, int64_t K,
                                           scalar_t* __restrict__ p, scalar_t* __restrict__ h) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < E) row::forward<scalar_t, acc_t>(a + e * K, K, p + e * K, h + e);
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_entropy_bwd_kernel(const scalar_t* __restrict__ gp, const scalar_t* __restrict__ gh,
                                           const scalar_t* __restrict__ a, int64_t E, int64_t K,
                                           scalar_t* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < E) row::backward<scalar_t, acc_t>(a + e * K, gp + e * K, static_cast<acc_t>(gh[e]), K, out + e * K);
}

std::tuple<at::Tensor, at::Tensor> softmax_entropy_cuda(const at::Tensor& alpha_in) {
  check_softmax_entropy_args(alpha_in);
  const c10::cuda::CUDAGuard guard(alpha_in.device());
  auto alpha = alpha_in.contiguous();
  const int64_t E = alpha.size(0), K = alpha.size(1);
  auto p = at::empty_like(alpha);
  auto h = at::empty({E}, alpha.options());
  if (E == 0) return {p, h};
  const int blocks = static_cast<int>((E + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "softmax_entropy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    softmax_entropy_fwd_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        alpha.const_data_ptr<scalar_t>(), E, K, p.data_ptr<scalar_t>(), h.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {p, h};
}

at::Tensor softmax_entropy_backward_cuda(const at::Tensor& grad_p, const at::Tensor& grad_h, const at::Tensor& alpha_in) {
  const c10::cuda::CUDAGuard guard(alpha_in.device());
  const SoftmaxEntropyGrads in = prepare_softmax_entropy_backward(grad_p, grad_h, alpha_in);
  const at::Tensor& alpha = in.alpha;
  const int64_t E = alpha.size(0), K = alpha.size(1);
  auto out = at::empty_like(alpha);
  if (E == 0) return out;
  const int blocks = static_cast<int>((E + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, alpha.scalar_type(), "softmax_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    softmax_entropy_bwd_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.gp.const_data_ptr<scalar_t>(), in.gh.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(), E, K,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mdarts, CUDA, m) {
  m.impl("softmax_entropy", &softmax_entropy_cuda);
  m.impl("softmax_entropy_backward", &softmax_entropy_backward_cuda);
}

}  // namespace mdarts
