//! Bindings of `mdarts_core::space`: primitives, α layouts and search-space sizes.

use mdarts_core::space::{self, AlphaLayout as CoreLayout, AlphaMode};
use num_bigint::BigUint;
use pyo3::prelude::*;

use crate::error::IntoPy;

/// Parse an α mode name.
pub fn mode(name: &str) -> PyResult<AlphaMode> {
    AlphaMode::parse(name).py()
}

/// Which α table each cell of a supernet reads.
#[pyclass(frozen, module = "mdarts_rs._core", name = "AlphaLayout")]
pub struct AlphaLayout {
    inner: CoreLayout,
}

#[pymethods]
impl AlphaLayout {
    #[new]
    #[pyo3(signature = (alpha_mode, layers))]
    fn new(alpha_mode: &str, layers: usize) -> PyResult<Self> {
        Ok(Self { inner: CoreLayout::new(mode(alpha_mode)?, layers).py()? })
    }

    /// 'shared' or 'multilevel'.
    #[getter]
    fn alpha_mode(&self) -> &'static str {
        self.inner.mode.name()
    }

    /// Number of cells.
    #[getter]
    fn layers(&self) -> usize {
        self.inner.cells.len()
    }

    /// Table names, in a fixed order.
    #[getter]
    fn tables(&self) -> Vec<String> {
        self.inner.tables.clone()
    }

    /// For each cell, the name of the table it reads.
    #[getter]
    fn cell_tables(&self) -> Vec<String> {
        self.inner.cells.iter().map(|c| self.inner.tables[c.table].clone()).collect()
    }

    /// For each cell, whether it is a reduction cell.
    #[getter]
    fn reduction(&self) -> Vec<bool> {
        self.inner.cells.iter().map(|c| c.reduction).collect()
    }

    /// For each cell, its level: 'low', 'mid' or 'high'.
    #[getter]
    fn levels(&self) -> Vec<&'static str> {
        self.inner.cells.iter().map(|c| c.level.name()).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "AlphaLayout(alpha_mode='{}', layers={}, tables={:?})",
            self.inner.mode.name(),
            self.inner.cells.len(),
            self.inner.tables
        )
    }
}

/// Exact size of the search space: the supernet space (`derived=False`: every edge any of the 8 ops) or
/// the space of derived networks (`derived=True`: 2 edges per node, one non-'none' op per edge).
#[pyfunction]
#[pyo3(signature = (alpha_mode = "multilevel", derived = false))]
pub fn search_space_size(alpha_mode: &str, derived: bool) -> PyResult<BigUint> {
    Ok(space::search_space_size(mode(alpha_mode)?, derived))
}

/// Number of distinct derived cells.
#[pyfunction]
pub fn derived_cell_count() -> u64 {
    space::derived_cell_count()
}

/// The positions of the two reduction cells in a network of `layers` cells (at most `MAX_LAYERS`).
#[pyfunction]
pub fn reduction_indices(layers: usize) -> PyResult<(usize, usize)> {
    Ok(space::reduction_indices(space::check_layers(layers).py()?))
}

/// Row of an α table for the edge from state `input` (0, 1: the cell's inputs; 2..: earlier intermediate
/// nodes) into intermediate node `node` (0-based): edges are numbered node by node, inputs in order.
#[pyfunction]
pub fn edge_index(node: usize, input: usize) -> PyResult<usize> {
    if node >= space::STEPS || input >= space::node_inputs(node) {
        let inputs = if node < space::STEPS { space::node_inputs(node) } else { 0 };
        return Err(crate::error::SearchSpaceError::new_err(format!(
            "no edge ({node}, {input}): node must be in 0..{} and input in 0..{inputs} for that node",
            space::STEPS
        )));
    }
    Ok(space::edge_index(node, input))
}
