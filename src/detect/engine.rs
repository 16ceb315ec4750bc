//! The interface every pattern implements, and [`Engine`], the one
//! composition of the pair table and the patterns that the pipeline's
//! actors, the tests and the benchmarks all use.

use std::sync::Arc;

use super::{
    ChildDetector, ChunkDelta, ChunkUpdate, DeiDetector, Detection, MerchantId, PairTotals,
    Pattern, Shard, Snapshot, Thresholds, UpgradeDetector, WeightTable,
};

/// One pattern's incremental evaluation over the merchants of one shard.
pub trait PatternEngine: Send {
    fn pattern(&self) -> Pattern;

    /// Replaces all in-memory state with committed state.
    fn restore(&mut self, snapshot: &Snapshot) {
        self.forget(&|_| true);
        self.merge(snapshot);
    }

    /// Adds the committed state of merchants it holds nothing of (the key
    /// groups a cluster worker takes over): their pairs and emitted
    /// detections in `snapshot`.
    fn merge(&mut self, snapshot: &Snapshot);

    /// Drops everything it holds of the merchants `gone` accepts (the key
    /// groups a cluster worker hands over).
    fn forget(&mut self, gone: &dyn Fn(MerchantId) -> bool);

    /// Goes on with another lookup table that holds the same entries for
    /// every merchant it holds state of (a cluster worker keeps only its
    /// key groups' weights; slots never change). Patterns that read no
    /// weights ignore it.
    fn reweigh(&mut self, _weights: &Arc<WeightTable>) {}

    /// Takes one chunk, already folded into the pair table, and appends the
    /// detections that hold for the first time.
    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>);
}

/// Builds the engine for `pattern` on `shard`.
fn engine_for(
    pattern: Pattern,
    shard: Shard,
    thresholds: Thresholds,
    weights: Arc<WeightTable>,
) -> Box<dyn PatternEngine> {
    match pattern {
        Pattern::Upgrade => Box::new(UpgradeDetector::new(shard, thresholds, weights)),
        Pattern::Child => Box::new(ChildDetector::new(shard, thresholds)),
        Pattern::DeiNeeded => Box::new(DeiDetector::new(shard, thresholds)),
    }
}

/// How the detection engine is composed, written once: every chunk's
/// [`ChunkDelta`] is folded into one cumulative pair table
/// ([`PairTotals`]), and the resulting [`ChunkUpdate`] goes to every pattern,
/// each split into shards of the merchants. The pipeline runs the pair
/// table and every `(pattern, shard)` in actors of their own; tests and
/// benchmarks run the same parts in one thread with [`LocalEngine`].
#[derive(Clone)]
pub struct Engine {
    thresholds: Thresholds,
    weights: Arc<WeightTable>,
    /// Shards per pattern, in [`Pattern::ALL`] order.
    shards: [u32; 3],
}

impl Engine {
    pub fn new(thresholds: Thresholds, weights: Arc<WeightTable>, shards: [u32; 3]) -> Engine {
        Engine {
            thresholds,
            weights,
            shards: shards.map(|n| n.max(1)),
        }
    }

    pub fn weights(&self) -> &Arc<WeightTable> {
        &self.weights
    }

    /// The same composition over another lookup table (a cluster worker's
    /// generation detects over its key groups' weights only).
    pub fn with_weights(&self, weights: Arc<WeightTable>) -> Engine {
        Engine {
            weights,
            ..self.clone()
        }
    }

    /// Every `(pattern, shard)` the engine runs.
    pub fn parts(&self) -> impl Iterator<Item = (Pattern, Shard)> + '_ {
        Pattern::ALL
            .into_iter()
            .zip(self.shards)
            .flat_map(|(pattern, count)| {
                (0..count).map(move |index| (pattern, Shard::new(index, count)))
            })
    }

    /// The pair table as of `committed`.
    pub fn pair_table(&self, committed: &Snapshot) -> PairTotals {
        let mut totals = PairTotals::new(&self.weights);
        totals.restore(committed);
        totals
    }

    /// One pattern's shard as of `committed`.
    pub fn detector(
        &self,
        pattern: Pattern,
        shard: Shard,
        committed: &Snapshot,
    ) -> Box<dyn PatternEngine> {
        let mut engine = engine_for(pattern, shard, self.thresholds, self.weights.clone());
        engine.restore(committed);
        engine
    }

    /// Every part in one value, as of `committed`.
    pub fn local(&self, committed: &Snapshot) -> LocalEngine {
        LocalEngine {
            weights: self.weights.clone(),
            totals: self.pair_table(committed),
            detectors: self
                .parts()
                .map(|(pattern, shard)| self.detector(pattern, shard, committed))
                .collect(),
        }
    }
}

/// Every `(pattern, shard)` of an engine with `shards` shards per pattern
/// (in [`Pattern::ALL`] order).
pub fn parts(shards: [u32; 3]) -> impl Iterator<Item = (Pattern, Shard)> {
    Pattern::ALL
        .into_iter()
        .zip(shards.map(|n| n.max(1)))
        .flat_map(|(pattern, count)| {
            (0..count).map(move |index| (pattern, Shard::new(index, count)))
        })
}

/// No lookup weights, the contract's thresholds, one shard per pattern.
impl Default for Engine {
    fn default() -> Self {
        Engine::new(
            Thresholds::SPEC,
            Arc::new(WeightTable::from_entries(std::iter::empty())),
            [1, 1, 1],
        )
    }
}

/// The pair table and every pattern shard in one thread.
pub struct LocalEngine {
    weights: Arc<WeightTable>,
    totals: PairTotals,
    detectors: Vec<Box<dyn PatternEngine>>,
}

impl LocalEngine {
    /// Applies a chunk and returns its new detections.
    pub fn apply(&mut self, delta: &ChunkDelta) -> Vec<Detection> {
        let update = self.totals.fold(delta);
        let mut out = Vec::new();
        for detector in &mut self.detectors {
            detector.apply(&update, &mut out);
        }
        out
    }

    pub fn pairs(&self) -> usize {
        self.totals.len()
    }

    /// Hands the merchants `gone` accepts over: drops all their state.
    pub fn forget(&mut self, gone: &dyn Fn(MerchantId) -> bool) {
        self.totals.forget(gone);
        for detector in &mut self.detectors {
            detector.forget(gone);
        }
    }

    /// Goes on over another lookup table (see [`PatternEngine::reweigh`]):
    /// a cluster worker's, narrowed to the merchants kept or widened to
    /// those it is about to take over.
    pub fn reweigh(&mut self, weights: Arc<WeightTable>) {
        for detector in &mut self.detectors {
            detector.reweigh(&weights);
        }
        self.weights = weights;
    }

    /// Takes merchants over that it holds nothing of (`new` accepts them),
    /// from their committed state in `snapshot`.
    pub fn merge(&mut self, new: &dyn Fn(MerchantId) -> bool, snapshot: &Snapshot) {
        self.totals.merge(&self.weights, new, snapshot);
        for detector in &mut self.detectors {
            detector.merge(snapshot);
        }
    }
}
