//! Property tests of derivation, enumeration and genotype serialisation.

use mdarts_core::derive::{derive_cell, derive_genotype, SKIP_OP};
use mdarts_core::enumerate::{rank_cell, rank_genotype, sample_genotype, unrank_cell, unrank_genotype};
use mdarts_core::space::{derived_cell_count, search_space_size, AlphaMode, NONE_OP, NUM_EDGES, NUM_OPS};
use mdarts_core::NetworkGenotype;
use num_bigint::BigUint;
use proptest::prelude::*;

fn assert_valid(g: &mdarts_core::CellGenotype) {
    assert_eq!(g.edges().len(), 8);
    for (i, &(op, input)) in g.edges().iter().enumerate() {
        let node = i / 2;
        assert_ne!(op, NONE_OP);
        assert!(input < node + 2, "edge {i} reads node {input}");
    }
    for pair in g.edges().chunks(2) {
        assert_ne!(pair[0].1, pair[1].1);
    }
}

proptest! {
    #[test]
    fn any_finite_table_derives_a_valid_cell(w in prop::collection::vec(-1e30f64..1e30, NUM_EDGES * NUM_OPS)) {
        let c = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "t", None).unwrap();
        assert_valid(&c);
        // The kept op of each kept edge is the strongest non-none op of its row.
        for (i, &(op, input)) in c.edges().iter().enumerate() {
            let node = i / 2;
            let e = (0..node).map(|n| n + 2).sum::<usize>() + input;
            let row = &w[e * NUM_OPS..(e + 1) * NUM_OPS];
            prop_assert!(row[1..].iter().all(|&x| x <= row[op]));
        }
    }

    #[test]
    fn a_capped_cell_holds_at_most_m_skips_and_otherwise_follows_darts(
        w in prop::collection::vec(0f64..1.0, NUM_EDGES * NUM_OPS),
        boost in prop::collection::vec(0f64..1.0, NUM_EDGES),
        m in 0usize..9,
    ) {
        // Softmax-like weights in [0, 1) with skip_connect boosted on some edges, so that caps bite.
        let mut w = w;
        for (e, b) in boost.iter().enumerate() {
            w[e * NUM_OPS + SKIP_OP] += b;
        }
        let free = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", None).unwrap();
        let capped = derive_cell(&w, &[NUM_EDGES, NUM_OPS], "normal", Some(m)).unwrap();
        assert_valid(&capped);
        let skips = |c: &mdarts_core::CellGenotype| c.edges().iter().filter(|e| e.0 == SKIP_OP).count();
        prop_assert!(skips(&capped) <= m);
        if skips(&free) <= m {
            prop_assert_eq!(&capped, &free);
        }
        // Every kept edge keeps the strongest op of its row, skip_connect left out on edges the cap zeroed:
        // only an edge whose skip_connect is its strongest op may hold another.
        for (i, &(op, input)) in capped.edges().iter().enumerate() {
            let node = i / 2;
            let e = (0..node).map(|n| n + 2).sum::<usize>() + input;
            let row = &w[e * NUM_OPS..(e + 1) * NUM_OPS];
            let others = row.iter().enumerate().filter(|&(k, _)| k != NONE_OP && k != SKIP_OP);
            prop_assert!(others.clone().all(|(_, &x)| x <= row[op]));
            if op != SKIP_OP && row[SKIP_OP] > row[op] {
                prop_assert!(skips(&free) > m, "edge {} lost skip_connect without a cap to meet", e);
            }
        }
    }

    #[test]
    fn cell_rank_round_trips(rank in 0..derived_cell_count()) {
        let c = unrank_cell(rank).unwrap();
        assert_valid(&c);
        prop_assert_eq!(rank_cell(&c).unwrap(), rank);
    }

    #[test]
    fn genotype_rank_round_trips(bytes in prop::collection::vec(any::<u8>(), 24), multi in any::<bool>()) {
        let mode = if multi { AlphaMode::Multilevel } else { AlphaMode::Shared };
        let rank = BigUint::from_bytes_le(&bytes) % search_space_size(mode, true);
        let g = unrank_genotype(mode, &rank).unwrap();
        prop_assert_eq!(rank_genotype(&g).unwrap(), rank);
        prop_assert_eq!(NetworkGenotype::from_json(&g.to_json()).unwrap(), g.clone());
        prop_assert_eq!(NetworkGenotype::from_text(&g.to_text()).unwrap(), g);
    }

    #[test]
    fn sampled_genotypes_are_valid_and_seeded(seed in any::<u64>()) {
        let g = sample_genotype(AlphaMode::Multilevel, seed);
        g.cells().iter().for_each(assert_valid);
        prop_assert_eq!(sample_genotype(AlphaMode::Multilevel, seed), g);
    }

    #[test]
    fn derived_genotypes_pick_the_mode_from_table_names(w in prop::collection::vec(-5f64..5.0, NUM_EDGES * NUM_OPS)) {
        let tables: Vec<(String, Vec<f64>, Vec<usize>)> = AlphaMode::Multilevel
            .table_names()
            .iter()
            .map(|n| (n.to_string(), w.clone(), vec![NUM_EDGES, NUM_OPS]))
            .collect();
        let g = derive_genotype(&tables, None).unwrap();
        prop_assert_eq!(g.mode(), AlphaMode::Multilevel);
        prop_assert!(derive_genotype(&tables[..3], None).is_err());
    }
}
