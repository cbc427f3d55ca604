//! Deriving a discrete genotype from α weights with DARTS' rule (Liu et al. 2019, section 2.4).
//!
//! For each intermediate node, rank its incoming edges by their strongest non-'none' weight and keep the
//! top 2; each kept edge keeps its strongest non-'none' op. Ties are broken toward the lower index: an
//! equally strong edge from an earlier node wins, and an equally strong op earlier in [`PRIMITIVES`] wins
//! (the order Python's stable sort and DARTS' strict `>` comparison give). Kept edges are listed
//! strongest first.

use crate::error::DeriveError;
use crate::genotype::{CellGenotype, NetworkGenotype, DEFAULT_CONCAT};
use crate::space::{
    edge_index, node_inputs, AlphaMode, EDGES_PER_NODE, NONE_OP, NUM_EDGES, NUM_OPS, PRIMITIVES, STEPS,
};

/// Strongest non-'none' op of a row: (op index, weight). The first maximum wins.
fn best_op(row: &[f64]) -> (usize, f64) {
    let mut best = (usize::MAX, f64::NEG_INFINITY);
    for (k, &w) in row.iter().enumerate() {
        if k != NONE_OP && (best.0 == usize::MAX || w > best.1) {
            best = (k, w);
        }
    }
    best
}

/// Derive one cell from a row-major [`NUM_EDGES`] × [`NUM_OPS`] table of op weights (usually softmax(α)).
/// `shape` is the table's shape as received, for the error message; `table` names it.
pub fn derive_cell(weights: &[f64], shape: &[usize], table: &str) -> Result<CellGenotype, DeriveError> {
    if shape != [NUM_EDGES, NUM_OPS] || weights.len() != NUM_EDGES * NUM_OPS {
        return Err(DeriveError::Shape {
            table: table.to_string(),
            rows: NUM_EDGES,
            cols: NUM_OPS,
            got: format!("{shape:?}"),
        });
    }
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(DeriveError::NotFinite {
            table: table.to_string(),
            edge: i / NUM_OPS,
            op: PRIMITIVES[i % NUM_OPS],
            value: weights[i].to_string(),
        });
    }
    let row = |e: usize| &weights[e * NUM_OPS..(e + 1) * NUM_OPS];
    let mut edges = Vec::with_capacity(STEPS * EDGES_PER_NODE);
    for node in 0..STEPS {
        let mut inputs: Vec<(usize, usize, f64)> = (0..node_inputs(node))
            .map(|input| {
                let (op, w) = best_op(row(edge_index(node, input)));
                (input, op, w)
            })
            .collect();
        // Stable sort: equal strengths keep ascending input order.
        inputs.sort_by(|a, b| b.2.partial_cmp(&a.2).expect("weights are finite"));
        edges.extend(inputs[..EDGES_PER_NODE].iter().map(|&(input, op, _)| (op, input)));
    }
    Ok(CellGenotype::new(edges, DEFAULT_CONCAT.to_vec(), table).expect("derivation yields a valid cell"))
}

/// Derive a whole genotype from named tables. The set of names picks the mode: DARTS' `normal`/`reduce`
/// or the five multi-level tables.
pub fn derive_genotype(tables: &[(String, Vec<f64>, Vec<usize>)]) -> Result<NetworkGenotype, DeriveError> {
    let mut names: Vec<&str> = tables.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    let mode = [AlphaMode::Shared, AlphaMode::Multilevel]
        .into_iter()
        .find(|m| {
            let mut want = m.table_names().to_vec();
            want.sort_unstable();
            want == names
        })
        .ok_or_else(|| {
            DeriveError::Tables(format!(
                "tables {names:?} match no layout: expected {:?} or {:?}",
                AlphaMode::Shared.table_names(),
                AlphaMode::Multilevel.table_names()
            ))
        })?;
    let mut cells = Vec::new();
    for t in mode.table_names() {
        let (_, w, shape) = tables.iter().find(|(n, _, _)| n == t).expect("names matched the mode");
        cells.push(derive_cell(w, shape, t)?);
    }
    Ok(NetworkGenotype::new(mode, cells).expect("one cell per table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(f: impl Fn(usize, usize) -> f64) -> Vec<f64> {
        (0..NUM_EDGES * NUM_OPS).map(|i| f(i / NUM_OPS, i % NUM_OPS)).collect()
    }

    #[test]
    fn none_is_never_kept_even_when_strongest() {
        let w = table(|e, k| if k == NONE_OP { 10.0 } else { (e * 8 + k) as f64 * 1e-3 });
        let c = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal").unwrap();
        assert!(c.edges().iter().all(|&(op, _)| op == NUM_OPS - 1));
        // Later edges are stronger, so each node keeps its last two inputs, the latest first.
        assert_eq!(c.edges()[6..], [(7, 4), (7, 3)]);
    }

    #[test]
    fn ties_go_to_lower_indices() {
        let c = derive_cell(&vec![0.125; NUM_EDGES * NUM_OPS], &[NUM_EDGES, NUM_OPS], "t").unwrap();
        let want: Vec<(usize, usize)> = (0..STEPS).flat_map(|_| [(1, 0), (1, 1)]).collect();
        assert_eq!(c.edges(), &want[..]);
    }

    #[test]
    fn bad_weights_are_errors() {
        let mut w = vec![0.1; NUM_EDGES * NUM_OPS];
        assert!(derive_cell(&w, &[7, 16], "t").is_err());
        w[17] = f64::NAN;
        let e = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal_low").unwrap_err().to_string();
        assert_eq!(e, "normal_low: weight at edge 2, op 'max_pool_3x3' is NaN; derivation needs finite weights");
    }
}
