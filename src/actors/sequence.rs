//! Order in Mechanism Y, as two pure rules the stages share.
//!
//! The watcher numbers the chunks it announces in a generation
//! (0, 1, 2, …). Stages that work on several chunks at once (the reader
//! parses in parallel, the pair table waits for the detectors' answers)
//! finish them out of order; [`InOrder`] hands them on in announcement
//! order. Stages that keep cumulative state check with [`Chain`] that
//! every chunk follows the one they applied last, so a chunk can never be
//! applied twice or skipped by a stage, whatever a restart left in a
//! mailbox.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Items numbered from `next`, taken back in number order.
#[derive(Debug)]
pub struct InOrder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> InOrder<T> {
    pub fn new(first: u64) -> InOrder<T> {
        InOrder {
            next: first,
            waiting: BTreeMap::new(),
        }
    }

    /// Takes item number `n`. Returns it back if that number was already
    /// handed on or is already waiting (a duplicate).
    pub fn push(&mut self, n: u64, item: T) -> Result<(), T> {
        if n < self.next || self.waiting.contains_key(&n) {
            return Err(item);
        }
        self.waiting.insert(n, item);
        Ok(())
    }

    /// The next item in order, if it has arrived.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }

    /// Items that arrived ahead of a missing one.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The last chunk a stage applied; the next must name it as its
/// predecessor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    last: Option<Arc<str>>,
}

impl Chain {
    /// A chain whose last applied chunk is the last committed one.
    pub fn after(last: Option<Arc<str>>) -> Chain {
        Chain { last }
    }

    pub fn last(&self) -> Option<&Arc<str>> {
        self.last.as_ref()
    }

    /// Checks that `chunk` follows `previous`, and makes it the last.
    pub fn follow(&mut self, previous: Option<&Arc<str>>, chunk: Arc<str>) -> Result<(), String> {
        if self.last.as_ref() != previous {
            return Err(format!(
                "expected a chunk after {:?}, got {chunk:?} after {previous:?}",
                self.last
            ));
        }
        self.last = Some(chunk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_items_on_in_number_order() {
        let mut order = InOrder::new(0);
        order.push(2, "c").unwrap();
        order.push(1, "b").unwrap();
        assert_eq!(order.pop(), None, "0 is missing");
        assert_eq!(order.waiting(), 2);
        order.push(0, "a").unwrap();
        assert_eq!(order.pop(), Some("a"));
        assert_eq!(order.pop(), Some("b"));
        assert_eq!(order.pop(), Some("c"));
        assert_eq!(order.pop(), None);
    }

    #[test]
    fn refuses_numbers_already_handed_on_or_waiting() {
        let mut order = InOrder::new(5);
        assert_eq!(order.push(4, "old"), Err("old"));
        order.push(5, "a").unwrap();
        assert_eq!(order.push(5, "again"), Err("again"));
        assert_eq!(order.pop(), Some("a"));
        assert_eq!(order.push(5, "late"), Err("late"));
    }

    #[test]
    fn a_chain_takes_only_the_next_chunk() {
        let a: Arc<str> = Arc::from("stream_chunks/chunk-0000000000-x.csv");
        let b: Arc<str> = Arc::from("stream_chunks/chunk-0000000001-x.csv");
        let mut chain = Chain::after(None);
        chain.follow(None, a.clone()).unwrap();
        assert!(chain.follow(None, a.clone()).is_err(), "applied twice");
        let mut skipping = Chain::after(None);
        assert!(
            skipping.follow(Some(&a), b.clone()).is_err(),
            "a was skipped"
        );
        chain.follow(Some(&a), b.clone()).unwrap();
        assert_eq!(chain.last(), Some(&b));
    }
}
