//! A bijection between the integers `[0, size)` and derived cells or genotypes, and uniform sampling from a
//! seed (the random-search baseline).
//!
//! A cell's rank is a mixed-radix number with one digit per intermediate node, node 2 most significant.
//! A node's digit is `pair · 49 + (op_a − 1) · 7 + (op_b − 1)`, where `(a, b)`, `a < b`, are its two
//! inputs, `pair = C(b, 2) + a` numbers the input pairs, and `op_a`, `op_b` are their op indices (none
//! excluded). A genotype's rank is a mixed-radix number of its cells' ranks, first table most significant.
//! Only cells with the default concat `[2, 3, 4, 5]` are in the derived space.

use num_bigint::BigUint;
use num_traits::{ToPrimitive, Zero};

use crate::error::{GenotypeError, SpaceError};
use crate::genotype::{CellGenotype, NetworkGenotype, DEFAULT_CONCAT};
use crate::rng::Rng;
use crate::space::{binomial2, derived_cell_count, node_inputs, search_space_size, AlphaMode, NUM_OPS, STEPS};

const OPS: u64 = (NUM_OPS - 1) as u64;

fn node_radix(node: usize) -> u64 {
    binomial2(node_inputs(node) as u64) * OPS * OPS
}

/// Rank of a derived cell in `[0, derived_cell_count())`.
pub fn rank_cell(cell: &CellGenotype) -> Result<u64, GenotypeError> {
    if cell.concat() != DEFAULT_CONCAT {
        return Err(GenotypeError::invalid("concat", "only cells concatenating [2, 3, 4, 5] are in the derived space"));
    }
    let edges = cell.canonical_edges();
    let mut rank = 0u64;
    for node in 0..STEPS {
        let (op_a, a) = edges[2 * node];
        let (op_b, b) = edges[2 * node + 1];
        let pair = binomial2(b as u64) + a as u64;
        let digit = pair * OPS * OPS + (op_a as u64 - 1) * OPS + (op_b as u64 - 1);
        rank = rank * node_radix(node) + digit;
    }
    Ok(rank)
}

/// The derived cell of rank `rank`; inputs of each node in ascending order.
pub fn unrank_cell(rank: u64) -> Result<CellGenotype, SpaceError> {
    let size = derived_cell_count();
    if rank >= size {
        return Err(SpaceError::RankOutOfRange { rank: rank.to_string(), size: size.to_string() });
    }
    let mut digits = [0u64; STEPS];
    let mut r = rank;
    for node in (0..STEPS).rev() {
        digits[node] = r % node_radix(node);
        r /= node_radix(node);
    }
    let mut edges = Vec::with_capacity(2 * STEPS);
    for (node, &d) in digits.iter().enumerate() {
        let (pair, ops) = (d / (OPS * OPS), d % (OPS * OPS));
        // Largest b with C(b, 2) <= pair.
        let b = (1..node_inputs(node) as u64).rev().find(|&b| binomial2(b) <= pair).expect("pair index in range");
        let a = pair - binomial2(b);
        edges.push(((ops / OPS + 1) as usize, a as usize));
        edges.push(((ops % OPS + 1) as usize, b as usize));
    }
    Ok(CellGenotype::new(edges, DEFAULT_CONCAT.to_vec(), "cell").expect("unranked cells are valid"))
}

/// Ranks longer than this many bits are described by their length in error messages.
const RANK_TEXT_BITS: u64 = 256;

/// A rank for an error message. A caller may pass a rank of millions of digits: printing it whole would
/// take time and memory out of proportion to the mistake, so long ranks are described by their size.
fn rank_text(rank: &BigUint) -> String {
    if rank.bits() <= RANK_TEXT_BITS {
        rank.to_string()
    } else {
        format!("of {} bits", rank.bits())
    }
}

/// Rank of a whole genotype in `[0, search_space_size(mode, derived=true))`.
pub fn rank_genotype(g: &NetworkGenotype) -> Result<BigUint, GenotypeError> {
    let base = BigUint::from(derived_cell_count());
    let mut rank = BigUint::zero();
    for (cell, name) in g.cells().iter().zip(g.mode().table_names()) {
        let r = rank_cell(cell).map_err(|e| match e {
            GenotypeError::Invalid { at, message } => GenotypeError::invalid(format!("{name}.{at}"), message),
            other => other,
        })?;
        rank = rank * &base + BigUint::from(r);
    }
    Ok(rank)
}

/// The genotype of `mode` with rank `rank`.
pub fn unrank_genotype(mode: AlphaMode, rank: &BigUint) -> Result<NetworkGenotype, SpaceError> {
    let size = search_space_size(mode, true);
    if *rank >= size {
        return Err(SpaceError::RankOutOfRange { rank: rank_text(rank), size: size.to_string() });
    }
    let base = BigUint::from(derived_cell_count());
    let n = mode.table_names().len();
    let mut r = rank.clone();
    let mut cells = vec![None; n];
    for slot in cells.iter_mut().rev() {
        let digit = (&r % &base).to_u64().expect("below the cell count");
        *slot = Some(unrank_cell(digit)?);
        r /= &base;
    }
    Ok(NetworkGenotype::new(mode, cells.into_iter().map(|c| c.expect("filled")).collect()).expect("one cell per table"))
}

/// A derived cell drawn uniformly at random.
pub fn sample_cell(rng: &mut Rng) -> CellGenotype {
    unrank_cell(rng.below(derived_cell_count())).expect("below the cell count")
}

/// A genotype of `mode` drawn uniformly at random from `seed`.
pub fn sample_genotype(mode: AlphaMode, seed: u64) -> NetworkGenotype {
    let mut rng = Rng::new(seed);
    let cells = mode.table_names().iter().map(|_| sample_cell(&mut rng)).collect();
    NetworkGenotype::new(mode, cells).expect("one cell per table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_ranks() {
        let first = unrank_cell(0).unwrap();
        assert_eq!(first.edges(), &[(1, 0), (1, 1), (1, 0), (1, 1), (1, 0), (1, 1), (1, 0), (1, 1)]);
        let last = unrank_cell(derived_cell_count() - 1).unwrap();
        assert_eq!(last.edges()[6..], [(7, 3), (7, 4)]);
        assert_eq!(rank_cell(&last).unwrap(), derived_cell_count() - 1);
        assert!(unrank_cell(derived_cell_count()).is_err());
    }

    #[test]
    fn genotype_ranks_span_the_space() {
        let size = search_space_size(AlphaMode::Multilevel, true);
        let last = unrank_genotype(AlphaMode::Multilevel, &(&size - 1u32)).unwrap();
        assert_eq!(rank_genotype(&last).unwrap(), &size - 1u32);
        assert!(unrank_genotype(AlphaMode::Multilevel, &size).is_err());
    }

    #[test]
    fn huge_ranks_are_described_by_their_length() {
        let huge = BigUint::from(1u32) << 1_000_000u32;
        let e = unrank_genotype(AlphaMode::Shared, &huge).unwrap_err().to_string();
        assert!(e.starts_with("rank of 1000001 bits is outside the space [0, "), "{e}");
        let e = unrank_genotype(AlphaMode::Shared, &(BigUint::from(1u32) << 200u32)).unwrap_err().to_string();
        assert!(e.starts_with("rank 1606938044258990275541962092341162602522202993782792835301376 is outside"), "{e}");
        assert!(unrank_cell(u64::MAX).unwrap_err().to_string().contains("rank 18446744073709551615 is outside"));
    }
}
