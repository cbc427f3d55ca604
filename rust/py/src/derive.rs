//! Bindings of `mdarts_core::derive`.

use mdarts_core::derive;
use mdarts_core::space::{NUM_EDGES, NUM_OPS};
use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::error::IntoPy;
use crate::genotype::{to_python, CellGenotype};

/// A weights table as float64 or float32 numpy array.
#[derive(FromPyObject)]
pub enum Weights<'py> {
    F64(PyReadonlyArrayDyn<'py, f64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
}

impl Weights<'_> {
    /// The values in row-major order and the shape. Copies: the table is 112 numbers. The values of a
    /// table of the wrong shape are not copied (the core reports the shape): a broadcast numpy array can
    /// claim any size without holding it.
    fn to_vec(&self) -> (Vec<f64>, Vec<usize>) {
        let shape = match self {
            Self::F64(a) => a.as_array().shape().to_vec(),
            Self::F32(a) => a.as_array().shape().to_vec(),
        };
        if shape != [NUM_EDGES, NUM_OPS] {
            return (Vec::new(), shape);
        }
        let values = match self {
            Self::F64(a) => a.as_array().iter().copied().collect(),
            Self::F32(a) => a.as_array().iter().map(|&x| x as f64).collect(),
        };
        (values, shape)
    }
}

/// Derive one cell from a (14, 8) table of op weights (softmax of α) with DARTS' rule: each node keeps
/// its 2 incoming edges with the strongest non-'none' weight, each with its strongest non-'none' op.
/// Ties go to the lower index. `max_skip`: at most this many skip_connect edges (P-DARTS: while there are
/// more, the weakest loses skip_connect and the cell is derived again).
#[pyfunction]
#[pyo3(signature = (weights, table = "cell", max_skip = None))]
pub fn derive_cell(weights: Weights<'_>, table: &str, max_skip: Option<usize>) -> PyResult<CellGenotype> {
    let (w, shape) = weights.to_vec();
    Ok(CellGenotype { inner: derive::derive_cell(&w, &shape, table, max_skip).py()? })
}

/// Derive a genotype from a dict of (14, 8) weight tables by name: `normal`/`reduce` gives a
/// `Genotype`, the five multi-level names a `MultiLevelGenotype`. `max_skip` caps the skip_connect edges of
/// every normal cell (P-DARTS); reduction cells are derived without it.
#[pyfunction]
#[pyo3(signature = (tables, max_skip = None))]
pub fn derive_genotype(
    py: Python<'_>,
    tables: std::collections::BTreeMap<String, Weights<'_>>,
    max_skip: Option<usize>,
) -> PyResult<PyObject> {
    let tables: Vec<(String, Vec<f64>, Vec<usize>)> = tables
        .into_iter()
        .map(|(name, w)| {
            let (v, s) = w.to_vec();
            (name, v, s)
        })
        .collect();
    let g = derive::derive_genotype(&tables, max_skip).py()?;
    to_python(py, g)
}
