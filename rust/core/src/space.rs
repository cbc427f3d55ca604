//! The DARTS cell search space, the α layouts of DARTS and of multi-level DARTS, and exact space sizes.
//!
//! A cell is a DAG of 2 input nodes (indices 0 and 1), [`STEPS`] intermediate nodes (indices 2..6) and an
//! output that concatenates the intermediates. Intermediate node `i` (0-based among intermediates) reads
//! every earlier node, so the cell has 2 + 3 + 4 + 5 = [`NUM_EDGES`] edges, numbered node by node and,
//! within a node, by input index (the order DARTS uses for the rows of α).

use num_bigint::BigUint;
use num_traits::One;

use crate::error::SpaceError;

/// The 8 candidate operations of DARTS, in DARTS order (the columns of every α table).
pub const PRIMITIVES: [&str; 8] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
];
/// Number of candidate operations.
pub const NUM_OPS: usize = PRIMITIVES.len();
/// Column of the 'none' operation, which a derived cell never keeps.
pub const NONE_OP: usize = 0;
/// Intermediate nodes per cell.
pub const STEPS: usize = 4;
/// Input nodes per cell (the outputs of the two previous cells).
pub const NUM_INPUTS: usize = 2;
/// Edges kept per intermediate node in a derived cell.
pub const EDGES_PER_NODE: usize = 2;
/// Edges of the supernet cell: every intermediate node reads every earlier node.
pub const NUM_EDGES: usize = 14;

/// Index of an operation name, or `None` when the name is not a DARTS primitive.
pub fn op_index(name: &str) -> Option<usize> {
    PRIMITIVES.iter().position(|p| *p == name)
}

/// Number of inputs of intermediate node `node` (0-based among intermediates).
pub const fn node_inputs(node: usize) -> usize {
    NUM_INPUTS + node
}

/// Row of α for the edge from `input` into intermediate node `node`.
pub fn edge_index(node: usize, input: usize) -> usize {
    debug_assert!(node < STEPS && input < node_inputs(node), "edge ({node}, {input}) is outside the cell");
    (0..node).map(node_inputs).sum::<usize>() + input
}

/// How the supernet's cells share architecture parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphaMode {
    /// DARTS: one table for all normal cells, one for all reduction cells.
    Shared,
    /// Multi-level DARTS (Li, Chen, Sun 2021): the low, mid and high levels each own their normal-cell
    /// table, and each of the two reduction cells owns its own.
    Multilevel,
}

impl AlphaMode {
    /// Parse `"shared"` or `"multilevel"`.
    pub fn parse(name: &str) -> Result<Self, SpaceError> {
        match name {
            "shared" => Ok(Self::Shared),
            "multilevel" => Ok(Self::Multilevel),
            other => Err(SpaceError::UnknownAlphaMode(other.to_string())),
        }
    }

    /// The mode's name, as the CLI and the config files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Multilevel => "multilevel",
        }
    }

    /// Table names in a fixed order (the order of derivation, logs and checkpoints).
    pub fn table_names(self) -> &'static [&'static str] {
        match self {
            Self::Shared => &["normal", "reduce"],
            Self::Multilevel => &["normal_low", "reduce_low", "normal_mid", "reduce_mid", "normal_high"],
        }
    }
}

/// A level of the network, delimited by the two reduction cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Cells before and including the first reduction cell.
    Low,
    /// Cells after the first and up to and including the second reduction cell.
    Mid,
    /// Cells after the second reduction cell.
    High,
}

impl Level {
    /// `"low"`, `"mid"` or `"high"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Mid => "mid",
            Self::High => "high",
        }
    }
}

/// One cell position of a network and the α table it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellSlot {
    /// Position of the cell, 0-based.
    pub index: usize,
    /// Whether the cell halves the resolution (and doubles the channels).
    pub reduction: bool,
    /// The level the cell belongs to.
    pub level: Level,
    /// Index into [`AlphaLayout::tables`].
    pub table: usize,
}

/// Most cells a network (and so an α layout) may have.
///
/// DARTS searches with 8 cells and evaluates with 20 (CIFAR-10) or 14 (ImageNet); 1,000 cells is far
/// beyond anything trainable, yet small enough that a mistyped depth (say `2**63`) is refused before a
/// layout of that many cells is allocated.
pub const MAX_LAYERS: usize = 1000;

/// `layers` itself when it is at most [`MAX_LAYERS`], the [`SpaceError::TooManyLayers`] error otherwise.
pub fn check_layers(layers: usize) -> Result<usize, SpaceError> {
    if layers > MAX_LAYERS {
        return Err(SpaceError::TooManyLayers { layers, maximum: MAX_LAYERS });
    }
    Ok(layers)
}

/// The reduction-cell positions of a network of `layers` cells: `layers / 3` and `2 * layers / 3`.
///
/// Exact for every `usize`: `2 * layers` could overflow, so the second index is computed as
/// `layers - ceil(layers / 3)`, which equals `floor(2 * layers / 3)`.
pub fn reduction_indices(layers: usize) -> (usize, usize) {
    (layers / 3, layers - layers.div_ceil(3))
}

/// The α tables of a supernet and which cell reads which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlphaLayout {
    /// The sharing mode.
    pub mode: AlphaMode,
    /// Table names; each table is [`NUM_EDGES`] × [`NUM_OPS`].
    pub tables: Vec<String>,
    /// One entry per cell, in network order.
    pub cells: Vec<CellSlot>,
}

impl AlphaLayout {
    /// The layout of a network of `layers` cells. Every table must be read by at least one cell, so the
    /// multi-level layout needs at least 5 cells (one normal cell per level) and the shared layout 3; no
    /// layout has more than [`MAX_LAYERS`] cells.
    pub fn new(mode: AlphaMode, layers: usize) -> Result<Self, SpaceError> {
        // Checked before anything is allocated: `cells` holds one slot per layer.
        let layers = check_layers(layers)?;
        let (r1, r2) = reduction_indices(layers);
        let cells: Vec<CellSlot> = (0..layers)
            .map(|index| {
                let level = if index <= r1 {
                    Level::Low
                } else if index <= r2 {
                    Level::Mid
                } else {
                    Level::High
                };
                let reduction = index == r1 || index == r2;
                let table = match (mode, reduction, level) {
                    (AlphaMode::Shared, false, _) => 0,
                    (AlphaMode::Shared, true, _) => 1,
                    (AlphaMode::Multilevel, false, Level::Low) => 0,
                    (AlphaMode::Multilevel, true, Level::Low) => 1,
                    (AlphaMode::Multilevel, false, Level::Mid) => 2,
                    (AlphaMode::Multilevel, true, _) => 3,
                    (AlphaMode::Multilevel, false, Level::High) => 4,
                };
                CellSlot { index, reduction, level, table }
            })
            .collect();
        let tables: Vec<String> = mode.table_names().iter().map(|s| s.to_string()).collect();
        for (t, name) in tables.iter().enumerate() {
            if !cells.iter().any(|c| c.table == t) || r1 == r2 {
                return Err(SpaceError::TooFewLayers {
                    mode: mode.name(),
                    layers,
                    minimum: if mode == AlphaMode::Shared { 3 } else { 5 },
                    table: name.clone(),
                });
            }
        }
        Ok(Self { mode, tables, cells })
    }
}

/// Number of derived cells: every node keeps 2 of its incoming edges and one non-'none' op per kept edge.
pub fn derived_cell_count() -> u64 {
    let ops = (NUM_OPS - 1) as u64;
    (0..STEPS).map(|n| binomial2(node_inputs(n) as u64) * ops * ops).product()
}

/// `n` choose 2.
pub(crate) const fn binomial2(n: u64) -> u64 {
    n * (n.saturating_sub(1)) / 2
}

/// Exact size of the search space of `mode`: the supernet space (every edge any of the 8 ops) when
/// `derived` is false, the space of derived networks otherwise. The size does not depend on depth: cells
/// that share a table are the same cell.
pub fn search_space_size(mode: AlphaMode, derived: bool) -> BigUint {
    let per_cell =
        if derived { BigUint::from(derived_cell_count()) } else { BigUint::from(NUM_OPS).pow(NUM_EDGES as u32) };
    let mut size = BigUint::one();
    for _ in mode.table_names() {
        size *= &per_cell;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_numbered_node_by_node() {
        assert_eq!(edge_index(0, 0), 0);
        assert_eq!(edge_index(1, 0), 2);
        assert_eq!(edge_index(2, 0), 5);
        assert_eq!(edge_index(3, 0), 9);
        assert_eq!(edge_index(3, 4), NUM_EDGES - 1);
    }

    #[test]
    fn derived_cell_count_is_closed_form() {
        // C(2,2)·C(3,2)·C(4,2)·C(5,2) · 7^8
        assert_eq!(derived_cell_count(), 180 * 7u64.pow(8));
    }

    #[test]
    fn sizes_match_published_orders_of_magnitude() {
        let digits = |n: BigUint| n.to_string().len() - 1;
        assert_eq!(digits(search_space_size(AlphaMode::Shared, false)), 25);
        assert_eq!(digits(search_space_size(AlphaMode::Shared, true)), 18);
        assert_eq!(digits(search_space_size(AlphaMode::Multilevel, false)), 63);
        assert_eq!(digits(search_space_size(AlphaMode::Multilevel, true)), 45);
        assert_eq!(search_space_size(AlphaMode::Shared, false), BigUint::from(2u32).pow(84));
        assert_eq!(search_space_size(AlphaMode::Multilevel, false), BigUint::from(2u32).pow(210));
    }

    #[test]
    fn layout_of_eight_cells() {
        let l = AlphaLayout::new(AlphaMode::Multilevel, 8).unwrap();
        let tables: Vec<usize> = l.cells.iter().map(|c| c.table).collect();
        assert_eq!(tables, vec![0, 0, 1, 2, 2, 3, 4, 4]);
        let s = AlphaLayout::new(AlphaMode::Shared, 8).unwrap();
        let tables: Vec<usize> = s.cells.iter().map(|c| c.table).collect();
        assert_eq!(tables, vec![0, 0, 1, 0, 0, 1, 0, 0]);
        assert!(l.cells[2].reduction && l.cells[5].reduction);
    }

    #[test]
    fn layout_of_twenty_cells_puts_reductions_at_6_and_13() {
        let l = AlphaLayout::new(AlphaMode::Multilevel, 20).unwrap();
        let red: Vec<usize> = l.cells.iter().filter(|c| c.reduction).map(|c| c.index).collect();
        assert_eq!(red, vec![6, 13]);
        assert_eq!(l.cells[19].level, Level::High);
    }

    #[test]
    fn too_shallow_layouts_are_refused() {
        assert!(AlphaLayout::new(AlphaMode::Multilevel, 4).is_err());
        assert!(AlphaLayout::new(AlphaMode::Multilevel, 5).is_ok());
        assert!(AlphaLayout::new(AlphaMode::Shared, 2).is_err());
        assert!(AlphaLayout::new(AlphaMode::Shared, 3).is_ok());
        assert!(AlphaLayout::new(AlphaMode::Shared, 0).is_err());
    }

    #[test]
    fn too_deep_layouts_are_refused_before_allocating() {
        assert_eq!(AlphaLayout::new(AlphaMode::Multilevel, MAX_LAYERS).unwrap().cells.len(), MAX_LAYERS);
        for layers in [MAX_LAYERS + 1, 1_000_000_000, 1 << 63, usize::MAX] {
            for mode in [AlphaMode::Shared, AlphaMode::Multilevel] {
                let e = AlphaLayout::new(mode, layers).unwrap_err();
                assert_eq!(e, SpaceError::TooManyLayers { layers, maximum: MAX_LAYERS });
                let text = e.to_string();
                assert!(text.contains(&format!("layers = {layers}")) && text.contains("1000"), "{text}");
            }
        }
    }

    #[test]
    fn reduction_indices_do_not_overflow() {
        assert_eq!(reduction_indices(usize::MAX), (usize::MAX / 3, usize::MAX / 3 * 2));
        assert_eq!(reduction_indices(0), (0, 0));
    }

    proptest::proptest! {
        #[test]
        fn reduction_indices_match_the_plain_formula(layers in 0usize..=usize::MAX / 2) {
            proptest::prop_assert_eq!(reduction_indices(layers), (layers / 3, 2 * layers / 3));
        }
    }
}
