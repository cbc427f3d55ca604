// CUDA kernels of weighted_sum (schema and CPU kernels in weighted_sum.cpp).
//
// Forward: one pass over the K inputs, 16-byte vector loads when every buffer allows them, weights read
// from device memory (no host synchronisation). Backward: one pass over g that writes every needed
// grad_xs[k] = w[k]*g and accumulates the K dot products sum(g*xs[k]) per block; a second tiny kernel
// sums the block partials in a fixed order, so grad_w is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "weighted_sum.h"

namespace mdarts {
namespace {

constexpr int kMaxK = 16;     // inputs per launch; more are handled in chunks
constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // bounds the partial-sum buffer of the backward

template <typename T>
struct Ptrs {
  const T* x[kMaxK];
};

template <typename T>
struct OutPtrs {
  T* x[kMaxK];
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename scalar_t, typename acc_t, int V>
__global__ void weighted_sum_fwd_kernel(Ptrs<scalar_t> xs, const acc_t* __restrict__ w, int k0, int K, int64_t nvec,
                                        scalar_t* __restrict__ out, bool accumulate) {
  __shared__ acc_t ws[kMaxK];
  if (threadIdx.x < K) ws[threadIdx.x] = w[k0 + threadIdx.x];
  __syncthreads();
  using VecT = Vec<scalar_t, V>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    acc_t s[V];
    if (accumulate) {
      VecT o = reinterpret_cast<const VecT*>(out)[i];
#pragma unroll
      for (int j = 0; j < V; ++j) s[j] = static_cast<acc_t>(o.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) s[j] = acc_t(0);
    }
    for (int k = 0; k < K; ++k) {
      VecT x = reinterpret_cast<const VecT*>(xs.x[k])[i];
      const acc_t wk = ws[k];
#pragma unroll
      for (int j = 0; j < V; ++j) s[j] += wk * static_cast<acc_t>(x.v[j]);
    }
    VecT o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = static_cast<scalar_t>(s[j]);
    reinterpret_cast<VecT*>(out)[i] = o;
  }
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename scalar_t, typename acc_t, int V>
__global__ void weighted_sum_bwd_kernel(const scalar_t* __restrict__ g, Ptrs<scalar_t> xs, OutPtrs<scalar_t> gxs,
                                        const acc_t* __restrict__ w, int k0, int K, int64_t nvec, bool need_xs,
                                        bool need_w, acc_t* __restrict__ partial /* (gridDim.x, K) */) {
  __shared__ acc_t ws[kMaxK];
  __shared__ acc_t red[kThreads / 32][kMaxK];
  if (threadIdx.x < K) ws[threadIdx.x] = w[k0 + threadIdx.x];
  __syncthreads();
  using VecT = Vec<scalar_t, V>;
  acc_t dot[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) dot[k] = acc_t(0);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    VecT gv = reinterpret_cast<const VecT*>(g)[i];
    acc_t ga[V];
#pragma unroll
    for (int j = 0; j < V; ++j) ga[j] = static_cast<acc_t>(gv.v[j]);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k >= K) break;
      if (need_xs) {
        VecT o;
#pragma unroll
        for (int j = 0; j < V; ++j) o.v[j] = static_cast<scalar_t>(ws[k] * ga[j]);
        reinterpret_cast<VecT*>(gxs.x[k])[i] = o;
      }
      if (need_w) {
        VecT x = reinterpret_cast<const VecT*>(xs.x[k])[i];
#pragma unroll
        for (int j = 0; j < V; ++j) dot[k] += ga[j] * static_cast<acc_t>(x.v[j]);
      }
    }
  }
  if (!need_w) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k >= K) break;
    const acc_t v = warp_sum(dot[k]);
    if (lane == 0) red[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    acc_t s = 0;
    for (int wi = 0; wi < kThreads / 32; ++wi) s += red[wi][threadIdx.x];
    partial[blockIdx.x * K + threadIdx.x] = s;
  }
}

// Sum the block partials of each k in block order (deterministic).
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, int blocks, int K, acc_t* __restrict__ out) {
  const int k = threadIdx.x;
  if (k >= K) return;
  acc_t s = 0;
  for (int b = 0; b < blocks; ++b) s += partial[b * K + k];
  out[k] += s;
}

template <typename scalar_t>
int vector_width(const std::vector<const void*>& ptrs, int64_t n) {
  constexpr int V = 16 / sizeof(scalar_t);
  if (V <= 1 || n % V != 0) return 1;
  for (auto p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return 1;
  }
  return V;
}

int multiprocessors() {
  // ATen's device-properties helper pulls in cuBLAS/cuSPARSE headers; the runtime query needs none.
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

int grid_for(int64_t nvec) {
  const int sms = multiprocessors();
  const int64_t want = (nvec + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, std::min(kMaxBlocks, sms * 8))));
}

at::Tensor weighted_sum_cuda(at::TensorList xs_in, const at::Tensor& w_in) {
  check_weighted_sum_args(xs_in, w_in);
  TORCH_CHECK(w_in.is_cuda(), "weighted_sum: w must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(w_in.device());
  auto xs = dense_inputs(xs_in);
  auto out = at::empty_like(xs[0]);
  const int64_t n = out.numel();
  const int K = static_cast<int>(xs.size());
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::vector<const void*> all{out.data_ptr()};
    for (auto& x : xs) all.push_back(x.const_data_ptr());
    const int V = vector_width<scalar_t>(all, n);
    for (int k0 = 0; k0 < K; k0 += kMaxK) {
      const int kc = std::min(kMaxK, K - k0);
      Ptrs<scalar_t> p{};
      for (int k = 0; k < kc; ++k) p.x[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      const int64_t nvec = n / V;
      const int grid = grid_for(nvec);
      if (V == 16 / static_cast<int>(sizeof(scalar_t)) && V > 1) {
        weighted_sum_fwd_kernel<scalar_t, acc_t, 16 / sizeof(scalar_t)><<<grid, kThreads, 0, stream>>>(
            p, w.const_data_ptr<acc_t>(), k0, kc, nvec, out.data_ptr<scalar_t>(), k0 > 0);
      } else {
        weighted_sum_fwd_kernel<scalar_t, acc_t, 1><<<grid, kThreads, 0, stream>>>(
            p, w.const_data_ptr<acc_t>(), k0, kc, nvec, out.data_ptr<scalar_t>(), k0 > 0);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(const at::Tensor& grad_in,
                                                                            at::TensorList xs_in,
                                                                            const at::Tensor& w_in, bool need_xs,
                                                                            bool need_w) {
  const c10::cuda::CUDAGuard guard(w_in.device());
  // Named references rather than structured bindings: lambdas capture those only from C++20 on.
  BackwardSetup setup = prepare_backward(grad_in, xs_in, w_in, need_xs, need_w);
  const at::Tensor& g = setup.g;
  const std::vector<at::Tensor>& dense = setup.xs;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  at::Tensor& grad_w = setup.grad_w;
  const int64_t n = g.numel();
  const int K = static_cast<int>(dense.size());
  if (n == 0 || (!need_xs && !need_w)) return {grad_xs, grad_w};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    auto w = w_in.to(acc_type).contiguous();
    auto gw_acc = at::zeros({K}, w_in.options().dtype(acc_type));
    std::vector<const void*> ptrs{g.const_data_ptr()};
    for (auto& x : dense) ptrs.push_back(x.const_data_ptr());
    for (auto& x : grad_xs) ptrs.push_back(x.data_ptr());
    const int V = vector_width<scalar_t>(ptrs, n);
    const int64_t nvec = n / V;
    const int grid = grid_for(nvec);
    auto partial = need_w ? at::empty({grid, kMaxK}, w.options()) : at::empty({0}, w.options());
    for (int k0 = 0; k0 < K; k0 += kMaxK) {
      const int kc = std::min(kMaxK, K - k0);
      Ptrs<scalar_t> xp{};
      OutPtrs<scalar_t> gp{};
      for (int k = 0; k < kc; ++k) {
        xp.x[k] = dense[k0 + k].const_data_ptr<scalar_t>();
        if (need_xs) gp.x[k] = grad_xs[k0 + k].data_ptr<scalar_t>();
      }
      acc_t* part = need_w ? partial.data_ptr<acc_t>() : nullptr;
      if (V > 1) {
        weighted_sum_bwd_kernel<scalar_t, acc_t, 16 / sizeof(scalar_t)><<<grid, kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), xp, gp, w.const_data_ptr<acc_t>(), k0, kc, nvec, need_xs, need_w, part);
      } else {
        weighted_sum_bwd_kernel<scalar_t, acc_t, 1><<<grid, kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), xp, gp, w.const_data_ptr<acc_t>(), k0, kc, nvec, need_xs, need_w, part);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_w) {
        sum_partials_kernel<acc_t><<<1, 32, 0, stream>>>(part, grid, kc, gw_acc.data_ptr<acc_t>() + k0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (need_w) grad_w.copy_(gw_acc);
  });
  return {grad_xs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdarts, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace mdarts
