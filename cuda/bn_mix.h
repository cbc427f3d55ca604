// Shared declarations of the bn_mix CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>
#include <vector>

namespace mdarts {

// The shape of one bn_mix call: S shared inputs (B, G*C, H, W) and K per-edge inputs (B, n*C, H, W) for n
// edges of C channels each; R = H*W values per batch row and channel. The shared inputs hold G groups of C
// channels (G divides n): edge e reads group e / (n/G), so consecutive runs of n/G edges share a group.
struct BnMixShape {
  int64_t B = 0, n = 0, C = 0, R = 0, K = 0, S = 0, G = 1;
  int64_t channels() const { return n * C; }
  int64_t count() const { return B * R; }  // values per channel: the batch-norm statistics' N
  int64_t edges_per_group() const { return n / G; }
  // Offset of shared input value (b, group of edge e, c, r).
  int64_t shared_at(int64_t b, int64_t e, int64_t c, int64_t r) const {
    return ((b * G + e / edges_per_group()) * C + c) * R + r;
  }
};

// Check bn_mix's arguments (TORCH_CHECK with a message naming the argument) and return their shape.
BnMixShape check_bn_mix_args(const at::TensorList xs, const at::TensorList shared, const at::Tensor& w, double eps);

// The statistics' type for inputs of type t: float for float, half and bfloat16, double for double; and the
// same as a C++ type for inputs of C++ type T.
at::ScalarType bn_mix_stat_type(at::ScalarType t);
template <typename T>
using bn_mix_stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// What both backward kernels start from: checked arguments, g, the inputs and their statistics contiguous,
// and the outputs allocated, uninitialised (unneeded gradients come back with 0 elements, never undefined).
struct BnMixBackward {
  BnMixShape shape;
  at::Tensor g, mean, var;
  std::vector<at::Tensor> xs, shared;
  std::vector<at::Tensor> grad_xs, grad_shared;
  at::Tensor grad_w;
};
// With relu, the output gradient is masked where the output is not positive; the mask is recomputed from the
// inputs, so the shared inputs are read then too.
BnMixBackward prepare_bn_mix_backward(const at::Tensor& grad, const at::TensorList xs, const at::TensorList shared,
                                      const at::Tensor& w, const at::Tensor& mean, const at::Tensor& var, double eps,
                                      bool relu, bool need_xs, bool need_shared, bool need_w);

}  // namespace mdarts
