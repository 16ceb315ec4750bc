//! Becoming the one active pipeline of a bucket and database, and the
//! signals that stop a process at any point of its life.
//!
//! Before anything else touches the state, `txpipe run` asks for the
//! `pipeline` lease (see `db::lease`). If another process holds it, this one
//! waits as a hot standby: it says so once per holder
//! (`standby: HOST/PID holds the lease until …`), lists itself in
//! `lease_standbys` for `txpipe status`, and asks again every heartbeat, so
//! it takes over within one lease TTL of the holder's death (at once after
//! the holder's graceful stop, which releases the lease, or when the holder
//! is a process of this host that no longer exists). With
//! `ownership.standby = false` (`--no-standby`) it gives up instead.
//!
//! A signal while waiting ends the wait (exit 0, nothing was started).

use std::time::Duration;

use tracing::{info, warn};

use crate::actors::wiring::retry_db;
use crate::config::Settings;
use crate::db::lease::{self, PIPELINE_LEASE};
use crate::db::{Claimant, Fence, LeaseGrant, StateStore};
use crate::metrics::{Health, Phase};
use crate::signals::Signals;

/// Registers a worker of a cluster: its own lease, `worker/OWNER_ID`,
/// which nobody else asks for (the owner id is new with every run), so it
/// is granted at once. It carries the worker's host, pid and start; its
/// heartbeats keep it alive; `txpipe status` lists it while it is.
///
/// It is live from this moment, and [`keep_registered`] renews it while
/// the worker starts: the others count a starting worker in their fair
/// shares, so the first worker up does not take (and load) the key groups
/// of workers started beside it only to hand them over a few heartbeats
/// later. A worker that dies while starting stops counting when its
/// registration expires, like any other.
pub async fn register_worker(
    state: &dyn StateStore,
    settings: &Settings,
    me: &Claimant,
    health: &Health,
) -> anyhow::Result<Fence> {
    let name = crate::db::postgres::cluster::worker_lease(&me.owner_id);
    let ttl = settings.cluster.lease_ttl_ms;
    let grant = retry_db(settings.database.max_attempts, "register worker", || {
        state.acquire_lease(&name, me, ttl, None)
    })
    .await?;
    match grant {
        LeaseGrant::Granted(fence) => {
            info!(
                worker = %format!("{}/{}", me.host, me.pid),
                key_groups = settings.cluster.key_groups,
                "joined the cluster as a worker"
            );
            health.set_owner(format!("{}/{} (worker)", me.host, me.pid));
            health.set_phase(Phase::Loading);
            Ok(fence)
        }
        LeaseGrant::Held { holder, .. } => {
            anyhow::bail!("worker id {} is taken by {}", me.owner_id, holder.holder())
        }
    }
}

/// Renews a starting worker's registration every heartbeat, until the
/// future is dropped (the supervisor's heartbeat takes over once the
/// worker runs). Failures are only logged: a registration that lapses
/// just stops counting until it is renewed.
pub async fn keep_registered(state: &dyn StateStore, settings: &Settings, fence: &Fence) {
    let cluster = &settings.cluster;
    loop {
        tokio::time::sleep(Duration::from_millis(cluster.heartbeat_ms)).await;
        if let Err(error) = state.renew_lease(fence, cluster.lease_ttl_ms).await {
            warn!(%error, "could not renew this worker's registration while starting");
        }
    }
}

/// How the wait for the lease ended.
pub enum Ownership {
    /// This process is the active owner.
    Owner(Fence),
    /// Another process holds the lease and waiting was not allowed.
    Refused(String),
    /// A signal arrived while waiting.
    Stopped(&'static str),
}

/// Takes the pipeline lease, waiting as a standby while someone else holds
/// it (see the module docs).
pub async fn acquire(
    state: &dyn StateStore,
    settings: &Settings,
    me: &Claimant,
    signals: &Signals,
    health: &Health,
) -> anyhow::Result<Ownership> {
    let ownership = &settings.ownership;
    let attempts = settings.database.max_attempts;
    let mut announced: Option<String> = None;
    let mut dead_epoch = None;
    loop {
        let grant = retry_db(attempts, "acquire ownership lease", || {
            state.acquire_lease(PIPELINE_LEASE, me, ownership.lease_ttl_ms, dead_epoch)
        })
        .await;
        let grant = match grant {
            Ok(grant) => grant,
            // The database is busy or away (a frozen owner in the middle
            // of a SQLite write holds every writer back): keep waiting.
            Err(error) if error.is_transient() => {
                warn!(%error, "cannot reach the ownership lease; still waiting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ownership.heartbeat_ms)) => continue,
                    signal = signals.received() => return Ok(Ownership::Stopped(signal)),
                }
            }
            Err(error) => return Err(error.into()),
        };
        match grant {
            LeaseGrant::Granted(fence) => {
                info!(
                    epoch = fence.epoch,
                    owner = %format!("{}/{}", me.host, me.pid),
                    "ownership lease acquired; this process is the active pipeline"
                );
                health.set_owner(format!("{}/{} (epoch {})", me.host, me.pid, fence.epoch));
                health.set_phase(Phase::Loading);
                return Ok(Ownership::Owner(fence));
            }
            LeaseGrant::Held { holder, .. } if lease::holder_is_dead(&holder, me) => {
                info!(
                    holder = %holder.holder(),
                    epoch = holder.epoch,
                    "the lease's holder is a process of this host that no longer exists; taking over"
                );
                dead_epoch = Some(holder.epoch);
                continue;
            }
            LeaseGrant::Held { holder, .. } => {
                let message = holder.standby_message();
                if !ownership.standby {
                    return Ok(Ownership::Refused(message));
                }
                health.set_phase(Phase::Standby);
                if announced.as_deref() != Some(holder.owner_id.as_str()) {
                    warn!(epoch = holder.epoch, "{message}; waiting as a hot standby");
                    announced = Some(holder.owner_id.clone());
                }
                if let Err(error) = state
                    .register_standby(PIPELINE_LEASE, me, ownership.lease_ttl_ms)
                    .await
                {
                    warn!(%error, "could not list this process as a standby");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ownership.heartbeat_ms)) => {}
            signal = signals.received() => {
                info!(signal, "received signal while waiting as a standby");
                let _ = state.remove_standby(me).await;
                return Ok(Ownership::Stopped(signal));
            }
        }
    }
}
