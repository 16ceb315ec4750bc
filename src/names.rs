//! The process-wide name table: customer and merchant names become small
//! integer ids once, so that the engine hashes and stores `u32`s instead of
//! strings.
//!
//! Ids are a cache, never persisted: the state store keeps names, and every
//! actor maps names to ids through the same table when it (re)loads state.
//! The table only grows, so an id handed out is valid for the life of the
//! process, whatever actors restart.

use lasso::{Key, Spur, ThreadedRodeo};
use rustc_hash::FxBuildHasher;

use crate::detect::{CustomerId, MerchantId};

/// Names are short ids from the operator's own input files, looked up once
/// per distinct pair of every chunk: FxHash rather than the default SipHash,
/// whose protection against crafted collisions buys nothing here.
#[derive(Debug)]
pub struct Names {
    table: ThreadedRodeo<Spur, FxBuildHasher>,
}

impl Default for Names {
    fn default() -> Names {
        Names {
            table: ThreadedRodeo::with_hasher(FxBuildHasher),
        }
    }
}

impl Names {
    pub fn new() -> Names {
        Names::default()
    }

    #[inline]
    pub fn customer(&self, name: &str) -> CustomerId {
        CustomerId(self.id(name))
    }

    #[inline]
    pub fn merchant(&self, name: &str) -> MerchantId {
        MerchantId(self.id(name))
    }

    #[inline]
    fn id(&self, name: &str) -> u32 {
        self.table.get_or_intern(name).into_usize() as u32
    }

    /// The name behind an id handed out by this table.
    pub fn name(&self, id: u32) -> &str {
        let key = Spur::try_from_usize(id as usize).expect("id from this table");
        self.table.resolve(&key)
    }
}
