//! Property: on any small dataset, any chunk size and any shard count, the
//! incremental engine emits exactly what a brute-force evaluation of the
//! contract emits, in the same chunks. Thresholds are scaled down so that
//! every pattern fires on small data.

use crate::support;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use support::engine::{Interruption, network, oracle, row, run, run_interrupted};
use txpipe::detect::Thresholds;

const GENDERS: [&str; 5] = ["F", "M", "E", "U", ""];
const AMOUNTS: [&str; 8] = [
    "22.99", "23.00", "23.01", "1.00", "40.00", "0.005", "22.995", "NaN",
];
const WEIGHTS: [&str; 5] = ["1.00", "2.00", "2.00", "3.50", "10.00"];

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<String>,
    weights: Vec<(String, String, String)>,
    chunk_rows: usize,
    shards: u32,
    thresholds: Thresholds,
}

fn case() -> impl Strategy<Value = Case> {
    // Up to 24 customers: rank boundaries like 9/10 need 11 or more.
    let rows = prop::collection::vec((0..24usize, 0..3usize, 0..5usize, 0..8usize), 0..700);
    let weights = prop::collection::vec((0..24usize, 0..3usize, 0..5usize), 0..90);
    (
        rows,
        weights,
        1..80usize,
        1..5u32,
        0..60u64,
        1..10u64,
        0..4u64,
    )
        .prop_map(
            |(rows, weights, chunk_rows, shards, upgrade, child, dei)| Case {
                rows: rows
                    .into_iter()
                    .map(|(c, m, g, a)| {
                        row(&format!("C{c}"), &format!("M{m}"), GENDERS[g], AMOUNTS[a])
                    })
                    .collect(),
                weights: weights
                    .into_iter()
                    .map(|(c, m, w)| (format!("C{c}"), format!("M{m}"), WEIGHTS[w].to_string()))
                    .collect(),
                chunk_rows,
                shards,
                thresholds: Thresholds {
                    upgrade_min_merchant_txns: upgrade,
                    child_min_txns: child,
                    child_max_avg_cents: 2_300,
                    dei_min_female: dei,
                },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn incremental_engine_equals_brute_force(case in case()) {
        let weights: Vec<(&str, &str, &str)> =
            case.weights.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect();
        let net = network(&weights);
        let engine = run(&case.rows, &net, case.chunk_rows, case.thresholds, case.shards);
        let reference = oracle(&case.rows, &net, case.chunk_rows, case.thresholds);
        prop_assert_eq!(engine, reference);
    }

    /// Rebuilding every engine and the pair table from committed state
    /// after any chunk (a new epoch) changes nothing.
    #[test]
    fn restoring_from_a_snapshot_mid_stream_changes_nothing(case in case(), restart in 0..40usize) {
        let weights: Vec<(&str, &str, &str)> =
            case.weights.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect();
        let net = network(&weights);
        let engine = run_interrupted(
            &case.rows, &net, case.chunk_rows, case.thresholds, case.shards,
            Some((restart, Interruption::Restart)),
        );
        let reference = oracle(&case.rows, &net, case.chunk_rows, case.thresholds);
        prop_assert_eq!(engine, reference);
    }

    /// Handing the merchants of some key groups over after any chunk (all
    /// their state dropped) and taking them back from their committed
    /// state alone changes nothing: what a cluster worker does when its
    /// share changes.
    #[test]
    fn handing_key_groups_over_and_back_mid_stream_changes_nothing(case in case(), at in 0..40usize) {
        let weights: Vec<(&str, &str, &str)> =
            case.weights.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect();
        let net = network(&weights);
        let engine = run_interrupted(
            &case.rows, &net, case.chunk_rows, case.thresholds, case.shards,
            Some((at, Interruption::HandOver)),
        );
        let reference = oracle(&case.rows, &net, case.chunk_rows, case.thresholds);
        prop_assert_eq!(engine, reference);
    }
}

/// The generator above does make every pattern fire (otherwise the
/// property would prove little).
#[test]
fn the_random_cases_exercise_every_pattern() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let case = case().new_tree(&mut runner).unwrap().current();
        let weights: Vec<(&str, &str, &str)> = case
            .weights
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        for emission in oracle(
            &case.rows,
            &network(&weights),
            case.chunk_rows,
            case.thresholds,
        ) {
            seen.insert(emission.1);
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["PatId1", "PatId2", "PatId3"]
    );
}
