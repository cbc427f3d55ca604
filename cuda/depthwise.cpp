// depthwise_conv: a depthwise convolution with channel multiplier m, for the batched search cell
// (mdarts_rs.fastcell): out[b, o] = conv(x[b, c], w[o]) for o = c·m + e (torch's conv2d with groups = C) or, with
// edge_major, o = e·C + c; one stride, padding and dilation for both spatial axes, no bias. Backward: the input
// gradient and the weight gradient, each computed once from g (the weight gradient deterministically). Schema
// and CPU kernels; the CUDA kernels are in depthwise.cu, the per-pixel math they share in depthwise.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "depthwise.h"

namespace mdarts {

DepthwiseShape check_depthwise_args(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t padding,
                                    int64_t dilation, bool edge_major) {
  TORCH_CHECK(x.dim() == 4, "depthwise_conv: x must be (batch, channels, height, width), got shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4 && w.size(1) == 1 && w.size(2) == w.size(3),
              "depthwise_conv: w must be (channels·multiplier, 1, K, K), got shape ", w.sizes());
  TORCH_CHECK(x.size(1) > 0 && w.size(0) % x.size(1) == 0, "depthwise_conv: w has ", w.size(0),
              " output channels, not a multiple of x's ", x.size(1), " channels");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "depthwise_conv: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "depthwise_conv: w must be floating point, got ", w.scalar_type());
  TORCH_CHECK(x.device() == w.device(), "depthwise_conv: x is on ", x.device(), " but w is on ", w.device());
  TORCH_CHECK(stride >= 1, "depthwise_conv: stride must be at least 1, got ", stride);
  TORCH_CHECK(padding >= 0, "depthwise_conv: padding must not be negative, got ", padding);
  TORCH_CHECK(dilation >= 1, "depthwise_conv: dilation must be at least 1, got ", dilation);
  DepthwiseShape s;
  s.B = x.size(0);
  s.C = x.size(1);
  s.H = x.size(2);
  s.W = x.size(3);
  s.m = w.size(0) / s.C;
  s.K = static_cast<int>(w.size(2));
  s.stride = static_cast<int>(stride);
  s.padding = static_cast<int>(padding);
  s.dilation = static_cast<int>(dilation);
  s.edge_major = edge_major;
  const int64_t span = dilation * (s.K - 1) + 1;
  TORCH_CHECK(s.H + 2 * padding >= span && s.W + 2 * padding >= span, "depthwise_conv: the ", s.H, "×", s.W,
              " input with padding ", padding, " is smaller than the dilated ", s.K, "×", s.K, " kernel");
  s.Ho = (s.H + 2 * padding - span) / stride + 1;
  s.Wo = (s.W + 2 * padding - span) / stride + 1;
  TORCH_CHECK(s.H * s.W < (int64_t{1} << 31) && s.Ho * s.Wo * s.m < (int64_t{1} << 31),
              "depthwise_conv: planes of ", s.H, "×", s.W, " are too large");
  return s;
}

DepthwiseBackward prepare_depthwise_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                             int64_t stride, int64_t padding, int64_t dilation, bool edge_major) {
  DepthwiseBackward out;
  out.s = check_depthwise_args(x, w, stride, padding, dilation, edge_major);
  const DepthwiseShape& s = out.s;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == s.B && grad.size(1) == s.O() && grad.size(2) == s.Ho &&
                  grad.size(3) == s.Wo,
              "depthwise_conv_backward: grad has shape ", grad.sizes(), " but the output is (", s.B, ", ", s.O(), ", ",
              s.Ho, ", ", s.Wo, ")");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "depthwise_conv_backward: grad is ", grad.scalar_type(),
              " but x is ", x.scalar_type());
  out.g = grad.contiguous();
  out.x = x.contiguous();
  out.w = w.to(at::toOpMathType(x.scalar_type())).contiguous();
  return out;
}

namespace {

at::Tensor depthwise_conv_cpu(const at::Tensor& x_in, const at::Tensor& w_in, int64_t stride, int64_t padding,
                              int64_t dilation, bool edge_major) {
  const DepthwiseShape s = check_depthwise_args(x_in, w_in, stride, padding, dilation, edge_major);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  at::Tensor out = at::empty({s.B, s.O(), s.Ho, s.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "depthwise_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kernel_size(s.K, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const acc_t* wp = w.data_ptr<acc_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      const int64_t P = s.Ho * s.Wo;
      const bool padded = padded_plane_fits(s, sizeof(acc_t));
      const int Hp = s.H + 2 * s.padding, Wp = s.W + 2 * s.padding;
      at::parallel_for(0, s.B * s.C, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> pad(padded ? Hp * Wp : 0);
        for (int64_t bc = begin; bc < end; ++bc) {
          const int64_t b = bc / s.C, c = bc % s.C;
          const scalar_t* plane = xp + bc * s.H * s.W;
          if (padded) dw::fill_padded(pad.data(), plane, s.H, s.W, s.padding, 0, 1);
          for (int64_t e = 0; e < s.m; ++e) {
            const int64_t o = dw::out_channel(s.edge_major, s.C, s.m, c, e);
            const acc_t* we = wp + o * K * K;
            scalar_t* dst = op + (b * s.O() + o) * P;
            for (int64_t y = 0; y < s.Ho; ++y)
              for (int64_t xo = 0; xo < s.Wo; ++xo)
                dst[y * s.Wo + xo] = static_cast<scalar_t>(
                    padded ? dw::forward_padded_at<K>(pad.data(), we, Wp, y, xo, s.stride, s.dilation)
                           : dw::forward_at<K>(plane, we, s.H, s.W, y, xo, s.stride, s.padding, s.dilation));
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in,
                                                               const at::Tensor& w_in, int64_t stride, int64_t padding,
                                                               int64_t dilation, bool edge_major, bool need_x,
                                                               bool need_w) {
  const DepthwiseBackward a = prepare_depthwise_backward(grad, x_in, w_in, stride, padding, dilation, edge_major);
  const DepthwiseShape& s = a.s;
  at::Tensor grad_x = need_x ? at::empty({s.B, s.C, s.H, s.W}, a.x.options()) : a.x.new_empty({0});
  at::Tensor grad_w = need_w ? at::empty(w_in.sizes(), w_in.options().memory_format(at::MemoryFormat::Contiguous))
                             : w_in.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.x.scalar_type(), "depthwise_conv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kernel_size(s.K, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const scalar_t* gp = a.g.data_ptr<scalar_t>();
      const scalar_t* xp = a.x.data_ptr<scalar_t>();
      const acc_t* wp = a.w.data_ptr<acc_t>();
      const int64_t P = s.Ho * s.Wo, HW = s.H * s.W;
      if (need_x) {
        scalar_t* gx = grad_x.data_ptr<scalar_t>();
        at::parallel_for(0, s.B * s.C, 1, [&](int64_t begin, int64_t end) {
          for (int64_t bc = begin; bc < end; ++bc) {
            const int64_t b = bc / s.C, c = bc % s.C;
            // the m output planes of input plane (b, c) and their kernels, one step apart
            const int64_t o0 = dw::out_channel(s.edge_major, s.C, s.m, c, 0), step = s.edge_major ? s.C : 1;
            for (int64_t y = 0; y < s.H; ++y)
              for (int64_t xi = 0; xi < s.W; ++xi)
                gx[bc * HW + y * s.W + xi] = static_cast<scalar_t>(
                    dw::grad_input_at<K>(gp + (b * s.O() + o0) * P, step * P, wp + o0 * K * K, step * K * K, s.m, s.Ho,
                                         s.Wo, y, xi, s.stride, s.padding, s.dilation));
          }
        });
      }
      if (need_w) {
        std::vector<double> total(s.O() * K * K);
        const bool padded = padded_plane_fits(s, sizeof(acc_t));
        const int Hp = s.H + 2 * s.padding, Wp = s.W + 2 * s.padding;
        at::parallel_for(0, s.O(), 1, [&](int64_t begin, int64_t end) {
          std::vector<double> pad(padded ? Hp * Wp : 0);
          for (int64_t o = begin; o < end; ++o) {
            double acc[K * K] = {};
            const int64_t c = dw::in_channel(s.edge_major, s.C, s.m, o);
            for (int64_t b = 0; b < s.B; ++b) {
              const scalar_t* g_plane = gp + (b * s.O() + o) * P;
              const scalar_t* plane = xp + (b * s.C + c) * HW;
              if (padded) dw::fill_padded(pad.data(), plane, s.H, s.W, s.padding, 0, 1);
              for (int64_t y = 0; y < s.Ho; ++y)
                for (int64_t xo = 0; xo < s.Wo; ++xo) {
                  const double gv = static_cast<double>(g_plane[y * s.Wo + xo]);
                  if (padded)
                    dw::grad_weight_add_padded<K>(gv, pad.data(), Wp, y, xo, s.stride, s.dilation, acc);
                  else
                    dw::grad_weight_add<K>(gv, plane, s.H, s.W, y, xo, s.stride, s.padding, s.dilation, acc);
                }
            }
            for (int t = 0; t < K * K; ++t) total[o * K * K + t] = acc[t];
          }
        });
        grad_w.copy_(at::tensor(total, at::TensorOptions().dtype(at::kDouble)).view(w_in.sizes()));
      }
    });
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdarts, m) {
  // No defaults (see bn_mix): every argument is passed, so autograd sees the same inputs on every torch.
  m.def("depthwise_conv(Tensor x, Tensor w, int stride, int padding, int dilation, bool edge_major) -> Tensor");
  m.def(
      "depthwise_conv_backward(Tensor grad, Tensor x, Tensor w, int stride, int padding, int dilation, "
      "bool edge_major, bool need_x, bool need_w) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdarts, CPU, m) {
  m.impl("depthwise_conv", &depthwise_conv_cpu);
  m.impl("depthwise_conv_backward", &depthwise_conv_backward_cpu);
}

}  // namespace mdarts
