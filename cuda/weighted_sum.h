// Shared declarations of the weighted_sum CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace mdarts {

// Check shapes, dtypes and devices of weighted_sum's arguments (TORCH_CHECK with a message).
void check_weighted_sum_args(const at::TensorList xs, const at::Tensor& w);

// The inputs as tensors sharing one dense memory layout, read as flat buffers in memory order.
std::vector<at::Tensor> dense_inputs(const at::TensorList xs);

// What both backward kernels start from: checked arguments, g and the inputs in one dense layout, and
// the outputs allocated (unneeded gradients come back empty, 0 elements, never undefined).
struct BackwardSetup {
  at::Tensor g;
  std::vector<at::Tensor> xs;
  std::vector<at::Tensor> grad_xs;
  at::Tensor grad_w;
};
BackwardSetup prepare_backward(const at::Tensor& grad, const at::TensorList xs, const at::Tensor& w, bool need_xs,
                               bool need_w);

}  // namespace mdarts
