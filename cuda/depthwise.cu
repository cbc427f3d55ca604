// CUDA kernels of depthwise_conv (schema and CPU kernels in depthwise.cpp, per-pixel math and the channel orders
// in depthwise.h).
//
// Forward: one block per input plane (b, c) copies the plane into shared memory once and writes its m output
// planes. Input gradient: one block per input plane copies its m output-gradient planes into shared memory and
// writes the plane's gradient. Weight gradient: one block per (output channel, batch share) in which each
// thread sums its output pixels' products for every tap in registers, then a block reduction in a fixed order
// and a sum over the shares (deterministic). Planes too large for shared memory take grid-stride kernels that
// read global memory. Everything runs on the current stream, with no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "depthwise.h"
#include "node_mix.h"

namespace mdarts {
namespace {

constexpr int kThreads = 256;

template <int K, typename scalar_t, typename acc_t>
__global__ void dw_fwd_shared_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ w,
                                     scalar_t* __restrict__ out, bool em, int C, int H, int W, int m, int Ho, int Wo,
                                     int s, int p, int d) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int Hp = H + 2 * p, Wp = W + 2 * p;
  acc_t* pad = reinterpret_cast<acc_t*>(smem);
  acc_t* ws = pad + Hp * Wp;
  const int c = blockIdx.x;
  const int64_t b = blockIdx.y, bc = b * C + c;
  const scalar_t* src = x + bc * H * W;
  dw::fill_padded(pad, src, H, W, p, threadIdx.x, blockDim.x);
  for (int i = threadIdx.x; i < m * K * K; i += blockDim.x) {
    const int e = i / (K * K);
    ws[i] = w[dw::out_channel(em, C, m, c, e) * K * K + (i - e * K * K)];
  }
  __syncthreads();
  const int P = Ho * Wo;
  for (int i = threadIdx.x; i < m * P; i += blockDim.x) {
    const int e = i / P, r = i - e * P;
    const int y = r / Wo, xo = r - y * Wo;
    out[(b * C * m + dw::out_channel(em, C, m, c, e)) * P + r] =
        static_cast<scalar_t>(dw::forward_padded_at<K>(pad, ws + e * K * K, Wp, y, xo, s, d));
  }
}

template <int K, typename scalar_t, typename acc_t>
__global__ void dw_fwd_global_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ w,
                                     scalar_t* __restrict__ out, int64_t total, bool em, int C, int H, int W, int m,
                                     int Ho, int Wo, int s, int p, int d) {
  const int64_t P = static_cast<int64_t>(Ho) * Wo;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bo = i / P, r = i - bo * P;  // bo = b·C·m + o
    const int64_t o = bo % (static_cast<int64_t>(C) * m), b = bo / (static_cast<int64_t>(C) * m);
    const int y = static_cast<int>(r / Wo), xo = static_cast<int>(r % Wo);
    out[i] = static_cast<scalar_t>(
        dw::forward_at<K>(x + (b * C + dw::in_channel(em, C, m, o)) * H * W, w + o * K * K, H, W, y, xo, s, p, d));
  }
}

template <int K, typename scalar_t, typename acc_t>
__global__ void dw_grad_x_shared_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ w,
                                        scalar_t* __restrict__ gx, bool em, int C, int H, int W, int m, int Ho, int Wo,
                                        int s, int p, int d) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int P = Ho * Wo;
  acc_t* gs = reinterpret_cast<acc_t*>(smem);
  acc_t* ws = gs + m * P;
  const int c = blockIdx.x;
  const int64_t b = blockIdx.y, bc = b * C + c;
  for (int i = threadIdx.x; i < m * P; i += blockDim.x) {
    const int e = i / P;
    gs[i] = static_cast<acc_t>(g[(b * C * m + dw::out_channel(em, C, m, c, e)) * P + (i - e * P)]);
  }
  for (int i = threadIdx.x; i < m * K * K; i += blockDim.x) {
    const int e = i / (K * K);
    ws[i] = w[dw::out_channel(em, C, m, c, e) * K * K + (i - e * K * K)];
  }
  __syncthreads();
  scalar_t* dst = gx + bc * H * W;
  for (int i = threadIdx.x; i < H * W; i += blockDim.x) {
    const int y = i / W, xi = i - y * W;
    dst[i] = static_cast<scalar_t>(dw::grad_input_at<K>(gs, P, ws, K * K, m, Ho, Wo, y, xi, s, p, d));
  }
}

template <int K, typename scalar_t, typename acc_t>
__global__ void dw_grad_x_global_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ w,
                                        scalar_t* __restrict__ gx, int64_t total, bool em, int C, int H, int W, int m,
                                        int Ho, int Wo, int s, int p, int d) {
  const int64_t HW = static_cast<int64_t>(H) * W, P = static_cast<int64_t>(Ho) * Wo;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bc = i / HW, r = i - bc * HW;
    const int64_t b = bc / C, c = bc % C;
    const int y = static_cast<int>(r / W), xi = static_cast<int>(r % W);
    const int64_t o0 = dw::out_channel(em, C, m, c, 0), step = em ? C : 1;  // its m copies, one step apart
    gx[i] = static_cast<scalar_t>(dw::grad_input_at<K>(g + (b * C * m + o0) * P, step * P, w + o0 * K * K,
                                                       step * K * K, m, Ho, Wo, y, xi, s, p, d));
  }
}

// partial[share, o, tap] = Σ over the share's batch rows and all output pixels of g·x at the tap. kShared: each
// batch row's input plane is first copied, zero-padded, into shared memory (dynamic, (H + 2p)·(W + 2p) values).
template <int K, bool kShared, typename scalar_t, typename acc_t>
__global__ void dw_grad_w_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                 acc_t* __restrict__ partial, bool em, int B, int per_share, int C, int H, int W,
                                 int m, int Ho, int Wo, int s, int p, int d) {
  constexpr int KK = K * K;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* pad = reinterpret_cast<acc_t*>(smem);
  __shared__ acc_t warp_sums[kThreads / 32][KK];
  const int O = C * m, o = blockIdx.x, c = static_cast<int>(dw::in_channel(em, C, m, o));
  const int b0 = blockIdx.y * per_share, b1 = min(B, b0 + per_share);
  const int P = Ho * Wo, Wp = W + 2 * p;
  acc_t acc[KK];
  MDARTS_UNROLL
  for (int t = 0; t < KK; ++t) acc[t] = 0;
  for (int b = b0; b < b1; ++b) {
    const scalar_t* gp = g + (static_cast<int64_t>(b) * O + o) * P;
    const scalar_t* xp = x + (static_cast<int64_t>(b) * C + c) * H * W;
    if (kShared) {
      __syncthreads();  // the previous row's plane is no longer read
      dw::fill_padded(pad, xp, H, W, p, threadIdx.x, blockDim.x);
      __syncthreads();
    }
    for (int r = threadIdx.x; r < P; r += blockDim.x) {
      const int y = r / Wo, xo = r - y * Wo;
      const acc_t gv = static_cast<acc_t>(gp[r]);
      if (kShared) {
        dw::grad_weight_add_padded<K>(gv, pad, Wp, y, xo, s, d, acc);
      } else {
        dw::grad_weight_add<K>(gv, xp, H, W, y, xo, s, p, d, acc);
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  MDARTS_UNROLL
  for (int t = 0; t < KK; ++t) {
    acc_t v = acc[t];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_sums[warp][t] = v;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < KK; t += blockDim.x) {
    acc_t v = 0;
    for (int i = 0; i < warps; ++i) v += warp_sums[i][t];
    partial[(static_cast<int64_t>(blockIdx.y) * O + o) * KK + t] = v;
  }
}

// The device's multiprocessor count, asked of the driver once per device, then cached.
int multiprocessors(int device) {
  static std::atomic<int> cached[64] = {};
  if (device < 0 || device >= 64) device = 0;
  int n = cached[device].load();
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(n);
  }
  return n;
}

int threads_for(int64_t work) {  // a multiple of 32, at most kThreads
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (work + 31) / 32 * 32)));
}

at::Tensor depthwise_conv_cuda(const at::Tensor& x_in, const at::Tensor& w_in, int64_t stride, int64_t padding,
                               int64_t dilation, bool edge_major) {
  const DepthwiseShape s = check_depthwise_args(x_in, w_in, stride, padding, dilation, edge_major);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  at::Tensor out = at::empty({s.B, s.O(), s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "depthwise_conv_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kernel_size(s.K, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const int64_t Hp = s.H + 2 * s.padding, Wp = s.W + 2 * s.padding;
      if (padded_plane_fits(s, sizeof(acc_t)) && s.B <= 65535) {
        const int64_t smem = (Hp * Wp + s.m * K * K) * static_cast<int64_t>(sizeof(acc_t));
        dw_fwd_shared_kernel<K, scalar_t, acc_t><<<dim3(s.C, s.B), threads_for(s.m * s.Ho * s.Wo), smem, stream>>>(
            x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), s.edge_major, s.C, s.H, s.W, s.m,
            s.Ho, s.Wo, s.stride, s.padding, s.dilation);
      } else {
        dw_fwd_global_kernel<K, scalar_t, acc_t><<<grid_blocks(out.numel(), kThreads), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), out.numel(), s.edge_major, s.C, s.H,
            s.W, s.m, s.Ho, s.Wo, s.stride, s.padding, s.dilation);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                                const at::Tensor& w_in, int64_t stride,
                                                                int64_t padding, int64_t dilation, bool edge_major,
                                                                bool need_x, bool need_w) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const DepthwiseBackward a = prepare_depthwise_backward(grad, x_in, w_in, stride, padding, dilation, edge_major);
  const DepthwiseShape& s = a.s;
  at::Tensor grad_x = need_x ? at::empty({s.B, s.C, s.H, s.W}, a.x.options()) : a.x.new_empty({0});
  at::Tensor grad_w = need_w ? at::empty(w_in.sizes(), w_in.options().memory_format(at::MemoryFormat::Contiguous))
                             : w_in.new_empty({0});
  if (need_w && a.g.numel() == 0) grad_w.zero_();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.x.scalar_type(), "depthwise_conv_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kernel_size(s.K, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (need_x && grad_x.numel() > 0) {
        if (grad_planes_fit(s, sizeof(acc_t)) && s.B <= 65535) {
          const int64_t smem = s.m * (s.Ho * s.Wo + K * K) * static_cast<int64_t>(sizeof(acc_t));
          dw_grad_x_shared_kernel<K, scalar_t, acc_t><<<dim3(s.C, s.B), threads_for(s.H * s.W), smem, stream>>>(
              a.g.data_ptr<scalar_t>(), a.w.data_ptr<acc_t>(), grad_x.data_ptr<scalar_t>(), s.edge_major, s.C, s.H,
              s.W, s.m, s.Ho, s.Wo, s.stride, s.padding, s.dilation);
        } else {
          dw_grad_x_global_kernel<K, scalar_t, acc_t><<<grid_blocks(grad_x.numel(), kThreads), kThreads, 0, stream>>>(
              a.g.data_ptr<scalar_t>(), a.w.data_ptr<acc_t>(), grad_x.data_ptr<scalar_t>(), grad_x.numel(),
              s.edge_major, s.C, s.H, s.W, s.m, s.Ho, s.Wo, s.stride, s.padding, s.dilation);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else if (need_x) {
        grad_x.zero_();
      }
      if (need_w && a.g.numel() > 0) {
        // Shares of the batch: enough blocks to fill the device about four times over.
        const int64_t sms = multiprocessors(x_in.device().index());
        const int64_t shares = std::min<int64_t>(s.B, std::max<int64_t>(1, (4 * sms + s.O() - 1) / s.O()));
        const int64_t per_share = (s.B + shares - 1) / shares;
        const int64_t used = (s.B + per_share - 1) / per_share;
        TORCH_CHECK(used <= 65535, "depthwise_conv_backward: batch of ", s.B, " is too large");
        at::Tensor partial = at::empty({used, s.O(), K * K}, a.x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const dim3 grid(s.O(), used);
        const int threads = threads_for(s.Ho * s.Wo);
        if (padded_plane_fits(s, sizeof(acc_t))) {
          const int64_t smem = (s.H + 2 * s.padding) * (s.W + 2 * s.padding) * static_cast<int64_t>(sizeof(acc_t));
          dw_grad_w_kernel<K, true, scalar_t, acc_t><<<grid, threads, smem, stream>>>(
              a.g.data_ptr<scalar_t>(), a.x.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), s.edge_major, s.B,
              per_share, s.C, s.H, s.W, s.m, s.Ho, s.Wo, s.stride, s.padding, s.dilation);
        } else {
          dw_grad_w_kernel<K, false, scalar_t, acc_t><<<grid, threads, 0, stream>>>(
              a.g.data_ptr<scalar_t>(), a.x.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), s.edge_major, s.B,
              per_share, s.C, s.H, s.W, s.m, s.Ho, s.Wo, s.stride, s.padding, s.dilation);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_w.copy_(partial.sum(0).view(w_in.sizes()));
      }
    });
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdarts, CUDA, m) {
  m.impl("depthwise_conv", &depthwise_conv_cuda);
  m.impl("depthwise_conv_backward", &depthwise_conv_backward_cuda);
}

}  // namespace mdarts
