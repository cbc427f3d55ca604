// bn_mix: the mixed outputs of all edges that read one node of the batched search cell (mdarts_rs.fastcell),
// for the cell's torch-free path. The node's per-edge ops end in non-affine batch norms; its shared ops
// (pooling, identity) give one output for every edge. One op does the per-edge batch norms (training mode:
// batch statistics), the weights and the sum. With w (n, S + K), shared columns first:
//   out[b, e*C+c, r] = sum_s w[e, s] * shared[s][b, g*C+c, r]   (g = e / (n/G): the edge's group, G = 1 usually)
//                    + sum_k w[e, S+k] * (xs[k][b, e*C+c, r] - mean[k, e*C+c]) * rsqrt(var[k, e*C+c] + eps)
// with mean and the biased var over (b, r), returned for the running statistics; with relu, out is
// max(out, 0) (a batch norm followed by a ReLU: one per-edge input, no shared ones, w = 1). Backward, with g
// the output gradient (masked where the output is not positive, with relu), per channel ch
// (N = B*R values, s = rsqrt(var + eps), S1 = sum g, S2[k] = sum g*(x_k - mean_k), S3[s] = sum g*shared[s]):
//   grad_xs[k] = w[e, S+k] * s * (g - S1/N - (x_k - mean_k) * s^2 * S2[k]/N),
//   grad_shared[s][b, g*C+c, r] = sum_{e in group g} w[e, s] * g[b, e*C+c, r],
//   grad_w[e, S+k] = sum_c s * S2[k],  grad_w[e, s] = sum_c S3[s].
// Sums run in double. Schema and CPU kernels; the CUDA kernels are in bn_mix.cu. The plain-torch reference
// is mdarts_rs.ops._ref.bn_mix_ref.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "bn_mix.h"
#include "node_mix.h"

namespace mdarts {

BnMixShape check_bn_mix_args(const at::TensorList xs, const at::TensorList shared, const at::Tensor& w, double eps) {
  TORCH_CHECK(!xs.empty(), "bn_mix: needs at least one per-edge input tensor");
  TORCH_CHECK(w.dim() == 2, "bn_mix: w must be (edges, inputs), got ", w.dim(), " dimensions");
  TORCH_CHECK(w.size(1) == static_cast<int64_t>(shared.size() + xs.size()), "bn_mix: ", shared.size(), " shared and ",
              xs.size(), " per-edge inputs but w has ", w.size(1), " columns");
  TORCH_CHECK(w.size(0) > 0, "bn_mix: w has no rows (edges)");
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "bn_mix: w must be floating point, got ", w.scalar_type());
  TORCH_CHECK(eps > 0, "bn_mix: eps must be positive, got ", eps);
  const auto& x0 = xs[0];
  TORCH_CHECK(x0.dim() == 4, "bn_mix: xs[0] must be (batch, edges*channels, height, width), got shape ", x0.sizes());
  TORCH_CHECK(at::isFloatingType(x0.scalar_type()), "bn_mix: inputs must be floating point, got ", x0.scalar_type());
  for (size_t k = 0; k < xs.size(); ++k) {
    TORCH_CHECK(xs[k].sizes() == x0.sizes(), "bn_mix: xs[", k, "] has shape ", xs[k].sizes(), " but xs[0] has ",
                x0.sizes());
    TORCH_CHECK(xs[k].scalar_type() == x0.scalar_type(), "bn_mix: xs[", k, "] is ", xs[k].scalar_type(),
                " but xs[0] is ", x0.scalar_type());
    TORCH_CHECK(xs[k].device() == w.device(), "bn_mix: xs[", k, "] is on ", xs[k].device(), " but w is on ",
                w.device());
  }
  BnMixShape s;
  s.S = static_cast<int64_t>(shared.size());
  s.K = static_cast<int64_t>(xs.size());
  s.n = w.size(0);
  TORCH_CHECK(x0.size(1) % s.n == 0, "bn_mix: ", x0.size(1), " channels do not split into ", s.n,
              " edges (w's rows)");
  s.C = x0.size(1) / s.n;
  s.B = x0.size(0);
  s.R = x0.size(2) * x0.size(3);
  TORCH_CHECK(s.count() > 1, "bn_mix: batch norm needs more than one value per channel, got input shape ", x0.sizes());
  for (size_t j = 0; j < shared.size(); ++j) {
    const auto& t = shared[j];
    const int64_t groups = t.dim() == 4 && t.size(1) % s.C == 0 ? t.size(1) / s.C : 0;
    if (j == 0 && groups > 0) s.G = groups;
    TORCH_CHECK(t.dim() == 4 && t.size(0) == s.B && groups == s.G && s.n % groups == 0 && t.size(2) == x0.size(2) &&
                    t.size(3) == x0.size(3),
                "bn_mix: shared[", j, "] has shape ", t.sizes(), "; expected (", s.B, ", G*", s.C, ", ", x0.size(2), ", ",
                x0.size(3), ") with the same G for every shared input and G dividing the ", s.n, " edges");
    TORCH_CHECK(t.scalar_type() == x0.scalar_type(), "bn_mix: shared[", j, "] is ", t.scalar_type(), " but xs[0] is ",
                x0.scalar_type());
    TORCH_CHECK(t.device() == w.device(), "bn_mix: shared[", j, "] is on ", t.device(), " but w is on ", w.device());
  }
  return s;
}

at::ScalarType bn_mix_stat_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

BnMixBackward prepare_bn_mix_backward(const at::Tensor& grad, const at::TensorList xs, const at::TensorList shared,
                                      const at::Tensor& w, const at::Tensor& mean, const at::Tensor& var, double eps,
                                      bool relu, bool need_xs, bool need_shared, bool need_w) {
  BnMixBackward out;
  out.shape = check_bn_mix_args(xs, shared, w, eps);
  const BnMixShape& s = out.shape;
  TORCH_CHECK(grad.sizes() == xs[0].sizes(), "bn_mix_backward: grad has shape ", grad.sizes(), " but the output has ",
              xs[0].sizes());
  for (const auto* t : {&mean, &var}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == s.K && t->size(1) == s.channels(), "bn_mix_backward: statistics must be (",
                s.K, ", ", s.channels(), "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == bn_mix_stat_type(xs[0].scalar_type()), "bn_mix_backward: statistics must be ",
                bn_mix_stat_type(xs[0].scalar_type()), ", got ", t->scalar_type());
  }
  out.g = grad.contiguous().to(xs[0].scalar_type());
  out.xs = contiguous_inputs(xs);
  // The shared inputs are read only for their weights' gradients and the ReLU's mask; otherwise they may be
  // placeholders.
  if (need_w || relu) out.shared = contiguous_inputs(shared);
  out.mean = mean.contiguous();
  out.var = var.contiguous();
  if (need_xs) {
    for (const auto& x : xs) out.grad_xs.push_back(at::empty(x.sizes(), out.g.options()));
  }
  if (need_shared) {
    for (const auto& t : shared) out.grad_shared.push_back(at::empty(t.sizes(), out.g.options()));
  }
  out.grad_w = need_w ? at::empty_like(w, at::MemoryFormat::Contiguous) : at::empty({0}, w.options());
  return out;
}

namespace {

// The forward's output (the formula above) into out, from contiguous inputs, the weights (n, S + K) in
// the accumulation type and the statistics; the backward calls it again for the ReLU's mask, so that the
// mask is exactly the forward's.
template <typename scalar_t, typename acc_t, typename stat_t>
void write_mixed(const BnMixShape& s, const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& shared,
                 const acc_t* wp, const stat_t* mp, const stat_t* vp, double eps, bool relu, scalar_t* out) {
  const int64_t nc = s.channels(), R = s.R, W = s.S + s.K;
  at::parallel_for(0, s.B * nc, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scale(s.K), shift(s.K);
    std::vector<const scalar_t*> rows(s.K), shared_rows(s.S);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / nc, ch = bc % nc, e = ch / s.C, c = ch % s.C;
      for (int64_t k = 0; k < s.K; ++k) {
        const double inv = 1.0 / std::sqrt(static_cast<double>(vp[k * nc + ch]) + eps);
        scale[k] = wp[e * W + s.S + k] * static_cast<acc_t>(inv);
        shift[k] = static_cast<acc_t>(mp[k * nc + ch]);
        rows[k] = xs[k].const_data_ptr<scalar_t>() + bc * R;
      }
      for (int64_t j = 0; j < s.S; ++j) shared_rows[j] = shared[j].const_data_ptr<scalar_t>() + s.shared_at(b, e, c, 0);
      for (int64_t r = 0; r < R; ++r) {
        acc_t v = 0;
        for (int64_t j = 0; j < s.S; ++j) v += wp[e * W + j] * static_cast<acc_t>(shared_rows[j][r]);
        for (int64_t k = 0; k < s.K; ++k) v += scale[k] * (static_cast<acc_t>(rows[k][r]) - shift[k]);
        out[bc * R + r] = static_cast<scalar_t>(relu && v < 0 ? acc_t(0) : v);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_mix_cpu(at::TensorList xs_in, at::TensorList shared_in,
                                                          const at::Tensor& w_in, double eps, bool relu) {
  const BnMixShape s = check_bn_mix_args(xs_in, shared_in, w_in, eps);
  auto xs = contiguous_inputs(xs_in);
  auto shared = contiguous_inputs(shared_in);
  const auto stat = bn_mix_stat_type(xs[0].scalar_type());
  auto mean = at::empty({s.K, s.channels()}, xs[0].options().dtype(stat));
  auto var = at::empty({s.K, s.channels()}, xs[0].options().dtype(stat));
  auto out = at::empty(xs[0].sizes(), xs[0].options());
  const int64_t nc = s.channels(), R = s.R, B = s.B;
  const double N = static_cast<double>(s.count());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "bn_mix_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using stat_t = bn_mix_stat_t<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    stat_t* mp = mean.data_ptr<stat_t>();
    stat_t* vp = var.data_ptr<stat_t>();
    // Statistics: one double sum and sum of squares per (input, channel).
    at::parallel_for(0, s.K * nc, 1, [&](int64_t begin, int64_t end) {
      for (int64_t kc = begin; kc < end; ++kc) {
        const int64_t k = kc / nc, ch = kc % nc;
        const scalar_t* x = xs[k].const_data_ptr<scalar_t>();
        double sum = 0, sq = 0;
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* row = x + (b * nc + ch) * R;
          for (int64_t r = 0; r < R; ++r) {
            const double v = static_cast<double>(row[r]);
            sum += v;
            sq += v * v;
          }
        }
        const double m = sum / N;
        mp[kc] = static_cast<stat_t>(m);
        vp[kc] = static_cast<stat_t>(std::max(sq / N - m * m, 0.0));
      }
    });
    write_mixed<scalar_t, acc_t, stat_t>(s, xs, shared, wp, mp, vp, eps, relu, out.data_ptr<scalar_t>());
  });
  return {out, mean, var};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> bn_mix_backward_cpu(
    const at::Tensor& grad_in, at::TensorList xs_in, at::TensorList shared_in, const at::Tensor& w_in,
    const at::Tensor& mean_in, const at::Tensor& var_in, double eps, bool relu, bool need_xs, bool need_shared,
    bool need_w) {
  // Named references rather than structured bindings: lambdas capture those only from C++20 on.
  BnMixBackward setup = prepare_bn_mix_backward(grad_in, xs_in, shared_in, w_in, mean_in, var_in, eps, relu, need_xs,
                                                need_shared, need_w);
  const BnMixShape& s = setup.shape;
  at::Tensor& g = setup.g;
  const std::vector<at::Tensor>& xs = setup.xs;
  const std::vector<at::Tensor>& shared = setup.shared;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  std::vector<at::Tensor>& grad_shared = setup.grad_shared;
  at::Tensor& grad_w = setup.grad_w;
  const int64_t nc = s.channels(), R = s.R, B = s.B, C = s.C, W = s.S + s.K;
  const double N = static_cast<double>(s.count());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bn_mix_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using stat_t = bn_mix_stat_t<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    const stat_t* mp = setup.mean.const_data_ptr<stat_t>();
    const stat_t* vp = setup.var.const_data_ptr<stat_t>();
    if (relu) {  // the output gradient where the output, recomputed as the forward computed it, is positive
      auto pre = at::empty_like(g);
      write_mixed<scalar_t, acc_t, stat_t>(s, xs, shared, wp, mp, vp, eps, false, pre.data_ptr<scalar_t>());
      g = at::where(pre > 0, g, at::zeros_like(g));
    }
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    // Per channel, in double: S1 = sum g, S2[k] = sum g*(x_k - mean_k), and (for grad_w) S3[j] = sum g*shared[j].
    std::vector<double> s1(nc), s2(s.K * nc), s3(s.S * nc);
    if (need_xs || need_w) {
      at::parallel_for(0, nc, 1, [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch) {
          const int64_t c = ch % C, e = ch / C;
          double a = 0;
          for (int64_t b = 0; b < B; ++b) {
            const scalar_t* gr = gp + (b * nc + ch) * R;
            for (int64_t r = 0; r < R; ++r) a += static_cast<double>(gr[r]);
          }
          s1[ch] = a;
          for (int64_t k = 0; k < s.K; ++k) {
            const scalar_t* x = xs[k].const_data_ptr<scalar_t>();
            const double m = static_cast<double>(mp[k * nc + ch]);
            double d = 0;
            for (int64_t b = 0; b < B; ++b) {
              const scalar_t* gr = gp + (b * nc + ch) * R;
              const scalar_t* xr = x + (b * nc + ch) * R;
              for (int64_t r = 0; r < R; ++r) d += static_cast<double>(gr[r]) * (static_cast<double>(xr[r]) - m);
            }
            s2[k * nc + ch] = d;
          }
          if (!need_w) continue;
          for (int64_t j = 0; j < s.S; ++j) {
            const scalar_t* t = shared[j].const_data_ptr<scalar_t>();
            double d = 0;
            for (int64_t b = 0; b < B; ++b) {
              const scalar_t* gr = gp + (b * nc + ch) * R;
              const scalar_t* tr = t + s.shared_at(b, e, c, 0);
              for (int64_t r = 0; r < R; ++r) d += static_cast<double>(gr[r]) * static_cast<double>(tr[r]);
            }
            s3[j * nc + ch] = d;
          }
        }
      });
    }
    if (need_xs) {
      for (int64_t k = 0; k < s.K; ++k) {
        const scalar_t* x = xs[k].const_data_ptr<scalar_t>();
        scalar_t* out = grad_xs[k].data_ptr<scalar_t>();
        at::parallel_for(0, B * nc, 1, [&](int64_t begin, int64_t end) {
          for (int64_t bc = begin; bc < end; ++bc) {
            const int64_t ch = bc % nc, e = ch / C, kc = k * nc + ch;
            const double inv = 1.0 / std::sqrt(static_cast<double>(vp[kc]) + eps);
            const acc_t scale = static_cast<acc_t>(wp[e * W + s.S + k] * inv);
            const acc_t g_mean = static_cast<acc_t>(s1[ch] / N);
            const acc_t proj = static_cast<acc_t>(s2[kc] / N * inv * inv);
            const acc_t m = static_cast<acc_t>(mp[kc]);
            for (int64_t r = 0; r < R; ++r) {
              const acc_t gv = static_cast<acc_t>(gp[bc * R + r]);
              const acc_t xc = static_cast<acc_t>(x[bc * R + r]) - m;
              out[bc * R + r] = static_cast<scalar_t>(scale * (gv - g_mean - xc * proj));
            }
          }
        });
      }
    }
    if (need_shared) {
      for (int64_t j = 0; j < s.S; ++j) {
        scalar_t* out = grad_shared[j].data_ptr<scalar_t>();
        const int64_t M = s.edges_per_group();
        at::parallel_for(0, B * s.G * C, 1, [&](int64_t begin, int64_t end) {
          for (int64_t bgc = begin; bgc < end; ++bgc) {  // shared channel g*C+c of batch row b
            const int64_t b = bgc / (s.G * C), gc = bgc % (s.G * C), g = gc / C, c = gc % C;
            for (int64_t r = 0; r < R; ++r) {
              acc_t v = 0;
              for (int64_t e = g * M; e < (g + 1) * M; ++e) {
                v += wp[e * W + j] * static_cast<acc_t>(gp[(b * nc + e * C + c) * R + r]);
              }
              out[bgc * R + r] = static_cast<scalar_t>(v);
            }
          }
        });
      }
    }
    if (need_w) {
      std::vector<double> total(s.n * W, 0.0);
      for (int64_t e = 0; e < s.n; ++e) {
        for (int64_t j = 0; j < s.S; ++j) {
          double t = 0;
          for (int64_t c = 0; c < C; ++c) t += s3[j * nc + e * C + c];
          total[e * W + j] = t;
        }
        for (int64_t k = 0; k < s.K; ++k) {
          double t = 0;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t kc = k * nc + e * C + c;
            t += s2[kc] / std::sqrt(static_cast<double>(vp[kc]) + eps);
          }
          total[e * W + s.S + k] = t;
        }
      }
      grad_w.copy_(at::tensor(total, at::TensorOptions().dtype(at::kDouble)).view({s.n, W}));
    }
  });
  return {grad_xs, grad_shared, grad_w};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdarts, m) {
  // No defaults: the dispatcher drops an argument equal to its default, and torch 2.11's autograd wrapper (seen on
  // a GPU machine) then wants one gradient fewer than the backward returns.
  m.def("bn_mix(Tensor[] xs, Tensor[] shared, Tensor w, float eps, bool relu) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_mix_backward(Tensor grad, Tensor[] xs, Tensor[] shared, Tensor w, Tensor mean, Tensor var, float eps, "
      "bool relu, bool need_xs, bool need_shared, bool need_w) -> (Tensor[], Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(mdarts, CPU, m) {
  m.impl("bn_mix", &bn_mix_cpu);
  m.impl("bn_mix_backward", &bn_mix_backward_cpu);
}

}  // namespace mdarts
