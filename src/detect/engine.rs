//! The interface every pattern implements, and [`AllPatterns`], which folds
//! chunks into the pair table and runs the three patterns over them in one
//! place (what the tests and the oracle use; the pipeline spreads the same
//! steps over the watcher and the detector actors).

use std::sync::Arc;

use super::{
    ChildDetector, ChunkDelta, ChunkUpdate, DeiDetector, Detection, PairTotals, Pattern, Shard,
    Snapshot, Thresholds, UpgradeDetector, WeightTable,
};

/// One pattern's incremental evaluation over the merchants of one shard.
pub trait PatternEngine: Send {
    fn pattern(&self) -> Pattern;

    /// Replaces all in-memory state with committed state.
    fn restore(&mut self, snapshot: &Snapshot);

    /// Takes one chunk, already folded into the pair table, and appends the
    /// detections that hold for the first time.
    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>);
}

/// Builds the engine for `pattern` on `shard`.
pub fn engine_for(
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

/// The pair table and the three patterns together.
pub struct AllPatterns {
    totals: PairTotals,
    engines: Vec<Box<dyn PatternEngine>>,
}

impl AllPatterns {
    pub fn new(thresholds: Thresholds, weights: Arc<WeightTable>) -> AllPatterns {
        AllPatterns {
            totals: PairTotals::new(&weights),
            engines: Pattern::ALL
                .into_iter()
                .map(|p| engine_for(p, Shard::ALL, thresholds, weights.clone()))
                .collect(),
        }
    }

    pub fn restore(&mut self, snapshot: &Snapshot) {
        self.totals.restore(snapshot);
        for engine in &mut self.engines {
            engine.restore(snapshot);
        }
    }

    /// Applies a chunk and returns its new detections.
    pub fn apply(&mut self, delta: &ChunkDelta) -> Vec<Detection> {
        let update = self.totals.fold(delta);
        let mut out = Vec::new();
        for engine in &mut self.engines {
            engine.apply(&update, &mut out);
        }
        out
    }
}
