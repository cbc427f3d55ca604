//! Deriving a discrete genotype from α weights with DARTS' rule (Liu et al. 2019, section 2.4).
//!
//! For each intermediate node, rank its incoming edges by their strongest non-'none' weight and keep the
//! top 2; each kept edge keeps its strongest non-'none' op. Ties are broken toward the lower index: an
//! equally strong edge from an earlier node wins, and an equally strong op earlier in [`PRIMITIVES`] wins
//! (the order Python's stable sort and DARTS' strict `>` comparison give). Kept edges are listed
//! strongest first.
//!
//! The skip_connect cap of P-DARTS (Chen et al. 2019, section 3.3), `max_skip = Some(M)`: while a derived
//! cell holds more than M skip_connect edges, the skip_connect weight of the weakest of them is set to
//! zero and the cell is derived again; that edge may stay, with its next-best op, or lose its place. A
//! zeroed weight is left out of the choice of op altogether (for softmax weights, which are positive, the
//! same as zero, and the loop then ends after at most 14 rounds whatever the weights). The cap applies to
//! normal cells: [`derive_genotype`] passes it to the tables whose names start with `normal`.

use crate::error::DeriveError;
use crate::genotype::{CellGenotype, NetworkGenotype, DEFAULT_CONCAT};
use crate::space::{
    edge_index, node_inputs, AlphaMode, EDGES_PER_NODE, NONE_OP, NUM_EDGES, NUM_OPS, PRIMITIVES, STEPS,
};

/// The index of skip_connect in [`PRIMITIVES`].
pub const SKIP_OP: usize = 3;

/// Strongest op of a row that is neither 'none' nor skip_connect where `no_skip`: (op index, weight). The
/// first maximum wins.
fn best_op(row: &[f64], no_skip: bool) -> (usize, f64) {
    let mut best = (usize::MAX, f64::NEG_INFINITY);
    for (k, &w) in row.iter().enumerate() {
        if k != NONE_OP && !(no_skip && k == SKIP_OP) && (best.0 == usize::MAX || w > best.1) {
            best = (k, w);
        }
    }
    best
}

/// Derive one cell from a row-major [`NUM_EDGES`] × [`NUM_OPS`] table of op weights (usually softmax(α)).
/// `shape` is the table's shape as received, for the error message; `table` names it; `max_skip` caps the
/// cell's skip_connect edges (P-DARTS; see the module's text).
pub fn derive_cell(
    weights: &[f64],
    shape: &[usize],
    table: &str,
    max_skip: Option<usize>,
) -> Result<CellGenotype, DeriveError> {
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
    let skip_weight = |e: usize| weights[e * NUM_OPS + SKIP_OP];
    let mut no_skip = [false; NUM_EDGES];
    loop {
        let edges = derive_edges(weights, &no_skip);
        let skips: Vec<(usize, usize)> = edges.iter().filter(|e| e.1 == SKIP_OP).map(|e| (e.0, e.2)).collect();
        match max_skip {
            Some(m) if skips.len() > m => {
                // The weakest kept skip_connect (by its skip_connect weight; of equal ones, the later edge)
                // loses it.
                let weakest = skips
                    .iter()
                    .map(|&(node, input)| edge_index(node, input))
                    .min_by(|&a, &b| skip_weight(a).total_cmp(&skip_weight(b)).then(b.cmp(&a)))
                    .expect("at least one skip_connect");
                no_skip[weakest] = true;
            }
            _ => {
                let edges = edges.iter().map(|&(_, op, input)| (op, input)).collect();
                return Ok(
                    CellGenotype::new(edges, DEFAULT_CONCAT.to_vec(), table).expect("derivation yields a valid cell")
                );
            }
        }
    }
}

/// DARTS' rule on finite weights: the kept edges `(node, op, input)`, in node order, strongest first within
/// a node; skip_connect is not a choice on the edges marked in `no_skip`.
fn derive_edges(weights: &[f64], no_skip: &[bool; NUM_EDGES]) -> Vec<(usize, usize, usize)> {
    let row = |e: usize| &weights[e * NUM_OPS..(e + 1) * NUM_OPS];
    let mut edges = Vec::with_capacity(STEPS * EDGES_PER_NODE);
    for node in 0..STEPS {
        let mut inputs: Vec<(usize, usize, f64)> = (0..node_inputs(node))
            .map(|input| {
                let e = edge_index(node, input);
                let (op, w) = best_op(row(e), no_skip[e]);
                (input, op, w)
            })
            .collect();
        // Stable sort: equal strengths keep ascending input order.
        inputs.sort_by(|a, b| b.2.partial_cmp(&a.2).expect("weights are finite"));
        edges.extend(inputs[..EDGES_PER_NODE].iter().map(|&(input, op, _)| (node, op, input)));
    }
    edges
}

/// Derive a whole genotype from named tables. The set of names picks the mode: DARTS' `normal`/`reduce`
/// or the five multi-level tables. `max_skip` caps the skip_connect edges of every normal cell.
pub fn derive_genotype(
    tables: &[(String, Vec<f64>, Vec<usize>)],
    max_skip: Option<usize>,
) -> Result<NetworkGenotype, DeriveError> {
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
        cells.push(derive_cell(w, shape, t, if t.starts_with("normal") { max_skip } else { None })?);
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
        let c = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", None).unwrap();
        assert!(c.edges().iter().all(|&(op, _)| op == NUM_OPS - 1));
        // Later edges are stronger, so each node keeps its last two inputs, the latest first.
        assert_eq!(c.edges()[6..], [(7, 4), (7, 3)]);
    }

    #[test]
    fn ties_go_to_lower_indices() {
        let c = derive_cell(&vec![0.125; NUM_EDGES * NUM_OPS], &[NUM_EDGES, NUM_OPS], "t", None).unwrap();
        let want: Vec<(usize, usize)> = (0..STEPS).flat_map(|_| [(1, 0), (1, 1)]).collect();
        assert_eq!(c.edges(), &want[..]);
    }

    #[test]
    fn skip_op_is_skip_connect() {
        assert_eq!(PRIMITIVES[SKIP_OP], "skip_connect");
    }

    /// A table where every edge prefers skip_connect (weight 0.5 + e/100) over sep_conv_3x3 (0.3) and
    /// edge 0's and 1's sep_conv_3x3 are stronger than every other edge's.
    fn skip_heavy() -> Vec<f64> {
        table(|e, k| match k {
            SKIP_OP => 0.5 + e as f64 / 100.0,
            4 if e < 2 => 0.45,
            4 => 0.3,
            _ => 0.01,
        })
    }

    #[test]
    fn the_cap_replaces_the_weakest_skips_first() {
        let w = skip_heavy();
        let free = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", None).unwrap();
        assert_eq!(free.edges().iter().filter(|e| e.0 == SKIP_OP).count(), 8);
        let capped = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", Some(2)).unwrap();
        // The weakest skips go first, and each node's inputs fall back on sep_conv_3x3: node 0's (0.50, 0.51)
        // keep their places with it (0.45 beats nothing else there); node 1 loses its skips one by one
        // (edges 3, 2, 4) and ends with its first two inputs' sep_conv_3x3 (0.3 each, ties to the lower
        // input); node 2 likewise; the two strongest skips are left: node 3's from states 4 and 3.
        assert_eq!(capped.edges().iter().filter(|e| e.0 == SKIP_OP).count(), 2);
        assert_eq!(capped.edges()[..6], [(4, 0), (4, 1), (4, 0), (4, 1), (4, 0), (4, 1)]);
        assert_eq!(capped.edges()[6..], [(SKIP_OP, 4), (SKIP_OP, 3)]);
        // No cap, or one the cell already meets, changes nothing.
        assert_eq!(derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", Some(8)).unwrap(), free);
        let zero = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", Some(0)).unwrap();
        assert!(zero.edges().iter().all(|e| e.0 == 4));
    }

    #[test]
    fn the_cap_leaves_reduction_cells_alone() {
        let w = skip_heavy();
        let tables: Vec<(String, Vec<f64>, Vec<usize>)> =
            ["normal", "reduce"].iter().map(|n| (n.to_string(), w.clone(), vec![NUM_EDGES, NUM_OPS])).collect();
        let g = derive_genotype(&tables, Some(1)).unwrap();
        let count = |c: &CellGenotype| c.edges().iter().filter(|e| e.0 == SKIP_OP).count();
        assert_eq!(count(&g.cells()[0]), 1);
        assert_eq!(count(&g.cells()[1]), 8);
    }

    #[test]
    fn bad_weights_are_errors() {
        let mut w = vec![0.1; NUM_EDGES * NUM_OPS];
        assert!(derive_cell(&w, &[7, 16], "t", None).is_err());
        w[17] = f64::NAN;
        let e = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal_low", None).unwrap_err().to_string();
        assert_eq!(e, "normal_low: weight at edge 2, op 'max_pool_3x3' is NaN; derivation needs finite weights");
    }
}
