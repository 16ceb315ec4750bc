//! The pattern engine: pure, synchronous, no I/O.
//!
//! Data flows through it like this: the input layer turns a chunk of CSV rows
//! into a [`ChunkDelta`] (per merchant/customer pair: how many good rows, the
//! sum of their amounts, the gender on the pair's first row). [`PairTotals`]
//! keeps the one cumulative table of all pairs and folds each delta into it,
//! in chunk order, producing a [`ChunkUpdate`]: every pair the chunk touched
//! with its totals *after* the chunk, whether it is new, and its weight
//! slot. Each pattern detector reads the update, so none of them keeps a
//! per-pair table of its own (the pair table is the one large structure,
//! looked up once per pair), updates its per-merchant figures and evaluates
//! its pattern for the merchants the chunk changed, returning the detections
//! that hold for the first time. A merchant the chunk did not change has the
//! same state as after the previous chunk, so anything it could match has
//! already been emitted.
//!
//! Detectors are sharded by merchant ([`Shard`]): every pattern only ever
//! looks at one merchant's state at a time, so any number of shards give the
//! same detections as one.
//!
//! All decisions use integers (amounts in hundredths, weights as exact
//! fractions); see `docs/patterns.md` for the semantics in plain words and
//! `../shared/spec/patterns.md` for the contract.

mod amount;
mod by_merchant;
mod child;
mod dei;
mod engine;
mod fenwick;
pub mod key_group;
mod totals;
mod upgrade;
mod weight;

pub use amount::{Cents, ParseAmountError, parse_amount};
pub use child::ChildDetector;
pub use dei::DeiDetector;
pub use engine::{Engine, LocalEngine, PatternEngine, parts};
pub use totals::PairTotals;
pub use upgrade::UpgradeDetector;
pub use weight::{Weight, WeightTable, WeightTableBuilder};

use std::fmt;

/// A merchant, as an id handed out by the process-wide name table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(pub u32);

/// A customer, as an id handed out by the process-wide name table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(pub u32);

/// Gender as the patterns see it: only `F` and `M` count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gender {
    Female,
    Male,
    Other,
}

impl Gender {
    /// Classifies a gender field after quote stripping.
    pub fn from_field(value: &[u8]) -> Gender {
        match value {
            b"F" => Gender::Female,
            b"M" => Gender::Male,
            _ => Gender::Other,
        }
    }

    /// One-letter code used in the state tables.
    pub fn code(self) -> &'static str {
        match self {
            Gender::Female => "F",
            Gender::Male => "M",
            Gender::Other => "O",
        }
    }

    pub fn from_code(code: &str) -> Gender {
        Gender::from_field(code.as_bytes())
    }
}

/// The three patterns of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// PatId1: top-decile count, bottom-decile weight at a big merchant.
    Upgrade,
    /// PatId2: many small payments at one merchant.
    Child,
    /// PatId3: a merchant whose female customers are outnumbered.
    DeiNeeded,
}

impl Pattern {
    pub const ALL: [Pattern; 3] = [Pattern::Upgrade, Pattern::Child, Pattern::DeiNeeded];

    pub fn id(self) -> &'static str {
        match self {
            Pattern::Upgrade => "PatId1",
            Pattern::Child => "PatId2",
            Pattern::DeiNeeded => "PatId3",
        }
    }

    pub fn action(self) -> &'static str {
        match self {
            Pattern::Upgrade => "UPGRADE",
            Pattern::Child => "CHILD",
            Pattern::DeiNeeded => "DEI-NEEDED",
        }
    }

    pub fn from_id(id: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.id() == id)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The thresholds of the contract. Only tests use other values, to make
/// patterns fire on small random datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// PatId1 applies to merchants with strictly more transactions.
    pub upgrade_min_merchant_txns: u64,
    /// PatId2 needs at least this many transactions of a pair.
    pub child_min_txns: u64,
    /// PatId2 needs an average amount strictly below this many hundredths.
    pub child_max_avg_cents: i64,
    /// PatId3 needs strictly more female customers than this.
    pub dei_min_female: u64,
}

impl Thresholds {
    pub const SPEC: Thresholds = Thresholds {
        upgrade_min_merchant_txns: 50_000,
        child_min_txns: 80,
        child_max_avg_cents: 2_300,
        dei_min_female: 100,
    };
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::SPEC
    }
}

/// Which merchants a detector owns: `merchant id % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Shard {
        assert!(count > 0 && index < count, "shard {index} of {count}");
        Shard { index, count }
    }

    /// Asked for every pair of every chunk: the common single shard
    /// skips the division.
    #[inline]
    pub fn owns(self, merchant: MerchantId) -> bool {
        self.count == 1 || merchant.0 % self.count == self.index
    }
}

/// What one chunk changes for one merchant/customer pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairDelta {
    pub merchant: MerchantId,
    pub customer: CustomerId,
    /// Good rows of the pair in this chunk (at least 1).
    pub count: u32,
    /// Sum of their amounts, in hundredths (saturating).
    pub amount: Cents,
    /// Gender on the pair's first good row in this chunk.
    pub first_gender: Gender,
}

/// The good rows of one chunk (or of several consecutive chunks), folded
/// per pair, in order of each pair's first row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkDelta {
    pub pairs: Vec<PairDelta>,
}

impl ChunkDelta {
    /// Number of good rows the delta stands for.
    pub fn rows(&self) -> u64 {
        self.pairs.iter().map(|p| u64::from(p.count)).sum()
    }
}

/// One pair the chunk touched, with the pair's cumulative state after the
/// chunk: what the detectors read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairUpdate {
    pub merchant: MerchantId,
    pub customer: CustomerId,
    /// Good rows of the pair in this chunk (at least 1).
    pub added: u32,
    /// `n(c, m)` after the chunk.
    pub count: u64,
    /// `s(c, m)` after the chunk, in hundredths (saturating).
    pub amount: Cents,
    /// Gender on the pair's first good row ever.
    pub gender: Gender,
    /// The customer's slot at the merchant in the [`WeightTable`], or
    /// [`NO_WEIGHT`] when `w(c, m)` is undefined.
    pub weight_slot: u32,
}

/// The `weight_slot` of a pair without a weight.
pub const NO_WEIGHT: u32 = u32::MAX;

impl PairUpdate {
    /// The pair's count before the chunk.
    #[inline]
    pub fn before(&self) -> u64 {
        self.count - u64::from(self.added)
    }

    /// Whether the customer joined `P(m)` with this chunk.
    #[inline]
    pub fn is_new(&self) -> bool {
        self.before() == 0
    }
}

/// A [`ChunkDelta`] folded into the cumulative pair table, same pairs in
/// the same order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkUpdate {
    pub pairs: Vec<PairUpdate>,
}

/// The cumulative state of one pair, as committed in the state store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairState {
    pub merchant: MerchantId,
    pub customer: CustomerId,
    pub count: u64,
    pub amount: Cents,
    /// Gender on the pair's first good row ever.
    pub gender: Gender,
}

/// Identifies a detection; each is emitted at most once, ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DetectionKey {
    pub pattern: Pattern,
    pub merchant: MerchantId,
    /// `None` for PatId3, whose detections are per merchant.
    pub customer: Option<CustomerId>,
}

/// An exact ratio `numerator / denominator` (a percent rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    pub numerator: u64,
    pub denominator: u64,
}

impl Ratio {
    pub fn as_f64(self) -> f64 {
        if self.denominator == 0 {
            0.0
        } else {
            self.numerator as f64 / self.denominator as f64
        }
    }
}

/// The figures that justified a detection, kept in the
/// `detected_patterns` table (the seeds' columns). Only the figures that
/// apply to the pattern are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub txn_count: Option<u64>,
    pub amount_sum: Option<Cents>,
    pub weight: Option<Weight>,
    pub txn_rank: Option<Ratio>,
    pub weight_rank: Option<Ratio>,
    pub female: Option<u64>,
    pub male: Option<u64>,
}

impl Evidence {
    /// The average amount in currency units, for reporting only.
    pub fn avg_amount(&self) -> Option<f64> {
        match (self.amount_sum, self.txn_count) {
            (Some(sum), Some(n)) if n > 0 => Some(sum.0 as f64 / 100.0 / n as f64),
            _ => None,
        }
    }
}

/// A pattern that holds for the first time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    pub key: DetectionKey,
    pub evidence: Evidence,
}

/// Committed state a detector starts from: the cumulative pair state and
/// what has already been emitted.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pairs: Vec<PairState>,
    pub emitted: Vec<DetectionKey>,
}
