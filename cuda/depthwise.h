// Shared by the depthwise_conv CPU kernels (depthwise.cpp) and CUDA kernels (depthwise.cu): the argument
// checks and the per-pixel math, compiled for the host and for the device.
//
// Layout (NCHW, contiguous): x (B, C, H, W), w (C·m, 1, K, K), out (B, C·m, Ho, Wo), m the channel multiplier.
// The e-th copy of input channel c is output channel c·m + e (interleaved: torch's grouped convolution) or, with
// edge_major, e·C + c (the m copies of all channels one after the other: the batched search cell's per-edge
// layout); weight row o belongs to output channel o either way.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

#ifndef MDARTS_HOST_DEVICE
#ifdef __CUDACC__
#define MDARTS_HOST_DEVICE __host__ __device__
#else
#define MDARTS_HOST_DEVICE
#endif
#endif

#ifdef __CUDACC__
#define MDARTS_UNROLL _Pragma("unroll")
#else
#define MDARTS_UNROLL
#endif

namespace mdarts {

// The shape of one depthwise_conv call.
struct DepthwiseShape {
  int64_t B = 0, C = 0, H = 0, W = 0, m = 0, Ho = 0, Wo = 0;
  int K = 0, stride = 1, padding = 0, dilation = 1;
  bool edge_major = false;
  int64_t O() const { return C * m; }
};

// Check depthwise_conv's arguments (TORCH_CHECK with a message naming the argument) and return their shape.
DepthwiseShape check_depthwise_args(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t padding,
                                    int64_t dilation, bool edge_major);

// The backward's inputs after checking: the shape, grad and x contiguous, the weights contiguous in the
// accumulation type.
struct DepthwiseBackward {
  DepthwiseShape s;
  at::Tensor g, x, w;
};
DepthwiseBackward prepare_depthwise_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                             int64_t stride, int64_t padding, int64_t dilation, bool edge_major);

// The kernels work on a zero-padded copy of an input plane (forward, weight gradient) and on one plane's m
// output gradients (input gradient) in shared memory when these fit in 40 KiB; on larger planes they read
// global memory with bounds checks. The CPU kernels take the same two paths by the same rule.
constexpr int64_t kSharedBytes = 40 * 1024;
inline bool padded_plane_fits(const DepthwiseShape& s, int64_t elem_bytes) {
  return ((s.H + 2 * s.padding) * (s.W + 2 * s.padding) + s.m * s.K * s.K) * elem_bytes <= kSharedBytes;
}
inline bool grad_planes_fit(const DepthwiseShape& s, int64_t elem_bytes) {
  return s.m * (s.Ho * s.Wo + s.K * s.K) * elem_bytes <= kSharedBytes;
}

namespace dw {

// The output channel of input channel c's e-th copy, and the input channel that output channel o reads.
MDARTS_HOST_DEVICE inline int64_t out_channel(bool edge_major, int64_t C, int64_t m, int64_t c, int64_t e) {
  return edge_major ? e * C + c : c * m + e;
}
MDARTS_HOST_DEVICE inline int64_t in_channel(bool edge_major, int64_t C, int64_t m, int64_t o) {
  return edge_major ? o % C : o / m;
}

// Calls f(t, v) for each tap t = i·K + j of output pixel (y, x) that lands inside the H × W plane `in`, at
// (y·s − p + i·d, x·s − p + j·d), with v the input value there.
template <int K, typename T, typename F>
MDARTS_HOST_DEVICE inline void for_each_tap(const T* in, int H, int W, int y, int x, int s, int p, int d, F&& f) {
  const int y0 = y * s - p, x0 = x * s - p;
  MDARTS_UNROLL
  for (int i = 0; i < K; ++i) {
    const int yi = y0 + i * d;
    if (yi < 0 || yi >= H) continue;
    MDARTS_UNROLL
    for (int j = 0; j < K; ++j) {
      const int xi = x0 + j * d;
      if (xi < 0 || xi >= W) continue;
      f(i * K + j, in[yi * W + xi]);
    }
  }
}

// One output pixel (y, x) of one plane: sum over the taps of w[t]·in[tap], zero outside the plane.
template <int K, typename T, typename acc_t>
MDARTS_HOST_DEVICE inline acc_t forward_at(const T* in, const acc_t* w, int H, int W, int y, int x, int s, int p,
                                           int d) {
  acc_t sum = 0;
  for_each_tap<K>(in, H, W, y, x, s, p, d, [&](int t, T v) { sum += w[t] * static_cast<acc_t>(v); });
  return sum;
}

// The gradient at input pixel (yi, xi) of one input plane, from its m output planes' gradients (Ho × Wo each,
// g_step values apart from g) and their weights (K × K each, w_step values apart from w): every output pixel
// whose tap lands on (yi, xi).
template <int K, typename T, typename acc_t>
MDARTS_HOST_DEVICE inline acc_t grad_input_at(const T* g, int64_t g_step, const acc_t* w, int64_t w_step, int m, int Ho,
                                              int Wo, int yi, int xi, int s, int p, int d) {
  acc_t sum = 0;
  MDARTS_UNROLL
  for (int i = 0; i < K; ++i) {
    const int ty = yi + p - i * d;
    if (ty < 0) continue;
    const int yo = s == 1 ? ty : ty / s;  // (no division in the common stride-1 case)
    if (yo * s != ty || yo >= Ho) continue;
    MDARTS_UNROLL
    for (int j = 0; j < K; ++j) {
      const int tx = xi + p - j * d;
      if (tx < 0) continue;
      const int xo = s == 1 ? tx : tx / s;
      if (xo * s != tx || xo >= Wo) continue;
      for (int e = 0; e < m; ++e) sum += w[e * w_step + i * K + j] * static_cast<acc_t>(g[e * g_step + yo * Wo + xo]);
    }
  }
  return sum;
}

// Adds output pixel (y, x)'s share of the weight gradient, gv·in[tap] for each tap, to acc (K × K).
template <int K, typename T, typename acc_t>
MDARTS_HOST_DEVICE inline void grad_weight_add(acc_t gv, const T* in, int H, int W, int y, int x, int s, int p, int d,
                                               acc_t* acc) {
  for_each_tap<K>(in, H, W, y, x, s, p, d, [&](int t, T v) { acc[t] += gv * static_cast<acc_t>(v); });
}

// Writes entries first, first + step, ... of `pad`, the plane `in` (H × W) zero-padded by p on every side
// (H + 2p rows of W + 2p): all of them for (0, 1), a block's share for (threadIdx.x, blockDim.x).
template <typename acc_t, typename T>
MDARTS_HOST_DEVICE inline void fill_padded(acc_t* pad, const T* in, int H, int W, int p, int first, int step) {
  const int Wp = W + 2 * p, size = (H + 2 * p) * Wp;
  for (int i = first; i < size; i += step) {
    const int y = i / Wp - p, x = i % Wp - p;
    pad[i] = (y >= 0 && y < H && x >= 0 && x < W) ? static_cast<acc_t>(in[y * W + x]) : acc_t(0);
  }
}

// forward_at on a zero-padded plane (Wp columns): no bounds to check.
template <int K, typename acc_t>
MDARTS_HOST_DEVICE inline acc_t forward_padded_at(const acc_t* pad, const acc_t* w, int Wp, int y, int x, int s, int d) {
  const acc_t* base = pad + y * s * Wp + x * s;
  acc_t sum = 0;
  MDARTS_UNROLL
  for (int i = 0; i < K; ++i) {
    MDARTS_UNROLL
    for (int j = 0; j < K; ++j) sum += w[i * K + j] * base[i * d * Wp + j * d];
  }
  return sum;
}

// grad_weight_add on a zero-padded plane (Wp columns).
template <int K, typename acc_t>
MDARTS_HOST_DEVICE inline void grad_weight_add_padded(acc_t gv, const acc_t* pad, int Wp, int y, int x, int s, int d,
                                                      acc_t* acc) {
  const acc_t* base = pad + y * s * Wp + x * s;
  MDARTS_UNROLL
  for (int i = 0; i < K; ++i) {
    MDARTS_UNROLL
    for (int j = 0; j < K; ++j) acc[i * K + j] += gv * base[i * d * Wp + j * d];
  }
}

}  // namespace dw

// Calls f(std::integral_constant<int, K>{}) for the kernel sizes the kernels are built for: the search space's 3
// and 5, each for float32, float64 and bfloat16 (more would lengthen the first-use build).
template <typename F>
void dispatch_kernel_size(int K, F&& f) {
  switch (K) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    default: TORCH_CHECK(false, "depthwise_conv: kernel size ", K, " is not built (3 or 5)");
  }
}

}  // namespace mdarts
