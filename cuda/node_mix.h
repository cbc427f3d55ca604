// Shared declarations of the node_mix CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace mdarts {

// The shape of one node_mix call: B batch rows, n edges, R values per edge and row, K op outputs, and
// for each output whether it holds one slice per edge (n) or one shared by every edge (1).
struct NodeMixShape {
  int64_t B = 0, n = 0, R = 0, K = 0;
  std::vector<bool> per_edge;
};

// Blocks of `threads` threads for a grid-stride loop over `work` items: one item per thread, at most 8192
// blocks (the elementwise kernels of node_mix and bn_mix).
inline int grid_blocks(int64_t work, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, 8192)));
}

// Weights in the accumulation type acc; no copy when they already are (their strides go to the kernels).
inline at::Tensor weights_as(const at::Tensor& w, at::ScalarType acc) { return w.scalar_type() == acc ? w : w.to(acc); }

// Check node_mix's arguments (TORCH_CHECK with a message naming the argument) and return their shape.
NodeMixShape check_node_mix_args(const at::TensorList xs, const at::Tensor& w);

// The op outputs as contiguous tensors (copies only of those that are not).
std::vector<at::Tensor> contiguous_inputs(const at::TensorList xs);

// What both backward kernels start from: checked arguments and shape, g and (when grad_w is needed) the
// inputs contiguous, and the outputs allocated, uninitialised (unneeded gradients come back with 0
// elements, never undefined).
struct NodeMixBackward {
  NodeMixShape shape;
  at::Tensor g;
  std::vector<at::Tensor> xs;
  std::vector<at::Tensor> grad_xs;
  at::Tensor grad_w;
};
NodeMixBackward prepare_node_mix_backward(const at::Tensor& grad, const at::TensorList xs, const at::Tensor& w,
                                          bool need_xs, bool need_w);

}  // namespace mdarts
