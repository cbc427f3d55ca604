// Shared by the softmax_entropy CPU kernels (softmax_entropy.cpp) and CUDA kernels (softmax_entropy.cu):
// the argument checks and the per-row math, compiled for the host and for the device.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define MDARTS_HOST_DEVICE __host__ __device__
#else
#define MDARTS_HOST_DEVICE
#endif

namespace mdarts {

void check_softmax_entropy_args(const at::Tensor& alpha);

// The backward's inputs after checking their shapes: alpha, grad_p and grad_h contiguous, in alpha's dtype.
struct SoftmaxEntropyGrads {
  at::Tensor alpha, gp, gh;
};
SoftmaxEntropyGrads prepare_softmax_entropy_backward(const at::Tensor& grad_p, const at::Tensor& grad_h,
                                                     const at::Tensor& alpha);

namespace row {

template <typename T>
MDARTS_HOST_DEVICE inline T exp_(T x) {
#ifdef __CUDA_ARCH__
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
MDARTS_HOST_DEVICE inline T log_(T x) {
#ifdef __CUDA_ARCH__
  return log(x);
#else
  return std::log(x);
#endif
}

// The row maximum and ln z = ln sum exp(alpha - max): ln p_k = (alpha_k - max) - ln z, exact for the
// largest entries.
template <typename scalar_t, typename acc_t>
MDARTS_HOST_DEVICE inline void norm(const scalar_t* row, int64_t K, acc_t& mx, acc_t& logz) {
  mx = -static_cast<acc_t>(INFINITY);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t v = static_cast<acc_t>(row[k]);
    if (v > mx) mx = v;
  }
  acc_t z = 0;
  for (int64_t k = 0; k < K; ++k) z += exp_(static_cast<acc_t>(row[k]) - mx);
  logz = log_(z);
}

// p = softmax(row) and h = -sum_k p_k ln p_k of one row of K entries.
template <typename scalar_t, typename acc_t>
MDARTS_HOST_DEVICE inline void forward(const scalar_t* row, int64_t K, scalar_t* p, scalar_t* h) {
  acc_t mx, logz;
  norm<scalar_t, acc_t>(row, K, mx, logz);
  acc_t ent = 0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
    const acc_t pk = exp_(logp);
    p[k] = static_cast<scalar_t>(pk);
    ent -= pk * logp;
  }
  *h = static_cast<scalar_t>(ent);
}

// d/d alpha_j = p_j (gp_j - sum_k p_k gp_k) - gh p_j (ln p_j + h) for one row.
template <typename scalar_t, typename acc_t>
MDARTS_HOST_DEVICE inline void backward(const scalar_t* row, const scalar_t* gp, acc_t gh, int64_t K, scalar_t* out) {
  acc_t mx, logz;
  norm<scalar_t, acc_t>(row, K, mx, logz);
  acc_t dot = 0, ent = 0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
    const acc_t pk = exp_(logp);
    dot += pk * static_cast<acc_t>(gp[k]);
    ent -= pk * logp;
  }
  for (int64_t k = 0; k < K; ++k) {
    const acc_t logp = (static_cast<acc_t>(row[k]) - mx) - logz;
    const acc_t pk = exp_(logp);
    out[k] = static_cast<scalar_t>(pk * (static_cast<acc_t>(gp[k]) - dot) - gh * pk * (logp + ent));
  }
}

}  // namespace row
}  // namespace mdarts
