//! Ownership leases and fencing tokens: the rules both databases share.
//!
//! A lease is a row in `leases`: who holds it (a process's owner id, host
//! and pid), until when (`expires_at_ms`, by the database's clock), and its
//! *epoch*, which grows on every change of owner. A process becomes the
//! active owner of a bucket and database by taking the `pipeline` lease;
//! what it gets back is a [`Fence`]. Every state-changing transaction
//! carries that fence and checks it inside itself, so a process that lost
//! the lease (paused past its expiry, cut off from the database) can never
//! write again, whatever its clock or its view of the world: a new owner
//! bumped the epoch first.
//!
//! Time only decides when a waiting process may take over (the holder's
//! lease expired); correctness rests on the epoch alone. This module holds
//! the decisions ([`decide`]); the SQL dialects only read and write rows.

/// The lease that makes a process the one active pipeline of a bucket and
/// database. (The scale-out design adds one per key group and one for the
/// chunker; the rules are the same.)
pub const PIPELINE_LEASE: &str = "pipeline";

/// A process asking for a lease: one identity per run of the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// Unique per process run (random), so a restarted process on the same
    /// host and pid is never mistaken for its predecessor.
    pub owner_id: String,
    pub host: String,
    pub pid: u32,
}

impl Claimant {
    /// This process, with a fresh random owner id.
    pub fn this_process() -> Claimant {
        let host = hostname();
        Claimant {
            owner_id: format!("{:032x}", rand::random::<u128>()),
            host,
            pid: std::process::id(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Proof of holding a lease at one epoch; every fenced write carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub owner_id: String,
    pub epoch: u64,
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub owner_id: String,
    pub host: String,
    pub pid: u32,
    pub epoch: u64,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
}

impl LeaseRow {
    /// `host/pid`, as logs and `status` show a holder.
    pub fn holder(&self) -> String {
        format!("{}/{}", self.host, self.pid)
    }

    /// What a process that cannot take the lease says about it.
    pub fn standby_message(&self) -> String {
        format!(
            "standby: {} holds the lease until {}",
            self.holder(),
            format_ms(self.expires_at_ms)
        )
    }
}

/// A process waiting for a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyRow {
    pub lease: String,
    pub owner_id: String,
    pub host: String,
    pub pid: u32,
    pub since_ms: i64,
    pub expires_at_ms: i64,
}

/// The answer to a request for a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseGrant {
    Granted(Fence),
    /// Someone else holds it until `holder.expires_at_ms`.
    Held {
        holder: LeaseRow,
        now_ms: i64,
    },
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed {
        expires_at_ms: i64,
    },
    /// The lease passed to another owner (or epoch): stop at once.
    Lost {
        holder: Option<LeaseRow>,
    },
}

/// What a request for a lease does to the row, given the row as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody ever held it: insert it at epoch 1.
    Create,
    /// Free (expired or released): take it at the next epoch.
    TakeOver { epoch: u64 },
    /// Someone holds it.
    Held,
}

/// Who may take a lease. A lease whose expiry has passed is free, even if
/// its holder is still alive: the holder's next fenced write will be
/// refused, because taking over bumps the epoch. So is a lease whose holder
/// the claimant knows to be dead (`dead_epoch`: the epoch it saw that
/// holder hold; if the lease changed hands since, that knowledge is stale).
pub fn decide(current: Option<&LeaseRow>, now_ms: i64, dead_epoch: Option<u64>) -> Decision {
    match current {
        None => Decision::Create,
        Some(row) if row.expires_at_ms <= now_ms || dead_epoch == Some(row.epoch) => {
            Decision::TakeOver {
                epoch: row.epoch + 1,
            }
        }
        Some(_) => Decision::Held,
    }
}

/// Whether the holder of a lease is certainly dead: a process of this host
/// whose pid no longer exists (killed, crashed). Only an optimisation that
/// spares a restarted process one lease TTL of waiting: taking a lease from
/// a live holder by mistake would still be safe, since its writes are
/// fenced.
pub fn holder_is_dead(holder: &LeaseRow, me: &Claimant) -> bool {
    holder.host == me.host
        && holder.pid != me.pid
        && holder.pid != 0
        && !std::path::Path::new(&format!("/proc/{}", holder.pid)).exists()
}

/// Whether a stored lease still proves `fence`; the message says why not.
pub fn check(fence: &Fence, current: Option<&LeaseRow>) -> Result<(), String> {
    match current {
        Some(row) if row.owner_id == fence.owner_id && row.epoch == fence.epoch => Ok(()),
        Some(row) => Err(format!(
            "lease {:?} passed to {} at epoch {} (this process held epoch {}); write refused",
            fence.lease,
            row.holder(),
            row.epoch,
            fence.epoch
        )),
        None => Err(format!(
            "lease {:?} does not exist; write refused",
            fence.lease
        )),
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time, for messages.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(owner: &str, epoch: u64, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            name: PIPELINE_LEASE.into(),
            owner_id: owner.into(),
            host: "h".into(),
            pid: 7,
            epoch,
            acquired_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn a_lease_is_created_taken_over_once_expired_and_otherwise_held() {
        assert_eq!(decide(None, 100, None), Decision::Create);
        assert_eq!(
            decide(Some(&row("a", 3, 100)), 100, None),
            Decision::TakeOver { epoch: 4 }
        );
        assert_eq!(decide(Some(&row("a", 3, 101)), 100, None), Decision::Held);
        assert_eq!(
            decide(Some(&row("a", 3, 101)), 100, Some(3)),
            Decision::TakeOver { epoch: 4 },
            "a holder known to be dead"
        );
        assert_eq!(
            decide(Some(&row("a", 4, 101)), 100, Some(3)),
            Decision::Held,
            "the lease changed hands since the holder was seen dead"
        );
    }

    #[test]
    fn only_the_same_owner_at_the_same_epoch_passes_the_fence() {
        let fence = Fence {
            lease: PIPELINE_LEASE.into(),
            owner_id: "a".into(),
            epoch: 3,
        };
        assert!(
            check(&fence, Some(&row("a", 3, 0))).is_ok(),
            "expiry does not matter"
        );
        let other = check(&fence, Some(&row("b", 4, 0))).unwrap_err();
        assert!(other.contains("h/7 at epoch 4"), "{other}");
        assert!(
            check(&fence, Some(&row("a", 4, 0))).is_err(),
            "same owner, later epoch"
        );
        assert!(check(&fence, None).is_err());
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
