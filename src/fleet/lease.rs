//! Leases in the object store: at most one worker of a fleet runs a given
//! job (a table's vacuum, a partition's compaction) at a time.
//!
//! Time is cut into epochs of `ttl`. Holding a lease for epoch `e` means
//! having created the object `<root>/<name>/<e>` with a conditional put
//! (`PutMode::Create`: it fails if the object exists), which object stores
//! with conditional writes (S3, GCS, Azure, local disk) make atomic. A lease
//! expires by itself when its epoch ends; a holder that is still working
//! renews it by creating the next epoch's object before that epoch starts,
//! and a worker only tries to acquire an epoch once it has begun, so a live
//! holder always wins its renewal. Workers that lose a race simply skip the
//! job; the rewrite commits themselves stay safe without leases (see
//! `maintain::commit_rewrite`), leases only keep the fleet from doing the
//! same work twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// Milliseconds since the epoch; injected so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp_millis())
}

/// Errors talking to the lease store.
#[derive(Debug, thiserror::Error)]
#[error("lease store: {0}")]
pub struct LeaseError(#[from] object_store::Error);

/// A lease store for one holder.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn ObjectStore>,
    root: Path,
    ttl_ms: i64,
    holder: String,
    clock: Clock,
}

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job name.
    pub name: String,
    /// The epoch held.
    pub epoch: i64,
    /// When it expires unless renewed (ms since the epoch).
    pub expires_ms: i64,
}

impl Leases {
    /// Leases under `root` in `store`, held as `holder`, lasting `ttl`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        ttl: Duration,
        holder: impl Into<String>,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            root,
            ttl_ms: (ttl.as_millis() as i64).max(1000),
            holder: holder.into(),
            clock,
        }
    }

    fn path(&self, name: &str, epoch: i64) -> Path {
        Path::from(format!(
            "{}/{}/{epoch:016}",
            self.root,
            name.replace('/', "~")
        ))
    }

    async fn create(&self, name: &str, epoch: i64) -> Result<bool, LeaseError> {
        let body = serde_json::json!({"holder": self.holder, "at": (self.clock)()}).to_string();
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(name, epoch), Bytes::from(body).into(), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lease for the current epoch if nobody holds it, extended
    /// into the next epoch at once: taken late in an epoch, it would
    /// otherwise lapse before the holder's first renewal.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        let now = (self.clock)();
        let epoch = now / self.ttl_ms;
        if !self.create(name, epoch).await? {
            return Ok(None);
        }
        let mut lease = Lease {
            name: name.to_string(),
            epoch,
            expires_ms: (epoch + 1) * self.ttl_ms,
        };
        if !self.renew(&mut lease).await? {
            return Ok(None);
        }
        Ok(Some(lease))
    }

    /// Creates the epoch's object, or finds it is already ours.
    async fn create_or_mine(&self, name: &str, epoch: i64) -> Result<bool, LeaseError> {
        if self.create(name, epoch).await? {
            return Ok(true);
        }
        let existing = match self.store.get(&self.path(name, epoch)).await {
            Ok(got) => got.bytes().await?,
            // Released between the two calls: whoever comes next may take it.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(serde_json::from_slice::<serde_json::Value>(&existing)
            .ok()
            .is_some_and(|v| v["holder"] == self.holder.as_str()))
    }

    /// Extends a held lease into the next epoch; false if it was lost.
    ///
    /// A lease already extended into the next epoch is left as it is, so
    /// renewing often never holds a lease further ahead than one epoch.
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, LeaseError> {
        let current = (self.clock)() / self.ttl_ms;
        if lease.epoch > current {
            return Ok(true);
        }
        if lease.epoch < current {
            // Renewed late: the lease lapsed; keep it only if nobody took it.
            if !self.create_or_mine(&lease.name, current).await? {
                return Ok(false);
            }
            lease.epoch = current;
        }
        let next = lease.epoch + 1;
        if !self.create_or_mine(&lease.name, next).await? {
            return Ok(false);
        }
        lease.epoch = next;
        lease.expires_ms = (next + 1) * self.ttl_ms;
        Ok(true)
    }

    /// Gives a held lease up at once so another worker can take it in the
    /// current epoch.
    pub async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let current = (self.clock)() / self.ttl_ms;
        for epoch in current.min(lease.epoch)..=lease.epoch {
            let path = self.path(&lease.name, epoch);
            let mine = match self.store.get(&path).await {
                Ok(got) => serde_json::from_slice::<serde_json::Value>(&got.bytes().await?)
                    .ok()
                    .is_some_and(|v| v["holder"] == self.holder.as_str()),
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if mine {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Who holds lease `name` in the current epoch, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<String>, LeaseError> {
        let epoch = (self.clock)() / self.ttl_ms;
        match self.store.get(&self.path(name, epoch)).await {
            Ok(got) => Ok(
                serde_json::from_slice::<serde_json::Value>(&got.bytes().await?)
                    .ok()
                    .and_then(|v| v["holder"].as_str().map(str::to_string)),
            ),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// How long to wait between renewals.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis((self.ttl_ms / 3) as u64)
    }

    /// Runs `job` while renewing `lease`; the renewals stop with the job.
    ///
    /// When the lease is lost (another worker took it) or cannot be renewed
    /// before it expires, the job is dropped where it stands and
    /// [`LeaseLost`] returned: work done under a lease must be safe to stop
    /// at any await point, as at a crash.
    pub async fn hold_while<F: std::future::Future>(
        &self,
        mut lease: Lease,
        job: F,
    ) -> Result<F::Output, LeaseLost> {
        let leases = self.clone();
        let name = lease.name.clone();
        let lost = tokio_util::sync::CancellationToken::new();
        let signal = lost.clone();
        // On a task of its own: a job busy between await points (a long
        // scan) cannot starve the renewals.
        let renewals = tokio::spawn(async move {
            let _signal = signal.drop_guard();
            loop {
                tokio::time::sleep(leases.renew_every()).await;
                match leases.renew(&mut lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lease = %lease.name, "lease lost to another worker; stopping its job");
                        return;
                    }
                    Err(error) if (leases.clock)() >= lease.expires_ms => {
                        tracing::warn!(lease = %lease.name, %error, "lease expired unrenewed; stopping its job");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(lease = %lease.name, %error, "lease renewal failed; retrying")
                    }
                }
            }
        });
        let result = tokio::select! {
            output = job => Ok(output),
            () = lost.cancelled() => Err(LeaseLost(name)),
        };
        renewals.abort();
        result
    }
}

/// A job stopped because its lease was lost.
#[derive(Debug, thiserror::Error)]
#[error(
    "lease `{0}` was lost (taken by another worker, or not renewed in time); its job was stopped"
)]
pub struct LeaseLost(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn leases(dir: &std::path::Path, holder: &str, now: &Arc<AtomicI64>) -> Leases {
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        let now = now.clone();
        Leases::new(
            store,
            Path::from("_sluice_leases"),
            Duration::from_secs(60),
            holder,
            Arc::new(move || now.load(Ordering::Relaxed)),
        )
    }

    #[tokio::test]
    async fn a_job_whose_lease_is_taken_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        // The real clock, with one-second epochs.
        let a = Leases::new(
            store.clone(),
            Path::from("l"),
            Duration::from_secs(1),
            "a",
            system_clock(),
        );
        let lease = a.try_acquire("apply").await.unwrap().expect("a acquires");
        // Another worker wrongly believes the lease lapsed and takes the
        // epoch after the one `a` holds.
        let b = Leases::new(
            store,
            Path::from("l"),
            Duration::from_secs(1),
            "b",
            system_clock(),
        );
        assert!(b.create("apply", lease.epoch + 1).await.unwrap());
        let started = std::time::Instant::now();
        let stopped = tokio::time::timeout(
            Duration::from_secs(10),
            a.hold_while(lease, std::future::pending::<()>()),
        )
        .await
        .expect("the job is stopped, not left running");
        assert!(matches!(stopped, Err(LeaseLost(name)) if name == "apply"));
        assert!(started.elapsed() < Duration::from_secs(3));
        // A job that ends first returns its output.
        let c = Leases::new(
            Arc::new(object_store::memory::InMemory::new()),
            Path::from("l"),
            Duration::from_secs(1),
            "c",
            system_clock(),
        );
        let lease = c.try_acquire("apply").await.unwrap().unwrap();
        assert_eq!(c.hold_while(lease, async { 7 }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn one_holder_per_epoch_and_renewal_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(600_000));
        let (a, b) = (leases(dir.path(), "a", &now), leases(dir.path(), "b", &now));

        let mut held = a
            .try_acquire("compact/date=2024-05-01")
            .await
            .unwrap()
            .expect("a acquires");
        assert!(
            b.try_acquire("compact/date=2024-05-01")
                .await
                .unwrap()
                .is_none(),
            "b must wait"
        );
        assert!(
            b.try_acquire("vacuum").await.unwrap().is_some(),
            "other jobs are independent"
        );

        // A renews before the next epoch starts, so B cannot take it then.
        assert!(a.renew(&mut held).await.unwrap());
        now.store(660_000, Ordering::Relaxed);
        assert!(b
            .try_acquire("compact/date=2024-05-01")
            .await
            .unwrap()
            .is_none());
        assert!(a.renew(&mut held).await.unwrap(), "a keeps renewing");

        // Once A stops renewing, the lease expires and B gets it.
        now.store(800_000, Ordering::Relaxed);
        let taken = b.try_acquire("compact/date=2024-05-01").await.unwrap();
        assert!(taken.is_some());
        let mut stale = held.clone();
        stale.epoch = 800_000 / 60_000 - 1;
        assert!(!a.renew(&mut stale).await.unwrap(), "a lost it");
    }

    #[tokio::test]
    async fn a_lease_taken_late_in_an_epoch_outlives_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(659_000));
        let (a, b) = (leases(dir.path(), "a", &now), leases(dir.path(), "b", &now));
        let held = a.try_acquire("shard-1").await.unwrap().unwrap();
        assert_eq!(held.expires_ms, 720_000, "{held:?}");
        // The epoch ends a second later, before a's first renewal is due.
        now.store(661_000, Ordering::Relaxed);
        assert!(b.try_acquire("shard-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn renewals_stay_one_epoch_ahead_and_release_frees_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(600_000));
        let (a, b) = (leases(dir.path(), "a", &now), leases(dir.path(), "b", &now));
        let mut held = a.try_acquire("shard-1").await.unwrap().unwrap();
        for _ in 0..5 {
            assert!(a.renew(&mut held).await.unwrap());
        }
        assert_eq!(
            held.epoch, 11,
            "renewing often holds one epoch ahead, no more"
        );
        // A crashed holder's lease is free two epochs later at the latest.
        now.store(720_000, Ordering::Relaxed);
        assert!(b.try_acquire("shard-1").await.unwrap().is_some());

        let mut other = a.try_acquire("shard-2").await.unwrap().unwrap();
        assert!(a.renew(&mut other).await.unwrap());
        assert!(b.try_acquire("shard-2").await.unwrap().is_none());
        a.release(&other).await.unwrap();
        assert!(
            b.try_acquire("shard-2").await.unwrap().is_some(),
            "released at once"
        );
    }
}
