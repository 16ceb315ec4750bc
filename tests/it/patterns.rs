//! Each pattern at its edges, through the pure engine (chunk parser and
//! pattern engines, no I/O), and the oracle agreeing on every case.

use crate::support;

use support::engine::{network, oracle, row, run};
use support::oracle::Emission;
use txpipe::detect::Thresholds;

fn detect(rows: &[String], weights: &[(&str, &str, &str)], chunk_rows: usize) -> Vec<Emission> {
    let net = network(weights);
    let engine = run(rows, &net, chunk_rows, Thresholds::SPEC, 1);
    assert_eq!(
        engine,
        oracle(rows, &net, chunk_rows, Thresholds::SPEC),
        "engine and oracle disagree"
    );
    assert_eq!(
        engine,
        run(rows, &net, chunk_rows, Thresholds::SPEC, 3),
        "sharding changed the result"
    );
    engine
}

fn emission(chunk: u64, pattern: &'static str, customer: &str, merchant: &str) -> Emission {
    (chunk, pattern, customer.to_string(), merchant.to_string())
}

fn repeat(n: usize, line: String) -> Vec<String> {
    vec![line; n]
}

// ---- PatId2 (CHILD) ----

#[test]
fn child_needs_80_transactions() {
    let rows = repeat(79, row("C1", "M1", "F", "10.00"));
    assert!(
        detect(&rows, &[], 100).is_empty(),
        "79 transactions are not enough"
    );
    let mut rows = rows;
    rows.push(row("C1", "M1", "F", "10.00"));
    assert_eq!(
        detect(&rows, &[], 79),
        vec![emission(1, "PatId2", "C1", "M1")]
    );
}

#[test]
fn child_average_must_be_strictly_below_23() {
    let exactly = repeat(80, row("C1", "M1", "F", "23.00"));
    assert!(
        detect(&exactly, &[], 100).is_empty(),
        "an average of exactly 23.00 is not below 23"
    );
    let mut just_below = repeat(79, row("C1", "M1", "F", "23.00"));
    just_below.push(row("C1", "M1", "F", "22.99"));
    assert_eq!(
        detect(&just_below, &[], 100),
        vec![emission(0, "PatId2", "C1", "M1")]
    );
    // 22.995 rounds half away from zero to 23.00: exactly 23 again.
    let rounded = repeat(80, row("C1", "M1", "F", "22.995"));
    assert!(detect(&rounded, &[], 100).is_empty());
}

#[test]
fn child_is_emitted_once_even_if_it_stops_and_starts_holding() {
    let mut rows = repeat(80, row("C1", "M1", "F", "1.00"));
    rows.extend(repeat(10, row("C1", "M1", "F", "900.00")));
    rows.extend(repeat(2000, row("C1", "M1", "F", "1.00")));
    assert_eq!(
        detect(&rows, &[], 80),
        vec![emission(0, "PatId2", "C1", "M1")]
    );
}

// ---- PatId1 (UPGRADE) ----

/// Merchant M1 with customers C0..=C10; C0 has the most transactions and the
/// lowest weight. `total` transactions in all, none of them small enough
/// for PatId2.
fn upgrade_rows(total: usize) -> Vec<String> {
    let mut rows = Vec::with_capacity(total);
    for i in 1..=10 {
        rows.extend(repeat(4_000, row(&format!("C{i}"), "M1", "F", "50.00")));
    }
    rows.extend(repeat(total - 40_000, row("C0", "M1", "F", "50.00")));
    rows
}

fn upgrade_weights() -> Vec<(String, String, String)> {
    (0..=10)
        .map(|i| (format!("C{i}"), "M1".to_string(), format!("{}.00", 10 + i)))
        .collect()
}

fn as_refs(w: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    w.iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect()
}

#[test]
fn upgrade_needs_more_than_50000_transactions_at_the_merchant() {
    let weights = upgrade_weights();
    let rows = upgrade_rows(50_000);
    assert!(
        detect(&rows, &as_refs(&weights), 50_000).is_empty(),
        "N(m) = 50,000 is not enough"
    );
    let mut rows = rows;
    rows.push(row("C3", "M1", "F", "50.00"));
    assert_eq!(
        detect(&rows, &as_refs(&weights), 50_000),
        vec![emission(1, "PatId1", "C0", "M1")],
        "N(m) = 50,001 qualifies, in the chunk that crossed the line"
    );
}

#[test]
fn upgrade_never_fires_for_a_single_customer() {
    let rows = repeat(50_001, row("C0", "M1", "F", "50.00"));
    assert!(detect(&rows, &[("C0", "M1", "1.00")], 60_000).is_empty());
}

#[test]
fn upgrade_count_ties_share_the_rank() {
    // 11 customers: pr_n of the top group is less_n / 10.
    let weights = upgrade_weights();
    let mut rows = Vec::new();
    for i in 2..=10 {
        rows.extend(repeat(4_000, row(&format!("C{i}"), "M1", "F", "50.00")));
    }
    // C0 and C1 tie at the top: 9 customers below each, 9/10 >= 0.9.
    rows.extend(repeat(7_001, row("C0", "M1", "F", "50.00")));
    rows.extend(repeat(7_001, row("C1", "M1", "F", "50.00")));
    // Weights: C0 lowest (10.00), C1 second lowest (11.00): pr_w(C1) =
    // 1/10 <= 0.1, so both match.
    assert_eq!(
        detect(&rows, &as_refs(&weights), 60_000),
        vec![
            emission(0, "PatId1", "C0", "M1"),
            emission(0, "PatId1", "C1", "M1")
        ]
    );
    // Three tied at the top: 8/10 < 0.9, nobody matches.
    let mut three = rows.clone();
    three.retain(|r| !r.contains("'C2'"));
    three.extend(repeat(7_001, row("C2", "M1", "F", "50.00")));
    assert!(detect(&three, &as_refs(&weights), 60_000).is_empty());
}

#[test]
fn upgrade_weight_ties_share_the_rank() {
    // 21 customers with weights: pr_w <= 0.1 means at most 2 strictly lower.
    let mut rows = Vec::new();
    let mut weights = Vec::new();
    for i in 0..21 {
        let c = format!("C{i}");
        rows.extend(repeat(2_500, row(&c, "M1", "F", "50.00")));
        // C0..C3 all share the lowest weight, C4.. are heavier.
        let w = if i < 4 {
            "1.00".to_string()
        } else {
            format!("{}.00", 10 + i)
        };
        weights.push((c, "M1".to_string(), w));
    }
    // C3 has the most transactions: less_n = 20 of 20.
    rows.extend(repeat(100, row("C3", "M1", "F", "50.00")));
    // less_w(C3) = 0 despite three others at the same weight.
    assert_eq!(
        detect(&rows, &as_refs(&weights), 60_000),
        vec![emission(0, "PatId1", "C3", "M1")]
    );
    // Weight averaged over rows: C3 also has a heavy row, its mean becomes
    // (1 + 30) / 2 = 15.50: three customers are now strictly lighter.
    weights.push(("C3".into(), "M1".into(), "30.00".into()));
    assert!(detect(&rows, &as_refs(&weights), 60_000).is_empty());
}

#[test]
fn upgrade_ignores_customers_without_a_weight() {
    let mut rows = upgrade_rows(50_001);
    // C11, without a weight, has even more transactions than C0.
    rows.extend(repeat(20_000, row("C11", "M1", "F", "50.00")));
    let weights = [("C0", "M1", "1.00"), ("C5", "M1", "9.00")];
    // W(m) = {C0, C5}: pr_w(C0) = 0. pr_n(C0) = 10/11 >= 0.9. C11 has no
    // weight and never matches; it still counts in P(m).
    assert_eq!(
        detect(&rows, &weights, 100_000),
        vec![emission(0, "PatId1", "C0", "M1")]
    );
}

// ---- PatId3 (DEI-NEEDED) ----

fn population(females: usize, males: usize, others: &[&str]) -> Vec<String> {
    let mut rows = Vec::new();
    for i in 0..females {
        rows.push(row(&format!("F{i}"), "M1", "F", "5.00"));
    }
    for i in 0..males {
        rows.push(row(&format!("M{i}"), "M1", "M", "5.00"));
    }
    for (i, gender) in others.iter().enumerate() {
        rows.push(row(&format!("X{i}"), "M1", gender, "5.00"));
    }
    rows
}

#[test]
fn dei_needs_more_than_100_women_and_fewer_women_than_men() {
    assert!(
        detect(&population(100, 150, &[]), &[], 1_000).is_empty(),
        "F = 100 is not enough"
    );
    assert_eq!(
        detect(&population(101, 102, &[]), &[], 1_000),
        vec![emission(0, "PatId3", "", "M1")]
    );
    assert!(
        detect(&population(101, 101, &[]), &[], 1_000).is_empty(),
        "F = M is not F < M"
    );
}

#[test]
fn dei_counts_only_f_and_m() {
    let others = ["E", "U", "", "E", "f", "male"];
    assert!(detect(&population(101, 101, &others), &[], 1_000).is_empty());
    assert_eq!(
        detect(&population(101, 102, &others), &[], 1_000),
        vec![emission(0, "PatId3", "", "M1")]
    );
}

#[test]
fn dei_takes_gender_from_the_first_row_at_the_merchant() {
    let mut rows = population(101, 101, &[]);
    // X is male on their first row at M1; later rows say F.
    rows.push(row("X", "M1", "M", "5.00"));
    rows.extend(repeat(3, row("X", "M1", "F", "5.00")));
    // At M2, X's first row says F: that is X's gender at M2.
    rows.push(row("X", "M2", "F", "5.00"));
    assert_eq!(
        detect(&rows, &[], 1_000),
        vec![emission(0, "PatId3", "", "M1")]
    );
    // Across chunks: the first row is in chunk 0, the later ones in chunk 1.
    assert_eq!(
        detect(&rows, &[], 203),
        vec![emission(0, "PatId3", "", "M1")]
    );
}

#[test]
fn dei_is_emitted_once_even_if_it_stops_and_starts_holding() {
    let mut rows = population(101, 102, &[]);
    for i in 0..5 {
        rows.push(row(&format!("G{i}"), "M1", "F", "5.00"));
    }
    for i in 0..10 {
        rows.push(row(&format!("N{i}"), "M1", "M", "5.00"));
    }
    assert_eq!(
        detect(&rows, &[], 203),
        vec![emission(0, "PatId3", "", "M1")]
    );
}
