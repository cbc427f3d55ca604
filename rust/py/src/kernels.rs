//! The C++/CUDA sources of the fused ops (`cuda/`), embedded so that an installed wheel can build them
//! with torch.utils.cpp_extension on first use.

use pyo3::prelude::*;

const SOURCES: &[(&str, &str)] = &[
    ("weighted_sum.h", include_str!("../../../cuda/weighted_sum.h")),
    ("weighted_sum.cpp", include_str!("../../../cuda/weighted_sum.cpp")),
    ("weighted_sum.cu", include_str!("../../../cuda/weighted_sum.cu")),
    ("softmax_entropy.h", include_str!("../../../cuda/softmax_entropy.h")),
    ("softmax_entropy.cpp", include_str!("../../../cuda/softmax_entropy.cpp")),
    ("softmax_entropy.cu", include_str!("../../../cuda/softmax_entropy.cu")),
];

/// The fused ops' sources as (file name, text) pairs, from the project's `cuda/` folder.
#[pyfunction]
pub fn kernel_sources() -> Vec<(&'static str, &'static str)> {
    SOURCES.to_vec()
}
