//! Bindings of `mdarts_core::genotype`: `CellGenotype`, `Genotype` (DARTS) and `MultiLevelGenotype`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use mdarts_core::genotype::DEFAULT_CONCAT;
use mdarts_core::{AlphaMode, CellGenotype as CoreCell, NetworkGenotype, PRIMITIVES};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::IntoPy;

/// A derived cell: 2 edges `(op, input)` per intermediate node, in node order, and the concatenated nodes.
#[pyclass(frozen, eq, module = "mdarts_rs._core", name = "CellGenotype")]
#[derive(Clone, PartialEq)]
pub struct CellGenotype {
    pub inner: CoreCell,
}

#[pymethods]
impl CellGenotype {
    #[new]
    #[pyo3(signature = (edges, concat = None))]
    fn new(edges: Vec<(String, usize)>, concat: Option<Vec<usize>>) -> PyResult<Self> {
        let concat = concat.unwrap_or_else(|| DEFAULT_CONCAT.to_vec());
        Ok(Self { inner: CoreCell::from_named(&edges, concat, "cell").py()? })
    }

    /// Edges as `(op name, input node)`, 2 per intermediate node.
    #[getter]
    fn edges(&self) -> Vec<(&'static str, usize)> {
        self.inner.named_edges()
    }

    /// Nodes whose outputs form the cell output.
    #[getter]
    fn concat(&self) -> Vec<usize> {
        self.inner.concat().to_vec()
    }

    /// How many kept edges use each op (every primitive listed, zeros included).
    fn op_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, n) in PRIMITIVES.iter().zip(self.inner.op_counts()) {
            d.set_item(name, n)?;
        }
        Ok(d)
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.inner.canonical_edges().hash(&mut h);
        self.inner.concat().hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!("CellGenotype(edges={}, concat={:?})", self.inner.edges_text(), self.inner.concat())
    }
}

/// A cell argument: a `CellGenotype` or a list of `(op, input)` pairs.
#[derive(FromPyObject)]
pub enum CellArg {
    Cell(CellGenotype),
    Edges(Vec<(String, usize)>),
}

fn cell_of(arg: CellArg, concat: Option<Vec<usize>>, at: &str) -> PyResult<CoreCell> {
    match arg {
        CellArg::Cell(c) if concat.is_none() => Ok(c.inner),
        CellArg::Cell(c) => CoreCell::new(c.inner.edges().to_vec(), concat.unwrap_or_default(), at).py(),
        CellArg::Edges(e) => CoreCell::from_named(&e, concat.unwrap_or_else(|| DEFAULT_CONCAT.to_vec()), at).py(),
    }
}

fn cells_dict<'py>(py: Python<'py>, g: &NetworkGenotype) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, cell) in g.mode().table_names().iter().zip(g.cells()) {
        d.set_item(name, CellGenotype { inner: cell.clone() })?;
    }
    Ok(d)
}

fn cell(g: &NetworkGenotype, table: &str) -> CellGenotype {
    CellGenotype { inner: g.cell(table).expect("table of this mode").clone() }
}

/// Parse text or JSON into a genotype of either mode.
fn parse_any(text: &str) -> PyResult<NetworkGenotype> {
    if text.trim_start().starts_with('{') {
        NetworkGenotype::from_json(text).py()
    } else {
        NetworkGenotype::from_text(text).py()
    }
}

/// A DARTS genotype: one normal cell and one reduction cell shared by the whole network.
#[pyclass(frozen, eq, module = "mdarts_rs._core", name = "Genotype")]
#[derive(Clone, PartialEq)]
pub struct Genotype {
    pub inner: NetworkGenotype,
}

#[pymethods]
impl Genotype {
    #[new]
    #[pyo3(signature = (normal, reduce, normal_concat = None, reduce_concat = None))]
    fn new(
        normal: CellArg,
        reduce: CellArg,
        normal_concat: Option<Vec<usize>>,
        reduce_concat: Option<Vec<usize>>,
    ) -> PyResult<Self> {
        let cells = vec![cell_of(normal, normal_concat, "normal")?, cell_of(reduce, reduce_concat, "reduce")?];
        Ok(Self { inner: NetworkGenotype::new(AlphaMode::Shared, cells).py()? })
    }

    /// Parse DARTS' text, `Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`.
    #[staticmethod]
    fn from_darts(text: &str) -> PyResult<Self> {
        Self::from_inner(NetworkGenotype::from_text(text).py()?)
    }

    /// Parse the JSON form written by `to_json`.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        Self::from_inner(NetworkGenotype::from_json(text).py()?)
    }

    /// DARTS' text form.
    fn to_darts(&self) -> String {
        self.inner.to_text()
    }

    /// JSON text.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// The multi-level genotype with this normal cell at every level and this reduction cell at both reductions.
    fn to_multilevel(&self) -> MultiLevelGenotype {
        MultiLevelGenotype { inner: self.inner.to_multilevel() }
    }

    /// Always 'shared'.
    #[getter]
    fn alpha_mode(&self) -> &'static str {
        self.inner.mode().name()
    }

    /// Cells by table name.
    #[getter]
    fn cells<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cells_dict(py, &self.inner)
    }

    /// The normal cell.
    #[getter]
    fn normal(&self) -> CellGenotype {
        cell(&self.inner, "normal")
    }

    /// The reduction cell.
    #[getter]
    fn reduce(&self) -> CellGenotype {
        cell(&self.inner, "reduce")
    }

    fn __repr__(&self) -> String {
        self.inner.to_text()
    }
}

impl Genotype {
    fn from_inner(inner: NetworkGenotype) -> PyResult<Self> {
        if inner.mode() != AlphaMode::Shared {
            return Err(crate::error::GenotypeError::new_err(
                "this is a multi-level genotype; read it with MultiLevelGenotype",
            ));
        }
        Ok(Self { inner })
    }
}

/// A multi-level genotype (Li, Chen, Sun 2021): own normal cells for the low, mid and high levels and
/// own cells for the two reductions.
#[pyclass(frozen, eq, module = "mdarts_rs._core", name = "MultiLevelGenotype")]
#[derive(Clone, PartialEq)]
pub struct MultiLevelGenotype {
    pub inner: NetworkGenotype,
}

#[pymethods]
impl MultiLevelGenotype {
    #[new]
    #[pyo3(signature = (normal_low, reduce_low, normal_mid, reduce_mid, normal_high))]
    fn new(
        normal_low: CellArg,
        reduce_low: CellArg,
        normal_mid: CellArg,
        reduce_mid: CellArg,
        normal_high: CellArg,
    ) -> PyResult<Self> {
        let args = [normal_low, reduce_low, normal_mid, reduce_mid, normal_high];
        let cells = args
            .into_iter()
            .zip(AlphaMode::Multilevel.table_names())
            .map(|(a, name)| cell_of(a, None, name))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { inner: NetworkGenotype::new(AlphaMode::Multilevel, cells).py()? })
    }

    /// Parse text or JSON of either form; a DARTS genotype becomes the same cells at every level.
    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        Ok(Self { inner: parse_any(text)?.to_multilevel() })
    }

    /// Parse the JSON form (either mode; a DARTS genotype is converted).
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        Ok(Self { inner: NetworkGenotype::from_json(text).py()?.to_multilevel() })
    }

    /// Parse the text form (either mode; a DARTS genotype is converted).
    #[staticmethod]
    fn from_text(text: &str) -> PyResult<Self> {
        Ok(Self { inner: NetworkGenotype::from_text(text).py()?.to_multilevel() })
    }

    /// Text form, `MultiLevelGenotype(normal_low=[...], normal_low_concat=[...], ...)`.
    fn to_text(&self) -> String {
        self.inner.to_text()
    }

    /// JSON text.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// Always 'multilevel'.
    #[getter]
    fn alpha_mode(&self) -> &'static str {
        self.inner.mode().name()
    }

    /// Cells by table name.
    #[getter]
    fn cells<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cells_dict(py, &self.inner)
    }

    #[getter]
    fn normal_low(&self) -> CellGenotype {
        cell(&self.inner, "normal_low")
    }

    #[getter]
    fn reduce_low(&self) -> CellGenotype {
        cell(&self.inner, "reduce_low")
    }

    #[getter]
    fn normal_mid(&self) -> CellGenotype {
        cell(&self.inner, "normal_mid")
    }

    #[getter]
    fn reduce_mid(&self) -> CellGenotype {
        cell(&self.inner, "reduce_mid")
    }

    #[getter]
    fn normal_high(&self) -> CellGenotype {
        cell(&self.inner, "normal_high")
    }

    fn __repr__(&self) -> String {
        self.inner.to_text()
    }
}

/// A genotype of either mode, for functions that accept or return both.
#[derive(FromPyObject)]
pub enum AnyGenotype {
    Darts(Genotype),
    Multi(MultiLevelGenotype),
}

impl AnyGenotype {
    pub fn inner(&self) -> &NetworkGenotype {
        match self {
            Self::Darts(g) => &g.inner,
            Self::Multi(g) => &g.inner,
        }
    }
}

/// Wrap a core genotype in the Python class of its mode.
pub fn to_python(py: Python<'_>, g: NetworkGenotype) -> PyResult<PyObject> {
    Ok(match g.mode() {
        AlphaMode::Shared => Genotype { inner: g }.into_pyobject(py)?.into_any().unbind(),
        AlphaMode::Multilevel => MultiLevelGenotype { inner: g }.into_pyobject(py)?.into_any().unbind(),
    })
}

/// Parse a genotype of either mode from JSON or text; returns `Genotype` or `MultiLevelGenotype`.
#[pyfunction]
pub fn parse_genotype(py: Python<'_>, text: &str) -> PyResult<PyObject> {
    to_python(py, parse_any(text)?)
}
