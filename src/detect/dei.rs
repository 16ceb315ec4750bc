//! PatId3 (`DEI-NEEDED`): a merchant with more than 100 female customers and
//! fewer female than male customers. A customer's gender at a merchant is
//! the one on their first good row there, so it is fixed when the customer
//! first appears and later rows never move the counts: only the pairs the
//! [`ChunkUpdate`] marks as new count, and no per-customer set is needed.

use rustc_hash::FxHashSet;

use super::by_merchant::ByMerchant;

use super::{
    ChunkUpdate, Detection, DetectionKey, Evidence, Gender, MerchantId, Pattern, PatternEngine,
    Shard, Snapshot, Thresholds,
};

pub struct DeiDetector {
    shard: Shard,
    thresholds: Thresholds,
    merchants: ByMerchant<Population>,
    emitted: FxHashSet<MerchantId>,
    touched: Vec<MerchantId>,
}

/// `F(m)` and `M(m)`.
#[derive(Default)]
struct Population {
    female: u64,
    male: u64,
}

impl Population {
    /// A customer joins `P(m)` with the gender of their first row there.
    fn join(&mut self, gender: Gender) {
        match gender {
            Gender::Female => self.female += 1,
            Gender::Male => self.male += 1,
            Gender::Other => {}
        }
    }
}

impl DeiDetector {
    pub fn new(shard: Shard, thresholds: Thresholds) -> Self {
        DeiDetector {
            shard,
            thresholds,
            merchants: ByMerchant::default(),
            emitted: FxHashSet::default(),
            touched: Vec::new(),
        }
    }
}

impl PatternEngine for DeiDetector {
    fn pattern(&self) -> Pattern {
        Pattern::DeiNeeded
    }

    fn merge(&mut self, snapshot: &Snapshot) {
        for pair in snapshot
            .pairs
            .iter()
            .filter(|p| self.shard.owns(p.merchant))
        {
            self.merchants
                .get_or_insert_with(pair.merchant, Population::default)
                .join(pair.gender);
        }
        for key in &snapshot.emitted {
            if key.pattern == Pattern::DeiNeeded && self.shard.owns(key.merchant) {
                self.emitted.insert(key.merchant);
            }
        }
    }

    fn forget(&mut self, gone: &dyn Fn(MerchantId) -> bool) {
        self.merchants.retain(|merchant| !gone(merchant));
        self.emitted.retain(|merchant| !gone(*merchant));
    }

    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>) {
        for pair in update
            .pairs
            .iter()
            .filter(|p| p.is_new() && self.shard.owns(p.merchant))
        {
            self.merchants
                .touch(pair.merchant, Population::default)
                .join(pair.gender);
        }
        self.merchants.take_touched(&mut self.touched);
        for &merchant in &self.touched {
            let population = self.merchants.get(merchant).expect("touched merchant");
            let holds = population.female > self.thresholds.dei_min_female
                && population.female < population.male;
            if holds && self.emitted.insert(merchant) {
                out.push(Detection {
                    key: DetectionKey {
                        pattern: Pattern::DeiNeeded,
                        merchant,
                        customer: None,
                    },
                    evidence: Evidence {
                        female: Some(population.female),
                        male: Some(population.male),
                        ..Evidence::default()
                    },
                });
            }
        }
    }
}
