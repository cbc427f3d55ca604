// CUDA kernels of bn_mix (schema, CPU kernels and the formulas in bn_mix.cpp).
//
// Forward: the statistics in two kernels (per (input, channel, batch share) a double sum and sum of squares,
// then a fixed-order sum of the shares, so results do not depend on scheduling), then one pass over the
// (b, c, r) columns that reads the shared inputs once and each per-edge input once and writes every edge's
// output. Backward: per (channel, batch share) the double sums S1, S2[k] and (for grad_w) S3[s], reading g and
// each input once; a fixed-order sum of the shares; the weight gradients from those (one thread per weight);
// one pass over the columns that reads g and the per-edge inputs once and writes every input gradient, the
// shared ones included. With relu the forward clamps at zero and the backward kernels recompute the output
// where they read g (same operations as the forward) to mask g where it is not positive. No host
// synchronisation.
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

#include "bn_mix.h"
#include "node_mix.h"

namespace mdarts {
namespace {

constexpr int kMaxInputs = 8;  // per kind: per-edge inputs, shared inputs
constexpr int kMaxSums = 1 + 2 * kMaxInputs;
constexpr int kThreads = 256;
constexpr int kTargetBlocks = 1024;  // reduction blocks per kernel: several per SM on an H100/H200

template <typename T>
struct Inputs {
  const T* x[kMaxInputs];
};

template <typename T>
struct Outputs {
  T* x[kMaxInputs];
};

// Batch shares per channel: enough reduction blocks to fill the GPU, at most one per batch row (and within
// the grid's y limit).
int batch_shares(int64_t channel_blocks, int64_t B) {
  const int64_t want = (kTargetBlocks + channel_blocks - 1) / channel_blocks;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, B, 65535})));
}

__device__ inline float inv_sqrt(float x) { return rsqrtf(x); }
__device__ inline double inv_sqrt(double x) { return rsqrt(x); }

// Sum the first `count` values of every thread's `v` over the block; thread 0 gets the totals.
template <int MaxValues>
__device__ void block_sum(double* v, int count) {
  __shared__ double warps[kThreads / 32][MaxValues];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int j = 0; j < count; ++j) {
    double s = v[j];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) warps[warp][j] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int j = 0; j < count; ++j) {
      double s = 0;
      for (int i = 0; i < kThreads / 32; ++i) s += warps[i][j];
      v[j] = s;
    }
  }
}

// The mixed value at (b, e*C+c, r) before the optional ReLU, as every kernel computes it (same operations in
// the same order, so the backward's ReLU mask is the forward's): sv holds the shared inputs at (b, c, r).
template <typename scalar_t, typename acc_t, typename stat_t>
__device__ __forceinline__ acc_t mixed_value(const Inputs<scalar_t>& xs, const acc_t* sv, const acc_t* __restrict__ w,
                                             int64_t ws0, int64_t ws1, const stat_t* __restrict__ mean,
                                             const stat_t* __restrict__ var, acc_t eps, int64_t e, int64_t ch,
                                             int64_t nc, int64_t i, int K, int S) {
  acc_t sum = 0;
  for (int s = 0; s < S; ++s) sum += w[e * ws0 + s * ws1] * sv[s];
  for (int k = 0; k < K; ++k) {
    const int64_t kc = k * nc + ch;
    const acc_t scale = w[e * ws0 + (S + k) * ws1] * inv_sqrt(static_cast<acc_t>(var[kc]) + eps);
    sum += scale * (static_cast<acc_t>(xs.x[k][i]) - static_cast<acc_t>(mean[kc]));
  }
  return sum;
}

// Block (k*nc + ch, share): sum and sum of squares of input k, channel ch, over batch rows share,
// share + shares, ... into partial[((k*nc + ch) * shares + share) * 2 + {0, 1}].
template <typename scalar_t>
__global__ void stats_partial_kernel(Inputs<scalar_t> xs, int64_t nc, int64_t B, int64_t R, double* __restrict__ partial) {
  const int64_t kc = blockIdx.x, k = kc / nc, ch = kc - k * nc;
  const int64_t share = blockIdx.y, shares = gridDim.y;
  const int64_t rows = (B - share + shares - 1) / shares;
  const scalar_t* x = xs.x[k];
  double v[2] = {0, 0};
  for (int64_t i = threadIdx.x; i < rows * R; i += blockDim.x) {
    const int64_t bi = i / R, r = i - bi * R;
    const double a = static_cast<double>(x[((share + bi * shares) * nc + ch) * R + r]);
    v[0] += a;
    v[1] += a * a;
  }
  block_sum<2>(v, 2);
  if (threadIdx.x == 0) {
    partial[(kc * shares + share) * 2] = v[0];
    partial[(kc * shares + share) * 2 + 1] = v[1];
  }
}

template <typename stat_t>
__global__ void stats_finish_kernel(const double* __restrict__ partial, int64_t rows, int shares, double N,
                                    stat_t* __restrict__ mean, stat_t* __restrict__ var) {
  const int64_t kc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (kc >= rows) return;
  double sum = 0, sq = 0;
  for (int i = 0; i < shares; ++i) {
    sum += partial[(kc * shares + i) * 2];
    sq += partial[(kc * shares + i) * 2 + 1];
  }
  const double m = sum / N;
  mean[kc] = static_cast<stat_t>(m);
  var[kc] = static_cast<stat_t>(fmax(sq / N - m * m, 0.0));
}

// Thread per column (b, c, r) of the B*C*R columns: every edge's output at (b, e*C+c, r). The shared inputs
// are (B, G*C, R); edges g*M .. g*M+M-1 (M = n/G) read group g.
template <typename scalar_t, typename acc_t, typename stat_t, int KT, int ST>
__global__ void bn_mix_fwd_kernel(Inputs<scalar_t> xs, Inputs<scalar_t> shared, const acc_t* __restrict__ w,
                                  int64_t ws0, int64_t ws1, const stat_t* __restrict__ mean,
                                  const stat_t* __restrict__ var, acc_t eps, int64_t n, int64_t G, int64_t C, int64_t R,
                                  int k_arg, int s_arg, bool relu, int64_t columns, scalar_t* __restrict__ out) {
  const int K = KT > 0 ? KT : k_arg;
  const int S = KT > 0 ? ST : s_arg;
  const int64_t nc = n * C, M = n / G;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < columns;
       j += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = j / (C * R), cr = j - b * C * R, c = cr / R, r = cr - c * R;
    for (int64_t g = 0; g < G; ++g) {
      acc_t sv[kMaxInputs];
      for (int s = 0; s < S; ++s) sv[s] = static_cast<acc_t>(shared.x[s][((b * G + g) * C + c) * R + r]);
      for (int64_t e = g * M; e < (g + 1) * M; ++e) {
        const int64_t ch = e * C + c, i = (b * nc + ch) * R + r;
        const acc_t sum = mixed_value(xs, sv, w, ws0, ws1, mean, var, eps, e, ch, nc, i, K, S);
        out[i] = static_cast<scalar_t>(relu && sum < 0 ? acc_t(0) : sum);
      }
    }
  }
}

// Block (ch, share): S1 = sum g, S2[k] = sum g*(x_k - mean_k) and, with shared_sums, S3[s] = sum g*shared[s],
// over the share's batch rows, into partial[(ch * shares + share) * V + v] with V = 1 + K (+ S) and v = 0
// for S1, 1 + k for S2[k], 1 + K + s for S3[s]. With relu, g is masked where the output is not positive.
template <typename scalar_t, typename acc_t, typename stat_t, int KT, int ST>
__global__ void bwd_partial_kernel(const scalar_t* __restrict__ g, Inputs<scalar_t> xs, Inputs<scalar_t> shared,
                                   const acc_t* __restrict__ w, int64_t ws0, int64_t ws1, const stat_t* __restrict__ mean,
                                   const stat_t* __restrict__ var, acc_t eps, int64_t n, int64_t G, int64_t C, int64_t B,
                                   int64_t R, int k_arg, int s_arg, bool shared_sums, bool relu,
                                   double* __restrict__ partial) {
  const int K = KT > 0 ? KT : k_arg;
  const int S_all = KT > 0 ? ST : s_arg;
  const int S = shared_sums ? S_all : 0;
  const int V = 1 + K + S;
  const int64_t nc = n * C, ch = blockIdx.x, c = ch % C, share = blockIdx.y, shares = gridDim.y;
  const int64_t group = (ch / C) / (n / G);  // of the edge that owns channel ch
  const int64_t rows = (B - share + shares - 1) / shares;
  double m[kMaxInputs];
  double v[kMaxSums];
  for (int k = 0; k < K; ++k) m[k] = static_cast<double>(mean[k * nc + ch]);
  for (int q = 0; q < V; ++q) v[q] = 0;
  for (int64_t i = threadIdx.x; i < rows * R; i += blockDim.x) {
    const int64_t bi = i / R, r = i - bi * R, b = share + bi * shares;
    const int64_t at = (b * nc + ch) * R + r;
    double gv = static_cast<double>(g[at]);
    if (relu) {
      acc_t sv[kMaxInputs];
      for (int s = 0; s < S_all; ++s) sv[s] = static_cast<acc_t>(shared.x[s][((b * G + group) * C + c) * R + r]);
      if (!(mixed_value(xs, sv, w, ws0, ws1, mean, var, eps, ch / C, ch, nc, at, K, S_all) > 0)) gv = 0;
    }
    v[0] += gv;
    for (int k = 0; k < K; ++k) v[1 + k] += gv * (static_cast<double>(xs.x[k][at]) - m[k]);
    for (int s = 0; s < S; ++s) v[1 + K + s] += gv * static_cast<double>(shared.x[s][((b * G + group) * C + c) * R + r]);
  }
  block_sum<kMaxSums>(v, V);
  if (threadIdx.x == 0) {
    for (int q = 0; q < V; ++q) partial[(ch * shares + share) * V + q] = v[q];
  }
}

// sums[q * nc + ch]: the shares of (ch, q) summed in order.
__global__ void bwd_finish_kernel(const double* __restrict__ partial, int64_t nc, int V, int shares,
                                  double* __restrict__ sums) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= nc * V) return;
  const int64_t q = t / nc, ch = t - q * nc;
  double s = 0;
  for (int i = 0; i < shares; ++i) s += partial[(ch * shares + i) * V + q];
  sums[t] = s;
}

// grad_w[e, s] = sum_c S3[s, e*C + c] and grad_w[e, S + k] = sum_c S2[k, e*C + c] * rsqrt(var + eps), one
// thread per weight.
template <typename stat_t>
__global__ void bwd_grad_w_kernel(const double* __restrict__ sums, const stat_t* __restrict__ var, double eps, int64_t n,
                                  int64_t C, int K, int S, double* __restrict__ grad_w) {
  const int64_t W = S + K, t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n * W) return;
  const int64_t e = t / W, col = t - e * W, nc = n * C;
  double total = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t ch = e * C + c;
    if (col < S) {
      total += sums[(1 + K + col) * nc + ch];
    } else {
      const int64_t k = col - S;
      total += sums[(1 + k) * nc + ch] / sqrt(static_cast<double>(var[k * nc + ch]) + eps);
    }
  }
  grad_w[t] = total;
}

// Thread per column (b, c, r): the per-edge inputs' gradients at (b, e*C+c, r) for every edge e, and the
// shared inputs' gradients at (b, g*C+c, r), sum over the edges e of group g of w[e, s] * g[b, e*C+c, r].
template <typename scalar_t, typename acc_t, typename stat_t, int KT, int ST>
__global__ void bwd_grads_kernel(const scalar_t* __restrict__ g, Inputs<scalar_t> xs, Outputs<scalar_t> grad_xs,
                                 Outputs<scalar_t> grad_shared, const acc_t* __restrict__ w, int64_t ws0, int64_t ws1,
                                 const stat_t* __restrict__ mean, const stat_t* __restrict__ var,
                                 const double* __restrict__ sums, acc_t eps, acc_t N, int64_t n, int64_t G, int64_t C,
                                 int64_t R, int k_arg, int s_arg, bool relu, bool need_xs, bool need_shared,
                                 Inputs<scalar_t> shared, int64_t columns) {
  const int K = KT > 0 ? KT : k_arg;
  const int S = KT > 0 ? ST : s_arg;
  const int64_t nc = n * C, M = n / G;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < columns;
       j += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = j / (C * R), cr = j - b * C * R, c = cr / R, r = cr - c * R;
    for (int64_t group = 0; group < G; ++group) {
      const int64_t at_shared = ((b * G + group) * C + c) * R + r;
      acc_t gs[kMaxInputs], sv[kMaxInputs];
      for (int s = 0; s < S; ++s) gs[s] = 0;
      if (relu) {
        for (int s = 0; s < S; ++s) sv[s] = static_cast<acc_t>(shared.x[s][at_shared]);
      }
      for (int64_t e = group * M; e < (group + 1) * M; ++e) {
        const int64_t ch = e * C + c, i = (b * nc + ch) * R + r;
        acc_t gv = static_cast<acc_t>(g[i]);
        if (relu && !(mixed_value(xs, sv, w, ws0, ws1, mean, var, eps, e, ch, nc, i, K, S) > 0)) gv = 0;
        if (need_shared) {
          for (int s = 0; s < S; ++s) gs[s] += w[e * ws0 + s * ws1] * gv;
        }
        if (!need_xs) continue;
        const acc_t gc = gv - static_cast<acc_t>(sums[ch]) / N;
        for (int k = 0; k < K; ++k) {
          const int64_t kc = k * nc + ch;
          const acc_t inv = inv_sqrt(static_cast<acc_t>(var[kc]) + eps);
          const acc_t proj = static_cast<acc_t>(sums[(1 + k) * nc + ch]) / N * inv * inv;
          const acc_t xc = static_cast<acc_t>(xs.x[k][i]) - static_cast<acc_t>(mean[kc]);
          grad_xs.x[k][i] = static_cast<scalar_t>(w[e * ws0 + (S + k) * ws1] * inv * (gc - xc * proj));
        }
      }
      if (need_shared) {
        for (int s = 0; s < S; ++s) grad_shared.x[s][at_shared] = static_cast<scalar_t>(gs[s]);
      }
    }
  }
}

// f(std::integral_constant<int, KT>{}, std::integral_constant<int, ST>{}) with (KT, ST) = (K, S) for the
// input counts of a batched node ((4, 3); (5, 2) in a reduction cell's first two nodes) and of a lone batch
// norm (1, 0), so that the kernels' loops over the inputs unroll into registers, and (0, 0) (counts read
// at run time) otherwise.
template <typename F>
void with_input_counts(int64_t K, int64_t S, F&& f) {
  if (K == 1 && S == 0) {
    f(std::integral_constant<int, 1>{}, std::integral_constant<int, 0>{});
  } else if (K == 4 && S == 3) {
    f(std::integral_constant<int, 4>{}, std::integral_constant<int, 3>{});
  } else if (K == 5 && S == 2) {
    f(std::integral_constant<int, 5>{}, std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
  }
}

void check_counts(const BnMixShape& s, const char* op) {
  TORCH_CHECK(s.K <= kMaxInputs && s.S <= kMaxInputs, op, ": at most ", kMaxInputs,
              " per-edge and shared inputs each on CUDA, got ", s.K, " and ", s.S);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_mix_cuda(at::TensorList xs_in, at::TensorList shared_in,
                                                           const at::Tensor& w_in, double eps, bool relu) {
  const BnMixShape s = check_bn_mix_args(xs_in, shared_in, w_in, eps);
  check_counts(s, "bn_mix");
  const c10::cuda::CUDAGuard guard(w_in.device());
  auto xs = contiguous_inputs(xs_in);
  auto shared = contiguous_inputs(shared_in);
  const auto stat = bn_mix_stat_type(xs[0].scalar_type());
  const int64_t nc = s.channels(), columns = s.B * s.C * s.R;
  auto mean = at::empty({s.K, nc}, xs[0].options().dtype(stat));
  auto var = at::empty({s.K, nc}, xs[0].options().dtype(stat));
  auto out = at::empty(xs[0].sizes(), xs[0].options());
  if (out.numel() == 0) return {out, mean, var};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int shares = batch_shares(s.K * nc, s.B);
  auto partial = at::empty({s.K * nc * shares * 2}, xs[0].options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "bn_mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using stat_t = bn_mix_stat_t<scalar_t>;
    Inputs<scalar_t> xp{}, sp{};
    for (int64_t k = 0; k < s.K; ++k) xp.x[k] = xs[k].const_data_ptr<scalar_t>();
    for (int64_t j = 0; j < s.S; ++j) sp.x[j] = shared[j].const_data_ptr<scalar_t>();
    stats_partial_kernel<scalar_t><<<dim3(static_cast<unsigned>(s.K * nc), static_cast<unsigned>(shares)), kThreads, 0,
                                     stream>>>(xp, nc, s.B, s.R, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_finish_kernel<stat_t><<<static_cast<unsigned>((s.K * nc + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), s.K * nc, shares, static_cast<double>(s.count()), mean.data_ptr<stat_t>(),
        var.data_ptr<stat_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto w = weights_as(w_in, c10::CppTypeToScalarType<acc_t>::value);
    with_input_counts(s.K, s.S, [&](auto kt, auto st) {
      bn_mix_fwd_kernel<scalar_t, acc_t, stat_t, decltype(kt)::value, decltype(st)::value>
          <<<grid_blocks(columns, kThreads), kThreads, 0, stream>>>(
              xp, sp, w.const_data_ptr<acc_t>(), w.stride(0), w.stride(1), mean.const_data_ptr<stat_t>(),
              var.const_data_ptr<stat_t>(), static_cast<acc_t>(eps), s.n, s.G, s.C, s.R, static_cast<int>(s.K),
              static_cast<int>(s.S), relu, columns, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, mean, var};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> bn_mix_backward_cuda(
    const at::Tensor& grad_in, at::TensorList xs_in, at::TensorList shared_in, const at::Tensor& w_in,
    const at::Tensor& mean_in, const at::Tensor& var_in, double eps, bool relu, bool need_xs, bool need_shared,
    bool need_w) {
  const c10::cuda::CUDAGuard guard(w_in.device());
  BnMixBackward setup = prepare_bn_mix_backward(grad_in, xs_in, shared_in, w_in, mean_in, var_in, eps, relu, need_xs,
                                                need_shared, need_w);
  const BnMixShape& s = setup.shape;
  check_counts(s, "bn_mix_backward");
  const at::Tensor& g = setup.g;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  std::vector<at::Tensor>& grad_shared = setup.grad_shared;
  at::Tensor& grad_w = setup.grad_w;
  const int64_t nc = s.channels(), columns = s.B * s.C * s.R;
  if (g.numel() == 0) {
    if (need_w) grad_w.zero_();
    return {grad_xs, grad_shared, grad_w};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int shares = batch_shares(nc, s.B);
  const int V = static_cast<int>(1 + s.K + (need_w ? s.S : 0));
  auto partial = at::empty({nc * shares * V}, g.options().dtype(at::kDouble));
  auto sums = at::empty({V * nc}, g.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bn_mix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using stat_t = bn_mix_stat_t<scalar_t>;
    Inputs<scalar_t> xp{}, sp{};
    for (int64_t k = 0; k < s.K; ++k) xp.x[k] = setup.xs[k].const_data_ptr<scalar_t>();
    if (need_w || relu) {
      for (int64_t j = 0; j < s.S; ++j) sp.x[j] = setup.shared[j].const_data_ptr<scalar_t>();
    }
    const stat_t* mean = setup.mean.const_data_ptr<stat_t>();
    const stat_t* var = setup.var.const_data_ptr<stat_t>();
    const auto w = weights_as(w_in, c10::CppTypeToScalarType<acc_t>::value);
    with_input_counts(s.K, s.S, [&](auto kt, auto st) {
      constexpr int KT = decltype(kt)::value, ST = decltype(st)::value;
      if (need_xs || need_w) {
        bwd_partial_kernel<scalar_t, acc_t, stat_t, KT, ST>
            <<<dim3(static_cast<unsigned>(nc), static_cast<unsigned>(shares)), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), xp, sp, w.const_data_ptr<acc_t>(), w.stride(0), w.stride(1), mean, var,
                static_cast<acc_t>(eps), s.n, s.G, s.C, s.B, s.R, static_cast<int>(s.K), static_cast<int>(s.S), need_w, relu,
                partial.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bwd_finish_kernel<<<static_cast<unsigned>((nc * V + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
            partial.const_data_ptr<double>(), nc, V, shares, sums.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (need_w) {
        auto gw = at::empty({s.n, s.S + s.K}, sums.options());
        const int64_t weights = s.n * (s.S + s.K);
        bwd_grad_w_kernel<stat_t><<<static_cast<unsigned>((weights + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
            sums.const_data_ptr<double>(), var, eps, s.n, s.C, static_cast<int>(s.K), static_cast<int>(s.S),
            gw.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_w.copy_(gw);
      }
      if (need_xs || need_shared) {
        Outputs<scalar_t> gx{}, gs{};
        for (int64_t k = 0; k < s.K && need_xs; ++k) gx.x[k] = grad_xs[k].data_ptr<scalar_t>();
        for (int64_t j = 0; j < s.S && need_shared; ++j) gs.x[j] = grad_shared[j].data_ptr<scalar_t>();
        bwd_grads_kernel<scalar_t, acc_t, stat_t, KT, ST><<<grid_blocks(columns, kThreads), kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), xp, gx, gs, w.const_data_ptr<acc_t>(), w.stride(0), w.stride(1), mean, var,
            sums.const_data_ptr<double>(), static_cast<acc_t>(eps), static_cast<acc_t>(s.count()), s.n, s.G, s.C, s.R,
            static_cast<int>(s.K), static_cast<int>(s.S), relu, need_xs, need_shared, sp, columns);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {grad_xs, grad_shared, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdarts, CUDA, m) {
  m.impl("bn_mix", &bn_mix_cuda);
  m.impl("bn_mix_backward", &bn_mix_backward_cuda);
}

}  // namespace mdarts
