//! Bindings of `mdarts_core::enumerate`: ranking, unranking and uniform sampling.

use mdarts_core::enumerate;
use mdarts_core::rng::Rng;
use num_bigint::BigUint;
use pyo3::prelude::*;

use crate::error::IntoPy;
use crate::genotype::{to_python, AnyGenotype, CellGenotype};
use crate::space::mode;

/// Rank of a derived cell in `[0, derived_cell_count())`.
#[pyfunction]
pub fn rank_cell(cell: &CellGenotype) -> PyResult<u64> {
    enumerate::rank_cell(&cell.inner).py()
}

/// The derived cell of a rank.
#[pyfunction]
pub fn unrank_cell(rank: u64) -> PyResult<CellGenotype> {
    Ok(CellGenotype { inner: enumerate::unrank_cell(rank).py()? })
}

/// Rank of a genotype in `[0, search_space_size(mode, derived=True))`.
#[pyfunction]
pub fn rank_genotype(genotype: AnyGenotype) -> PyResult<BigUint> {
    enumerate::rank_genotype(genotype.inner()).py()
}

/// The genotype of a rank.
#[pyfunction]
#[pyo3(signature = (rank, alpha_mode = "multilevel"))]
pub fn unrank_genotype(py: Python<'_>, rank: BigUint, alpha_mode: &str) -> PyResult<PyObject> {
    let g = enumerate::unrank_genotype(mode(alpha_mode)?, &rank).py()?;
    to_python(py, g)
}

/// A derived cell drawn uniformly at random from `seed`.
#[pyfunction]
pub fn sample_cell(seed: u64) -> CellGenotype {
    CellGenotype { inner: enumerate::sample_cell(&mut Rng::new(seed)) }
}

/// A genotype drawn uniformly at random from `seed` (the random-search baseline).
#[pyfunction]
#[pyo3(signature = (seed, alpha_mode = "multilevel"))]
pub fn sample_genotype(py: Python<'_>, seed: u64, alpha_mode: &str) -> PyResult<PyObject> {
    to_python(py, enumerate::sample_genotype(mode(alpha_mode)?, seed))
}
