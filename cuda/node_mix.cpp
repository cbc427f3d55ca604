// node_mix: the mixed sums of every edge that reads one node, for the batched search cell
// (mdarts_rs.fastcell): out[b, e, r] = sum_k w[e, k] * xs[k][b, e or 0, r], where xs[k] holds either one
// slice per edge (B, n, R) or one slice shared by all edges (B, 1, R; pooling and identity outputs).
// Backward: grad_xs[k] = w[e, k] * g for per-edge outputs and sum_e w[e, k] * g[b, e, r] for shared ones;
// grad_w[e, k] = sum_{b, r} g[b, e, r] * xs[k][b, e or 0, r]. Schema and CPU kernels; the CUDA kernels are
// in node_mix.cu. The plain-torch reference is mdarts_rs.ops._ref.node_mix_ref.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "node_mix.h"

namespace mdarts {

NodeMixShape check_node_mix_args(const at::TensorList xs, const at::Tensor& w) {
  TORCH_CHECK(!xs.empty(), "node_mix: needs at least one input tensor");
  TORCH_CHECK(w.dim() == 2, "node_mix: w must be (edges, inputs), got ", w.dim(), " dimensions");
  TORCH_CHECK(w.size(1) == static_cast<int64_t>(xs.size()), "node_mix: ", xs.size(), " inputs but w has ",
              w.size(1), " columns");
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "node_mix: w must be floating point, got ", w.scalar_type());
  NodeMixShape s;
  s.n = w.size(0);
  s.K = w.size(1);
  for (size_t k = 0; k < xs.size(); ++k) {
    const auto& x = xs[k];
    TORCH_CHECK(x.dim() == 3, "node_mix: xs[", k, "] must be (batch, edges or 1, values), got shape ", x.sizes());
    TORCH_CHECK(x.size(0) == xs[0].size(0) && x.size(2) == xs[0].size(2), "node_mix: xs[", k, "] has shape ",
                x.sizes(), " but xs[0] has ", xs[0].sizes());
    TORCH_CHECK(x.size(1) == s.n || x.size(1) == 1, "node_mix: xs[", k, "] has ", x.size(1),
                " edge slices; expected ", s.n, " (w's rows) or 1 (shared)");
    TORCH_CHECK(x.scalar_type() == xs[0].scalar_type(), "node_mix: xs[", k, "] is ", x.scalar_type(),
                " but xs[0] is ", xs[0].scalar_type());
    TORCH_CHECK(x.device() == w.device(), "node_mix: xs[", k, "] is on ", x.device(), " but w is on ", w.device());
    s.per_edge.push_back(x.size(1) == s.n && s.n != 1);
  }
  TORCH_CHECK(at::isFloatingType(xs[0].scalar_type()), "node_mix: inputs must be floating point, got ",
              xs[0].scalar_type());
  s.B = xs[0].size(0);
  s.R = xs[0].size(2);
  return s;
}

std::vector<at::Tensor> contiguous_inputs(const at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

NodeMixBackward prepare_node_mix_backward(const at::Tensor& grad, const at::TensorList xs, const at::Tensor& w,
                                          bool need_xs, bool need_w) {
  NodeMixBackward out;
  out.shape = check_node_mix_args(xs, w);
  const NodeMixShape& s = out.shape;
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == s.B && grad.size(1) == s.n && grad.size(2) == s.R,
              "node_mix_backward: grad has shape ", grad.sizes(), " but the output is (", s.B, ", ", s.n, ", ", s.R,
              ")");
  // The inputs are read only for grad_w; otherwise they may be shape-only placeholders (expanded scalars).
  if (need_w) out.xs = contiguous_inputs(xs);
  out.g = grad.contiguous();
  if (need_xs) {
    for (const auto& x : xs) out.grad_xs.push_back(at::empty(x.sizes(), out.g.options()));
  }
  out.grad_w = need_w ? at::empty_like(w, at::MemoryFormat::Contiguous) : at::empty({0}, w.options());
  return out;
}

namespace {

at::Tensor node_mix_cpu(at::TensorList xs_in, const at::Tensor& w_in) {
  const NodeMixShape s = check_node_mix_args(xs_in, w_in);
  auto xs = contiguous_inputs(xs_in);
  auto out = at::empty({s.B, s.n, s.R}, xs[0].options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "node_mix_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    std::vector<const scalar_t*> ptrs(s.K);
    for (int64_t k = 0; k < s.K; ++k) ptrs[k] = xs[k].const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, s.B * s.n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t be = begin; be < end; ++be) {
        const int64_t b = be / s.n, e = be % s.n;
        scalar_t* o = op + be * s.R;
        for (int64_t r = 0; r < s.R; ++r) {
          acc_t sum = 0;
          for (int64_t k = 0; k < s.K; ++k) {
            const int64_t row = s.per_edge[k] ? be : b;
            sum += wp[e * s.K + k] * static_cast<acc_t>(ptrs[k][row * s.R + r]);
          }
          o[r] = static_cast<scalar_t>(sum);
        }
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> node_mix_backward_cpu(const at::Tensor& grad_in, at::TensorList xs_in,
                                                                       const at::Tensor& w_in, bool need_xs,
                                                                       bool need_w) {
  // Named references rather than structured bindings: lambdas capture those only from C++20 on.
  NodeMixBackward setup = prepare_node_mix_backward(grad_in, xs_in, w_in, need_xs, need_w);
  const NodeMixShape& s = setup.shape;
  const at::Tensor& g = setup.g;
  const std::vector<at::Tensor>& xs = setup.xs;
  std::vector<at::Tensor>& grad_xs = setup.grad_xs;
  at::Tensor& grad_w = setup.grad_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "node_mix_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = w_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    if (need_xs) {
      for (int64_t k = 0; k < s.K; ++k) {
        scalar_t* out = grad_xs[k].data_ptr<scalar_t>();
        const bool per_edge = s.per_edge[k];
        const int64_t rows = per_edge ? s.B * s.n : s.B;
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {
            for (int64_t r = 0; r < s.R; ++r) {
              acc_t v = 0;
              if (per_edge) {
                v = wp[(row % s.n) * s.K + k] * static_cast<acc_t>(gp[row * s.R + r]);
              } else {
                for (int64_t e = 0; e < s.n; ++e) v += wp[e * s.K + k] * static_cast<acc_t>(gp[(row * s.n + e) * s.R + r]);
              }
              out[row * s.R + r] = static_cast<scalar_t>(v);
            }
          }
        });
      }
    }
    if (need_w) {
      // One double sum per (edge, input), over the batch in order: deterministic whatever the thread count.
      std::vector<double> total(s.n * s.K, 0.0);
      at::parallel_for(0, s.n * s.K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t ek = begin; ek < end; ++ek) {
          const int64_t e = ek / s.K, k = ek % s.K;
          const scalar_t* x = xs[k].const_data_ptr<scalar_t>();
          double sum = 0;
          for (int64_t b = 0; b < s.B; ++b) {
            const scalar_t* gr = gp + (b * s.n + e) * s.R;
            const scalar_t* xr = x + (s.per_edge[k] ? b * s.n + e : b) * s.R;
            for (int64_t r = 0; r < s.R; ++r) sum += static_cast<double>(gr[r]) * static_cast<double>(xr[r]);
          }
          total[ek] = sum;
        }
      });
      grad_w.copy_(at::tensor(total, at::TensorOptions().dtype(at::kDouble)).view({s.n, s.K}));
    }
  });
  return {grad_xs, grad_w};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdarts, m) {
  m.def("node_mix(Tensor[] xs, Tensor w) -> Tensor");
  m.def("node_mix_backward(Tensor grad, Tensor[] xs, Tensor w, bool need_xs, bool need_w) -> (Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(mdarts, CPU, m) {
  m.impl("node_mix", &node_mix_cpu);
  m.impl("node_mix_backward", &node_mix_backward_cpu);
}

}  // namespace mdarts
