// CUDA kernels of node_mix (schema and CPU kernels in node_mix.cpp).
//
// Forward: one pass writing out[b, e, r], reading each input once per edge that uses it. Backward: one
// pass over the (b, r) columns that reads g[b, :, r] once and writes every needed grad_xs[k]; one pass
// per edge that accumulates the K dot products per block, and a tiny kernel that sums the block partials
// in a fixed order, so grad_w is deterministic. The weights stay in device memory (no host synchronisation).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "node_mix.h"

namespace mdarts {
namespace {

constexpr int kMaxInputs = 16;
constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

template <typename T>
struct InPtrs {
  const T* x[kMaxInputs];
};

template <typename T>
struct OutPtrs {
  T* x[kMaxInputs];
};

template <typename scalar_t, typename acc_t, int KT>
__global__ void node_mix_fwd_kernel(InPtrs<scalar_t> xs, unsigned per_edge, const acc_t* __restrict__ w, int64_t ws0,
                                    int64_t ws1, int64_t n, int64_t R, int k_arg, int64_t total, scalar_t* __restrict__ out) {
  const int K = KT > 0 ? KT : k_arg;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t be = i / R, r = i - be * R;
    const int64_t b = be / n, e = be - b * n;
    acc_t sum = 0;
    for (int k = 0; k < K; ++k) {
      const int64_t row = (per_edge >> k) & 1u ? be : b;
      sum += w[e * ws0 + k * ws1] * static_cast<acc_t>(xs.x[k][row * R + r]);
    }
    out[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename acc_t, int KT>
__global__ void node_mix_grad_xs_kernel(const scalar_t* __restrict__ g, OutPtrs<scalar_t> grads, unsigned per_edge,
                                        const acc_t* __restrict__ w, int64_t ws0, int64_t ws1, int64_t n, int64_t R,
                                        int k_arg, int64_t columns) {
  const int K = KT > 0 ? KT : k_arg;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < columns;
       j += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = j / R, r = j - b * R;
    acc_t shared_sum[kMaxInputs];
    for (int k = 0; k < K; ++k) shared_sum[k] = 0;
    for (int64_t e = 0; e < n; ++e) {
      const int64_t at = (b * n + e) * R + r;
      const acc_t ge = static_cast<acc_t>(g[at]);
      for (int k = 0; k < K; ++k) {
        const acc_t v = w[e * ws0 + k * ws1] * ge;
        if ((per_edge >> k) & 1u) {
          grads.x[k][at] = static_cast<scalar_t>(v);
        } else {
          shared_sum[k] += v;
        }
      }
    }
    for (int k = 0; k < K; ++k) {
      if (!((per_edge >> k) & 1u)) grads.x[k][j] = static_cast<scalar_t>(shared_sum[k]);
    }
  }
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Block (x, e): the K dot products of edge e over a strided share of the B*R columns, into
// partial[(e * gridDim.x + x) * K + k].
template <typename scalar_t, typename acc_t, int KT>
__global__ void node_mix_grad_w_kernel(const scalar_t* __restrict__ g, InPtrs<scalar_t> xs, unsigned per_edge, int64_t n,
                                       int64_t R, int k_arg, int64_t columns, acc_t* __restrict__ partial) {
  const int K = KT > 0 ? KT : k_arg;
  const int64_t e = blockIdx.y;
  acc_t acc[kMaxInputs];
  for (int k = 0; k < K; ++k) acc[k] = 0;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < columns;
       j += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = j / R, r = j - b * R;
    const int64_t at = (b * n + e) * R + r;
    const acc_t ge = static_cast<acc_t>(g[at]);
    for (int k = 0; k < K; ++k) {
      const int64_t src = (per_edge >> k) & 1u ? at : j;
      acc[k] += ge * static_cast<acc_t>(xs.x[k][src]);
    }
  }
  __shared__ acc_t warps[kThreads / 32][kMaxInputs];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k) {
    const acc_t v = warp_sum(acc[k]);
    if (lane == 0) warps[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    acc_t s = 0;
    for (int i = 0; i < kThreads / 32; ++i) s += warps[i][threadIdx.x];
    partial[(e * gridDim.x + blockIdx.x) * K + threadIdx.x] = s;
  }
}

template <typename acc_t, typename w_t>
__global__ void node_mix_grad_w_finish(const acc_t* __restrict__ partial, int blocks, int64_t nK, int K,
                                       w_t* __restrict__ grad_w) {
  const int64_t ek = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ek >= nK) return;
  const int64_t e = ek / K, k = ek - e * K;
  acc_t s = 0;
  for (int i = 0; i < blocks; ++i) s += partial[(e * blocks + i) * K + k];
  grad_w[ek] = static_cast<w_t>(s);
}

// f(std::integral_constant<int, KT>{}) with KT = 7 for a batched node's 7 op outputs, so that the kernels'
// loops over the inputs unroll into registers, and KT = 0 (count read at run time) otherwise.
template <typename F>
void with_input_count(int64_t K, F&& f) {
  if (K == 7) {
    f(std::integral_constant<int, 7>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

unsigned edge_mask(const NodeMixShape& s) {
  unsigned mask = 0;
  for (int64_t k = 0; k < s.K; ++k) mask |= s.per_edge[k] ? (1u << k) : 0u;
  return mask;
}

at::Tensor node_mix_cuda(at::TensorList xs_in, const at::Tensor& w_in) {
  const NodeMixShape s = check_node_mix_args(xs_in, w_in);
  TORCH_CHECK(s.K <= kMaxInputs, "node_mix: at most ", kMaxInputs, " inputs on CUDA, got ", s.K);
  const c10::cuda::CUDAGuard guard(w_in.device());
  auto xs = contiguous_inputs(xs_in);
  auto out = at::empty({s.B, s.n, s.R}, xs[0].options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "node_mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = weights_as(w_in, c10::CppTypeToScalarType<acc_t>::value);
    InPtrs<scalar_t> ptrs{};
    for (int64_t k = 0; k < s.K; ++k) ptrs.x[k] = xs[k].const_data_ptr<scalar_t>();
    with_input_count(s.K, [&](auto kt) {
      node_mix_fwd_kernel<scalar_t, acc_t, decltype(kt)::value><<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          ptrs, edge_mask(s), w.const_data_ptr<acc_t>(), w.stride(0), w.stride(1), s.n, s.R, static_cast<int>(s.K),
          total, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> node_mix_backward_cuda(const at::Tensor& grad_in, at::TensorList xs_in,
                                                                        const at::Tensor& w_in, bool need_xs,
                                                                        bool need_w) {
  const c10::cuda::CUDAGuard guard(w_in.device());
  NodeMixBackward setup = prepare_node_mix_backward(grad_in, xs_in, w_in, need_xs, need_w);
  const NodeMixShape& s = setup.shape;
  TORCH_CHECK(s.K <= kMaxInputs, "node_mix_backward: at most ", kMaxInputs, " inputs on CUDA, got ", s.K);
  const at::Tensor& g = setup.g;
  const std::vector<at::Tensor>& xs = setup.xs;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  at::Tensor& grad_w = setup.grad_w;
  const int64_t columns = s.B * s.R;
  if (columns == 0 || s.n == 0) {  // nothing to read: zero gradients (shared inputs still have elements)
    if (need_w) grad_w.zero_();
    for (auto& t : grad_xs) t.zero_();
    return {grad_xs, grad_w};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned mask = edge_mask(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "node_mix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = weights_as(w_in, c10::CppTypeToScalarType<acc_t>::value);
    if (need_xs) {
      OutPtrs<scalar_t> outs{};
      for (int64_t k = 0; k < s.K; ++k) outs.x[k] = grad_xs[k].data_ptr<scalar_t>();
      with_input_count(s.K, [&](auto kt) {
        node_mix_grad_xs_kernel<scalar_t, acc_t, decltype(kt)::value><<<grid_blocks(columns, kThreads), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), outs, mask, w.const_data_ptr<acc_t>(), w.stride(0), w.stride(1), s.n, s.R,
            static_cast<int>(s.K), columns);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (need_w) {
      InPtrs<scalar_t> ptrs{};
      for (int64_t k = 0; k < s.K; ++k) ptrs.x[k] = xs[k].const_data_ptr<scalar_t>();
      const int blocks = static_cast<int>(std::min<int64_t>((columns + kThreads - 1) / kThreads, kMaxBlocks / 4));
      auto partial = at::empty({s.n * blocks * s.K}, g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      const dim3 grid(blocks, static_cast<unsigned>(s.n));
      with_input_count(s.K, [&](auto kt) {
        node_mix_grad_w_kernel<scalar_t, acc_t, decltype(kt)::value><<<grid, kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), ptrs, mask, s.n, s.R, static_cast<int>(s.K), columns,
            partial.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      // Straight into grad_w (contiguous) when it has the accumulation type, else through a buffer.
      const bool direct = grad_w.scalar_type() == partial.scalar_type();
      auto grad_acc = direct ? grad_w : at::empty({s.n, s.K}, partial.options());
      const int64_t nK = s.n * s.K;
      node_mix_grad_w_finish<acc_t, acc_t><<<static_cast<int>((nK + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), blocks, nK, static_cast<int>(s.K), grad_acc.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (!direct) grad_w.copy_(grad_acc);
    }
  });
  return {grad_xs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdarts, CUDA, m) {
  m.impl("node_mix", &node_mix_cuda);
  m.impl("node_mix_backward", &node_mix_backward_cuda);
}

}  // namespace mdarts
