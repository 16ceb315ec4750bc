//! Which listed objects are chunks: the rules that decide, for every key the
//! watcher lists under `stream_chunks/`, whether Mechanism Y applies it,
//! ignores it for good, or waits.
//!
//! Chunks are applied in sequence order, one object per sequence number:
//!
//! - A key with the chunker's shape (`chunk-SEQ-…`) whose `SEQ` is the next
//!   one expected is applied if it is the key the chunker claimed for that
//!   number (the chunker saves its keys before their PUTs, see
//!   `chunk_keys`). If the chunker claimed another key, this one is a
//!   *duplicate* and is ignored. If nothing claimed the number yet, the
//!   object waits while the chunker may still claim it; once the chunker has
//!   finished the master file, numbers it never reached are free, and the
//!   first object listed for such a number (in key order) is applied — a
//!   *third-party chunk*.
//! - A chunk-shaped key whose number was already taken is a duplicate.
//! - A later number waits for the missing ones (the chunker's PUTs run in
//!   parallel and may become visible out of order). A missing number the
//!   chunker claimed waits as long as its PUT may be under way; once the
//!   chunker has recorded the PUT as done and `gap_timeout` has passed, it
//!   is applied anyway, so that reading its object finds it gone (deleted
//!   by hand) and records it as rejected. A missing number nobody claimed
//!   is skipped after `gap_timeout`, but only once the chunker can no
//!   longer claim it.
//! - Any other name is *foreign* and is ignored.
//!
//! Ignored keys are recorded once and never move the listing position: the
//! watcher lists after the last *applied* key, so an object named to sort
//! after every chunk (`zz-…`) can never hide the chunks that come later.
//! Objects that appear with names sorting before the last committed chunk
//! are found by the watcher's periodic sweep and decided by
//! [`ChunkGate::passed_over`]: they can only be strangers.
//! The gate is pure (no I/O): the watcher feeds it listings and the
//! chunker's claims and acts on its verdicts.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::db::ChunkClaims;
use crate::layout;

/// Why an object is not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The name is not a chunk name.
    Foreign,
    /// Its sequence number belongs to another object.
    Duplicate { seq: u64, taken_by: Option<String> },
}

impl Ignored {
    pub fn reason(&self) -> String {
        match self {
            Ignored::Foreign => "not a chunk name (stream_chunks/chunk-SEQUENCE-…)".to_string(),
            Ignored::Duplicate {
                seq,
                taken_by: Some(key),
            } => format!("duplicate of sequence number {seq}, which is chunk {key:?}"),
            Ignored::Duplicate {
                seq,
                taken_by: None,
            } => {
                format!("duplicate of sequence number {seq}, which was already taken")
            }
        }
    }

    /// The quarantine copy's suffix.
    pub fn kind(&self) -> &'static str {
        match self {
            Ignored::Foreign => "foreign",
            Ignored::Duplicate { .. } => "duplicate",
        }
    }
}

/// What to do with one listed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply this object as the chunk with its sequence number.
    Apply(String),
    /// Never apply it; record it once.
    Ignore { key: String, why: Ignored },
}

/// Why [`ChunkGate::admit`] stopped before the end of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every key was decided.
    Done,
    /// A key must wait (a missing sequence number, or one the chunker may
    /// still claim): list again soon, from the last applied key.
    Held,
    /// A key's fate depends on claims the gate has not seen: fetch them
    /// and call again with the rest of the listing.
    NeedClaims,
}

#[derive(Debug)]
pub struct Admission {
    pub verdicts: Vec<Verdict>,
    /// How many keys of the listing were decided.
    pub consumed: usize,
    pub stop: Stop,
}

pub struct ChunkGate {
    /// The next sequence number to apply.
    expected: u64,
    claims: BTreeMap<u64, String>,
    chunker_next_seq: u64,
    chunker_finished: bool,
    gap_since: Option<Instant>,
    gap_timeout: Duration,
    /// Keys already ignored (they are listed again after the last applied
    /// key, and decided once).
    ignored: HashSet<String>,
}

impl ChunkGate {
    /// A gate after the last committed chunk `last_committed`.
    pub fn new(last_committed: Option<&str>, gap_timeout: Duration) -> ChunkGate {
        ChunkGate {
            expected: last_committed
                .and_then(layout::chunk_seq)
                .map_or(0, |seq| seq + 1),
            claims: BTreeMap::new(),
            chunker_next_seq: 0,
            chunker_finished: false,
            gap_since: None,
            gap_timeout,
            ignored: HashSet::new(),
        }
    }

    /// The sequence number claims are needed from.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Takes what the database says the chunker claimed, from
    /// [`ChunkGate::expected`] on.
    pub fn update_claims(&mut self, claims: ChunkClaims) {
        self.claims = claims.keys.into_iter().collect();
        self.chunker_next_seq = claims.chunker_next_seq;
        self.chunker_finished = claims.chunker_finished;
    }

    /// The key the chunker claimed for `seq`. A finished chunker's claims
    /// at or after its last number are void: it claims keys ahead of its
    /// cuts, and never writes those beyond the end of the master file.
    fn claim(&self, seq: u64) -> Option<&String> {
        if self.chunker_finished && seq >= self.chunker_next_seq {
            return None;
        }
        self.claims.get(&seq)
    }

    /// Notes a claim known without asking the database: a key this
    /// process's chunker wrote (it saved the claim before the PUT). A claim
    /// already known is kept.
    pub fn note_claim(&mut self, seq: u64, key: &str) {
        self.claims.entry(seq).or_insert_with(|| key.to_string());
    }

    /// Decides the keys of a listing, in order. `claims_fresh` says the
    /// claims were just read: a key they leave undecided then waits instead
    /// of asking for them again.
    pub fn admit(&mut self, keys: &[String], now: Instant, claims_fresh: bool) -> Admission {
        let mut verdicts = Vec::new();
        let mut consumed = 0;
        let stop = loop {
            let Some(key) = keys.get(consumed) else {
                break Stop::Done;
            };
            if self.ignored.contains(key) {
                consumed += 1;
                continue;
            }
            let Some(seq) = layout::chunk_seq(key) else {
                verdicts.push(self.ignore(key, Ignored::Foreign));
                consumed += 1;
                continue;
            };
            if seq < self.expected {
                let taken_by = self.claim(seq).cloned();
                verdicts.push(self.ignore(key, Ignored::Duplicate { seq, taken_by }));
                consumed += 1;
                continue;
            }
            if seq > self.expected {
                match self.pass_gap(now, claims_fresh) {
                    GapStep::Wait(stop) => break stop,
                    GapStep::ApplyClaimed(claimed) => {
                        verdicts.push(Verdict::Apply(claimed));
                        self.expected += 1;
                    }
                    GapStep::Skip => self.expected = seq,
                }
                // Decide the same key again against the new expectation.
                continue;
            }
            match self.claim(seq) {
                Some(claimed) if claimed == key => {
                    verdicts.push(Verdict::Apply(key.clone()));
                    self.applied(seq);
                }
                // The chunker claimed `seq` ahead of writing it: its object
                // would have been listed before this one, so it is not
                // written yet, and it may never be (a finished chunker's
                // claims past its end are void). Wait until it is written
                // (then this is a duplicate) or the chunker finishes short
                // of it (then this is a third-party chunk).
                Some(claimed) if claimed.as_str() < key.as_str() && self.may_still_write(seq) => {
                    break if claims_fresh {
                        Stop::Held
                    } else {
                        Stop::NeedClaims
                    };
                }
                Some(claimed) => {
                    let taken_by = Some(claimed.clone());
                    verdicts.push(self.ignore(key, Ignored::Duplicate { seq, taken_by }));
                }
                None if self.unclaimable(seq, claims_fresh) => {
                    verdicts.push(Verdict::Apply(key.clone()));
                    self.applied(seq);
                }
                None if claims_fresh => break Stop::Held,
                None => break Stop::NeedClaims,
            }
            consumed += 1;
        };
        Admission {
            verdicts,
            consumed,
            stop,
        }
    }

    /// Decides a key found by a sweep before the last committed chunk that
    /// was never applied: `None` if it was already ignored.
    pub fn passed_over(&mut self, key: &str) -> Option<Verdict> {
        if self.ignored.contains(key) {
            return None;
        }
        let why = match layout::chunk_seq(key) {
            Some(seq) => Ignored::Duplicate {
                seq,
                taken_by: self.claim(seq).cloned(),
            },
            None => Ignored::Foreign,
        };
        Some(self.ignore(key, why))
    }

    fn applied(&mut self, seq: u64) {
        self.expected = seq + 1;
        self.gap_since = None;
    }

    fn ignore(&mut self, key: &str, why: Ignored) -> Verdict {
        self.ignored.insert(key.to_string());
        Verdict::Ignore {
            key: key.to_string(),
            why,
        }
    }

    /// Whether the chunker may still write the object it claimed for `seq`
    /// (it has not saved a position past it, and has not finished).
    fn may_still_write(&self, seq: u64) -> bool {
        !self.chunker_finished && seq >= self.chunker_next_seq
    }

    /// Whether the chunker can never claim `seq`: it finished before it, or
    /// (a database from before claims were kept) it passed it without a
    /// claim. Claims, once made, never change, so a cached claim is always
    /// right; the absence of one only counts when the claims are fresh.
    fn unclaimable(&self, seq: u64, claims_fresh: bool) -> bool {
        self.chunker_finished || (claims_fresh && seq < self.chunker_next_seq)
    }

    /// The expected number is missing and a later one was listed.
    fn pass_gap(&mut self, now: Instant, claims_fresh: bool) -> GapStep {
        let since = *self.gap_since.get_or_insert(now);
        if now.duration_since(since) < self.gap_timeout {
            return GapStep::Wait(Stop::Held);
        }
        if let Some(claimed) = self.claim(self.expected).cloned() {
            // Only once the chunker has recorded the PUT as done (its
            // position moved past the number): until then the PUT may
            // still be under way, retried, or redone by the next owner.
            if !claims_fresh {
                return GapStep::Wait(Stop::NeedClaims);
            }
            if self.chunker_next_seq <= self.expected {
                return GapStep::Wait(Stop::Held);
            }
            tracing::error!(
                missing = self.expected,
                chunk = ?claimed,
                "a chunk the chunker wrote is still not listed; reading it directly"
            );
            self.gap_since = None;
            return GapStep::ApplyClaimed(claimed);
        }
        if !self.unclaimable(self.expected, claims_fresh) {
            return if claims_fresh {
                GapStep::Wait(Stop::Held)
            } else {
                GapStep::Wait(Stop::NeedClaims)
            };
        }
        tracing::error!(
            missing = self.expected,
            "chunk sequence numbers missing that nobody claimed; going on without them"
        );
        self.gap_since = None;
        GapStep::Skip
    }
}

enum GapStep {
    Wait(Stop),
    ApplyClaimed(String),
    Skip,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64, stamp: &str) -> String {
        layout::chunk_key(seq, stamp)
    }

    fn claims(keys: &[(u64, &str)], next_seq: u64, finished: bool) -> ChunkClaims {
        ChunkClaims {
            keys: keys
                .iter()
                .map(|&(seq, stamp)| (seq, key(seq, stamp)))
                .collect(),
            chunker_next_seq: next_seq,
            chunker_finished: finished,
        }
    }

    fn applied(admission: &Admission) -> Vec<String> {
        admission
            .verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Apply(key) => Some(key.clone()),
                Verdict::Ignore { .. } => None,
            })
            .collect()
    }

    fn ignored(admission: &Admission) -> Vec<(String, &'static str)> {
        admission
            .verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Ignore { key, why } => Some((key.clone(), why.kind())),
                Verdict::Apply(_) => None,
            })
            .collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn claimed_chunks_apply_in_order_and_impostors_of_their_numbers_do_not() {
        let mut gate = ChunkGate::new(None, TIMEOUT);
        gate.update_claims(claims(&[(0, "a"), (1, "a"), (2, "a")], 0, false));
        let now = Instant::now();
        // An impostor for 1 sorts after the real 1 ("z" > "a"), another for
        // 2 before the real 2 ("0" < "a").
        let listing = vec![
            key(0, "a"),
            key(1, "a"),
            key(1, "z"),
            key(2, "0"),
            key(2, "a"),
        ];
        let admission = gate.admit(&listing, now, true);
        assert_eq!(admission.stop, Stop::Done);
        assert_eq!(
            applied(&admission),
            vec![key(0, "a"), key(1, "a"), key(2, "a")]
        );
        assert_eq!(
            ignored(&admission),
            vec![(key(1, "z"), "duplicate"), (key(2, "0"), "duplicate")]
        );
        // Listed again after the last applied key: the ignored ones are
        // not reported twice.
        let again = gate.admit(&[key(2, "z")], now, true);
        assert_eq!(ignored(&again), vec![(key(2, "z"), "duplicate")]);
        assert!(gate.admit(&[key(1, "z")], now, true).verdicts.is_empty());
    }

    #[test]
    fn foreign_names_are_ignored_and_never_stop_the_chunks_behind_them() {
        let mut gate = ChunkGate::new(None, TIMEOUT);
        gate.update_claims(claims(&[(0, "a")], 0, false));
        let now = Instant::now();
        let first = gate.admit(&["stream_chunks/a.bin".to_string(), key(0, "a")], now, true);
        assert_eq!(applied(&first), vec![key(0, "a")]);
        assert_eq!(
            ignored(&first),
            vec![("stream_chunks/a.bin".to_string(), "foreign")]
        );
        // zz sorts after every chunk; chunk 1 appears later and is still
        // applied (the watcher lists after the last applied key, 0).
        let zz = "stream_chunks/zz-binary.bin".to_string();
        let second = gate.admit(std::slice::from_ref(&zz), now, true);
        assert_eq!(ignored(&second), vec![(zz.clone(), "foreign")]);
        gate.update_claims(claims(&[(1, "a")], 1, false));
        let third = gate.admit(&[key(1, "a"), zz], now, true);
        assert_eq!(applied(&third), vec![key(1, "a")]);
        assert!(ignored(&third).is_empty(), "zz is reported once");
    }

    #[test]
    fn a_number_the_chunker_may_still_claim_waits_for_its_claim() {
        let mut gate = ChunkGate::new(None, TIMEOUT);
        let now = Instant::now();
        // An impostor for 0 shows up before the chunker chose its key.
        let listing = vec![key(0, "2099")];
        let admission = gate.admit(&listing, now, false);
        assert_eq!((admission.stop, admission.consumed), (Stop::NeedClaims, 0));
        gate.update_claims(claims(&[], 0, false));
        assert_eq!(gate.admit(&listing, now, true).stop, Stop::Held);
        // The chunker claims 0 with another key (sorting first) and has not
        // written it: the impostor waits.
        gate.update_claims(claims(&[(0, "2026")], 0, false));
        assert_eq!(gate.admit(&listing, now, true).stop, Stop::Held);
        // Written: the chunker's object is applied, the impostor is a
        // duplicate.
        let listing = vec![key(0, "2026"), key(0, "2099")];
        let decided = gate.admit(&listing, now, true);
        assert_eq!(decided.verdicts[0], Verdict::Apply(key(0, "2026")));
        assert_eq!(ignored(&decided), vec![(key(0, "2099"), "duplicate")]);
        assert_eq!(decided.stop, Stop::Done);
    }

    #[test]
    fn a_claim_the_finished_chunker_never_wrote_leaves_its_number_to_a_third_party() {
        let mut gate = ChunkGate::new(Some(&key(2, "2026")), TIMEOUT);
        let now = Instant::now();
        // Claimed ahead (keys are claimed a block at a time), not written.
        gate.update_claims(claims(&[(3, "2026")], 3, false));
        let listing = vec![key(3, "n")];
        assert_eq!(gate.admit(&listing, now, true).stop, Stop::Held);
        // The master file ended at 2: the claim for 3 is void.
        gate.update_claims(claims(&[(3, "2026")], 3, true));
        let decided = gate.admit(&listing, now, true);
        assert_eq!(decided.verdicts, vec![Verdict::Apply(key(3, "n"))]);
    }

    #[test]
    fn objects_found_behind_the_last_commit_are_strangers_once() {
        let mut gate = ChunkGate::new(Some(&key(5, "a")), TIMEOUT);
        let late = key(2, "z");
        assert_eq!(
            gate.passed_over(&late),
            Some(Verdict::Ignore {
                key: late.clone(),
                why: Ignored::Duplicate {
                    seq: 2,
                    taken_by: None
                }
            })
        );
        assert_eq!(gate.passed_over(&late), None, "decided once");
        assert!(matches!(
            gate.passed_over("stream_chunks/a.txt"),
            Some(Verdict::Ignore {
                why: Ignored::Foreign,
                ..
            })
        ));
    }

    #[test]
    fn third_party_chunks_take_the_numbers_the_finished_chunker_never_reached() {
        let mut gate = ChunkGate::new(Some(&key(1, "a")), TIMEOUT);
        gate.update_claims(claims(&[], 2, true));
        let now = Instant::now();
        let admission = gate.admit(&[key(2, "x"), key(2, "y"), key(3, "x")], now, true);
        assert_eq!(applied(&admission), vec![key(2, "x"), key(3, "x")]);
        assert_eq!(ignored(&admission), vec![(key(2, "y"), "duplicate")]);
    }

    #[test]
    fn claims_the_finished_chunker_made_past_its_end_are_void() {
        // The chunker claims keys in blocks: 2 and 3 were claimed, but the
        // master file ended after chunk 1.
        let mut gate = ChunkGate::new(Some(&key(1, "a")), TIMEOUT);
        gate.update_claims(claims(&[(1, "a"), (2, "a"), (3, "a")], 2, true));
        let now = Instant::now();
        let admission = gate.admit(&[key(2, "x"), key(3, "y")], now, true);
        assert_eq!(applied(&admission), vec![key(2, "x"), key(3, "y")]);
        // While it runs, the same claims hold: the stranger waits for the
        // chunker's object, and is a duplicate once that is there.
        let mut gate = ChunkGate::new(Some(&key(1, "a")), TIMEOUT);
        gate.update_claims(claims(&[(1, "a"), (2, "a"), (3, "a")], 2, false));
        assert_eq!(gate.admit(&[key(2, "x")], now, true).stop, Stop::Held);
        let admission = gate.admit(&[key(2, "a"), key(2, "x")], now, true);
        assert_eq!(applied(&admission), vec![key(2, "a")]);
        assert_eq!(ignored(&admission), vec![(key(2, "x"), "duplicate")]);
    }

    #[test]
    fn a_gap_waits_then_reads_the_claimed_chunk_or_skips_what_nobody_claimed() {
        let mut gate = ChunkGate::new(None, TIMEOUT);
        gate.update_claims(claims(&[(0, "a"), (1, "a")], 0, false));
        let start = Instant::now();
        let listing = vec![key(1, "a")];
        assert_eq!(gate.admit(&listing, start, true).stop, Stop::Held);
        let later = start + TIMEOUT;
        assert_eq!(
            gate.admit(&listing, later, true).stop,
            Stop::Held,
            "chunk 0's PUT may still be under way: the chunker has not recorded it"
        );
        // The chunker's position moved past 0: its PUT was done, the
        // object is gone.
        gate.update_claims(claims(&[(0, "a"), (1, "a")], 2, false));
        let admission = gate.admit(&listing, later, true);
        assert_eq!(
            applied(&admission),
            vec![key(0, "a"), key(1, "a")],
            "the missing claimed chunk is read directly (and found gone)"
        );
        // Unclaimed numbers 2..4 are skipped only once the chunker finished.
        gate.update_claims(claims(&[], 2, false));
        let listing = vec![key(5, "x")];
        assert_eq!(gate.admit(&listing, later, true).stop, Stop::Held);
        let much_later = later + TIMEOUT * 2;
        assert_eq!(gate.admit(&listing, much_later, true).stop, Stop::Held);
        gate.update_claims(claims(&[], 2, true));
        let admission = gate.admit(&listing, much_later, true);
        assert_eq!(applied(&admission), vec![key(5, "x")]);
    }
}
