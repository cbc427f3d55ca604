//! Genotypes: derived cells and whole networks (DARTS' two cells or the five cells of multi-level DARTS),
//! with validation, a JSON form and the `Genotype(normal=[...], ...)` text that DARTS-family projects publish.

use serde_json::{json, Map, Value};

use crate::error::GenotypeError;
use crate::space::{node_inputs, op_index, AlphaMode, EDGES_PER_NODE, NONE_OP, NUM_INPUTS, PRIMITIVES, STEPS};

/// The default output of a cell: the concatenation of all intermediate nodes.
pub const DEFAULT_CONCAT: [usize; STEPS] = [2, 3, 4, 5];

/// A derived cell: for each intermediate node in order, 2 edges `(op, input)`, and the concatenated nodes.
///
/// Ops are indices into [`PRIMITIVES`]; inputs are node indices (0 and 1 are the cell inputs, 2.. the
/// intermediates). Within a node, edges keep the order they were given in (derivation gives the stronger
/// edge first, as DARTS does); equality and ranking ignore that order.
#[derive(Clone, Debug)]
pub struct CellGenotype {
    edges: Vec<(usize, usize)>,
    concat: Vec<usize>,
}

impl PartialEq for CellGenotype {
    fn eq(&self, other: &Self) -> bool {
        self.canonical_edges() == other.canonical_edges() && self.concat == other.concat
    }
}
impl Eq for CellGenotype {}

impl CellGenotype {
    /// A validated cell; `at` names the cell in error messages.
    pub fn new(edges: Vec<(usize, usize)>, concat: Vec<usize>, at: &str) -> Result<Self, GenotypeError> {
        validate(&edges, &concat, at)?;
        Ok(Self { edges, concat })
    }

    /// A validated cell from op names.
    pub fn from_named(edges: &[(String, usize)], concat: Vec<usize>, at: &str) -> Result<Self, GenotypeError> {
        let mut out = Vec::with_capacity(edges.len());
        for (i, (name, input)) in edges.iter().enumerate() {
            let op = op_index(name).ok_or_else(|| {
                GenotypeError::invalid(
                    format!("{at}.edges[{i}]"),
                    format!("unknown op '{name}' (known: {})", PRIMITIVES.join(", ")),
                )
            })?;
            out.push((op, *input));
        }
        Self::new(out, concat, at)
    }

    /// Edges `(op index, input node)`, 2 per intermediate node, in node order.
    pub fn edges(&self) -> &[(usize, usize)] {
        &self.edges
    }

    /// Edges with op names.
    pub fn named_edges(&self) -> Vec<(&'static str, usize)> {
        self.edges.iter().map(|&(op, input)| (PRIMITIVES[op], input)).collect()
    }

    /// Nodes whose outputs are concatenated.
    pub fn concat(&self) -> &[usize] {
        &self.concat
    }

    /// Edges with each node's pair sorted by input index: the form used for equality and ranking.
    pub fn canonical_edges(&self) -> Vec<(usize, usize)> {
        let mut e = self.edges.clone();
        for pair in e.chunks_mut(EDGES_PER_NODE) {
            pair.sort_by_key(|&(op, input)| (input, op));
        }
        e
    }

    /// How many kept edges use each op, indexed like [`PRIMITIVES`].
    pub fn op_counts(&self) -> [usize; PRIMITIVES.len()] {
        let mut counts = [0; PRIMITIVES.len()];
        for &(op, _) in &self.edges {
            counts[op] += 1;
        }
        counts
    }

    /// `[('sep_conv_3x3', 0), ...]`, the list form of DARTS' text.
    pub fn edges_text(&self) -> String {
        let items: Vec<String> = self.named_edges().iter().map(|(op, i)| format!("('{op}', {i})")).collect();
        format!("[{}]", items.join(", "))
    }

    fn concat_text(&self) -> String {
        let items: Vec<String> = self.concat.iter().map(|c| c.to_string()).collect();
        format!("[{}]", items.join(", "))
    }

    /// JSON: `{"edges": [["sep_conv_3x3", 0], ...], "concat": [2, 3, 4, 5]}`.
    pub fn to_json_value(&self) -> Value {
        let edges: Vec<Value> = self.named_edges().iter().map(|(op, i)| json!([op, i])).collect();
        json!({ "edges": edges, "concat": self.concat })
    }

    /// Parse the JSON form; `at` names the cell in error messages.
    pub fn from_json_value(v: &Value, at: &str) -> Result<Self, GenotypeError> {
        let obj =
            v.as_object().ok_or_else(|| GenotypeError::invalid(at, "expected an object with 'edges' and 'concat'"))?;
        let edges_v = obj
            .get("edges")
            .and_then(Value::as_array)
            .ok_or_else(|| GenotypeError::invalid(format!("{at}.edges"), "missing, or not a list"))?;
        let mut edges = Vec::with_capacity(edges_v.len());
        for (i, e) in edges_v.iter().enumerate() {
            let here = format!("{at}.edges[{i}]");
            let pair = e
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| GenotypeError::invalid(&here, "expected [op name, input index]"))?;
            let name = pair[0].as_str().ok_or_else(|| GenotypeError::invalid(&here, "op name must be a string"))?;
            let input = json_index(&pair[1])
                .ok_or_else(|| GenotypeError::invalid(&here, "input must be a non-negative integer"))?;
            edges.push((name.to_string(), input));
        }
        let concat = match obj.get("concat") {
            None => DEFAULT_CONCAT.to_vec(),
            Some(c) => {
                let arr = c
                    .as_array()
                    .ok_or_else(|| GenotypeError::invalid(format!("{at}.concat"), "must be a list of node indices"))?;
                arr.iter()
                    .map(|x| {
                        json_index(x).ok_or_else(|| {
                            GenotypeError::invalid(format!("{at}.concat"), "must be a list of node indices")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Self::from_named(&edges, concat, at)
    }
}

fn json_index(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

fn validate(edges: &[(usize, usize)], concat: &[usize], at: &str) -> Result<(), GenotypeError> {
    let want = STEPS * EDGES_PER_NODE;
    if edges.len() != want {
        return Err(GenotypeError::invalid(
            format!("{at}.edges"),
            format!("a cell has {want} edges ({EDGES_PER_NODE} for each of its {STEPS} nodes), got {}", edges.len()),
        ));
    }
    for (node, pair) in edges.chunks(EDGES_PER_NODE).enumerate() {
        for (k, &(op, input)) in pair.iter().enumerate() {
            let here = format!("{at}.edges[{}]", node * EDGES_PER_NODE + k);
            if op >= PRIMITIVES.len() {
                return Err(GenotypeError::invalid(here, format!("op index {op} is not below {}", PRIMITIVES.len())));
            }
            if op == NONE_OP {
                return Err(GenotypeError::invalid(here, "'none' cannot be an edge of a derived cell"));
            }
            if input >= node_inputs(node) {
                return Err(GenotypeError::invalid(
                    here,
                    format!(
                        "node {} can only read earlier nodes 0..{}, got input {input}",
                        node + NUM_INPUTS,
                        node + NUM_INPUTS
                    ),
                ));
            }
        }
        if pair[0].1 == pair[1].1 {
            return Err(GenotypeError::invalid(
                format!("{at}.edges[{}]", node * EDGES_PER_NODE + 1),
                format!(
                    "both edges of node {} read node {}; a node keeps 2 distinct edges",
                    node + NUM_INPUTS,
                    pair[0].1
                ),
            ));
        }
    }
    if concat.is_empty() {
        return Err(GenotypeError::invalid(format!("{at}.concat"), "must name at least one node"));
    }
    for (i, &c) in concat.iter().enumerate() {
        if !(NUM_INPUTS..NUM_INPUTS + STEPS).contains(&c) {
            return Err(GenotypeError::invalid(
                format!("{at}.concat"),
                format!("node {c} is not an intermediate node ({}..{})", NUM_INPUTS, NUM_INPUTS + STEPS - 1),
            ));
        }
        if concat[..i].contains(&c) {
            return Err(GenotypeError::invalid(format!("{at}.concat"), format!("node {c} appears twice")));
        }
    }
    Ok(())
}

/// A whole network's genotype: one cell per α table of `mode`, in the order of `mode.table_names()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkGenotype {
    mode: AlphaMode,
    cells: Vec<CellGenotype>,
}

impl NetworkGenotype {
    /// A genotype from its cells, one per table of `mode`.
    pub fn new(mode: AlphaMode, cells: Vec<CellGenotype>) -> Result<Self, GenotypeError> {
        let n = mode.table_names().len();
        if cells.len() != n {
            return Err(GenotypeError::invalid(
                mode.name(),
                format!(
                    "a {} genotype has {n} cells ({}), got {}",
                    mode.name(),
                    mode.table_names().join(", "),
                    cells.len()
                ),
            ));
        }
        Ok(Self { mode, cells })
    }

    /// The layout mode this genotype belongs to.
    pub fn mode(&self) -> AlphaMode {
        self.mode
    }

    /// Cells in table order.
    pub fn cells(&self) -> &[CellGenotype] {
        &self.cells
    }

    /// The cell of the named table.
    pub fn cell(&self, table: &str) -> Option<&CellGenotype> {
        self.mode.table_names().iter().position(|t| *t == table).map(|i| &self.cells[i])
    }

    /// The multi-level form: a DARTS genotype gives its normal cell to every level and its reduction
    /// cell to both reductions.
    pub fn to_multilevel(&self) -> Self {
        match self.mode {
            AlphaMode::Multilevel => self.clone(),
            AlphaMode::Shared => {
                let (n, r) = (&self.cells[0], &self.cells[1]);
                Self { mode: AlphaMode::Multilevel, cells: vec![n.clone(), r.clone(), n.clone(), r.clone(), n.clone()] }
            }
        }
    }

    /// JSON: `{"alpha_mode": "...", "cells": {"<table>": <cell>, ...}}`.
    pub fn to_json_value(&self) -> Value {
        let mut cells = Map::new();
        for (name, cell) in self.mode.table_names().iter().zip(&self.cells) {
            cells.insert(name.to_string(), cell.to_json_value());
        }
        json!({ "alpha_mode": self.mode.name(), "cells": cells })
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_json_value()).expect("a JSON value always serialises")
    }

    /// Parse the JSON form.
    pub fn from_json(text: &str) -> Result<Self, GenotypeError> {
        let v: Value = serde_json::from_str(text).map_err(|e| GenotypeError::Parse(format!("invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| GenotypeError::invalid("genotype", "expected a JSON object"))?;
        let mode_name = obj.get("alpha_mode").and_then(Value::as_str).ok_or_else(|| {
            GenotypeError::invalid("alpha_mode", "missing, or not a string ('shared' or 'multilevel')")
        })?;
        let mode = AlphaMode::parse(mode_name).map_err(|e| GenotypeError::invalid("alpha_mode", e.to_string()))?;
        let cells_v = obj
            .get("cells")
            .and_then(Value::as_object)
            .ok_or_else(|| GenotypeError::invalid("cells", "missing, or not an object of cells by table name"))?;
        for key in cells_v.keys() {
            if !mode.table_names().contains(&key.as_str()) {
                return Err(GenotypeError::invalid(
                    format!("cells.{key}"),
                    format!("not a table of a {} genotype ({})", mode.name(), mode.table_names().join(", ")),
                ));
            }
        }
        let mut cells = Vec::new();
        for name in mode.table_names() {
            let at = format!("cells.{name}");
            let c = cells_v.get(*name).ok_or_else(|| GenotypeError::invalid(&at, "missing"))?;
            cells.push(CellGenotype::from_json_value(c, &at)?);
        }
        Self::new(mode, cells)
    }

    /// DARTS' text: `Genotype(normal=[('op', i), ...], normal_concat=[2, 3, 4, 5], reduce=..., reduce_concat=...)`.
    /// A multi-level genotype uses the same form with its five table names.
    pub fn to_text(&self) -> String {
        let name = match self.mode {
            AlphaMode::Shared => "Genotype",
            AlphaMode::Multilevel => "MultiLevelGenotype",
        };
        let parts: Vec<String> = self
            .mode
            .table_names()
            .iter()
            .zip(&self.cells)
            .map(|(t, c)| format!("{t}={}, {t}_concat={}", c.edges_text(), c.concat_text()))
            .collect();
        format!("{name}({})", parts.join(", "))
    }

    /// Parse the text form, as published by DARTS, P-DARTS, PC-DARTS and others (`normal_concat=range(2, 6)`
    /// and an optional `NAME = ` prefix accepted). The table names decide the mode.
    pub fn from_text(text: &str) -> Result<Self, GenotypeError> {
        crate::genotype_text::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const DARTS_V2: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

    #[test]
    fn darts_v2_round_trips_through_text_and_json() {
        let g = NetworkGenotype::from_text(DARTS_V2).unwrap();
        assert_eq!(g.mode(), AlphaMode::Shared);
        assert_eq!(g.to_text(), DARTS_V2);
        assert_eq!(NetworkGenotype::from_json(&g.to_json()).unwrap(), g);
        assert_eq!(g.cell("normal").unwrap().op_counts()[3], 2);
    }

    #[test]
    fn shared_converts_to_multilevel_with_same_cells() {
        let g = NetworkGenotype::from_text(DARTS_V2).unwrap().to_multilevel();
        assert_eq!(g.cell("normal_high"), NetworkGenotype::from_text(DARTS_V2).unwrap().cell("normal"));
        assert_eq!(g.cell("reduce_mid"), g.cell("reduce_low"));
    }

    #[test]
    fn invalid_cells_are_refused_with_location() {
        let ok = |e: Vec<(usize, usize)>| CellGenotype::new(e, DEFAULT_CONCAT.to_vec(), "normal");
        let base = vec![(4, 0), (4, 1), (4, 0), (4, 1), (4, 1), (3, 0), (3, 0), (6, 2)];
        assert!(ok(base.clone()).is_ok());
        let mut none = base.clone();
        none[3].0 = 0;
        assert_eq!(ok(none).unwrap_err().to_string(), "normal.edges[3]: 'none' cannot be an edge of a derived cell");
        let mut later = base.clone();
        later[1].1 = 2;
        assert!(ok(later).unwrap_err().to_string().contains("normal.edges[1]: node 2 can only read"));
        assert!(ok(base[..6].to_vec()).unwrap_err().to_string().contains("a cell has 8 edges"));
        let mut dup = base.clone();
        dup[7].1 = 0;
        assert!(ok(dup).unwrap_err().to_string().contains("both edges of node 5"));
        assert!(CellGenotype::new(base, vec![2, 6], "x").is_err());
    }
}
