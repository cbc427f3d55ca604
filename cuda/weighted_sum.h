// Shared declarations of the weighted_sum CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace mdarts {

// Check shapes, dtypes and devices of weighted_sum's arguments (TORCH_CHECK with a message).
void check_weighted_sum_args(const at::TensorList xs, const at::Tensor& w);

// The inputs as tensors sharing one dense memory layout, read as flat buffers in memory order.
std::vector<at::Tensor> dense_inputs(const at::TensorList xs);

}  // namespace mdarts
