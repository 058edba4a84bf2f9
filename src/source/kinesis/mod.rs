//! Kinesis as a source: shards shared by a fleet through leases, read with
//! shard iterators, resharding followed parent-first, positions recorded
//! exactly once in the table's commits.
//!
//! ## Positions
//!
//! A Kinesis sequence number (up to 128 bits, written as a decimal string)
//! does not fit in a Delta `txn` version. sluice numbers each shard's
//! records densely from 0 (the *ordinal*) and records the ordinal, like a
//! Kafka offset, in the `txn` of the commit that writes the data; the
//! pipeline, lineage, fencing and `status` work on ordinals unchanged. The
//! translation back to a sequence number lives in immutable sidecars under
//! the table root (see [`positions`]):
//!
//! - the *anchor*, ordinal 0's sequence number, written with a conditional
//!   put by the first reader of the shard before it hands on a record;
//!   every later reader with no recorded ordinal starts *at* the anchor;
//! - for every commit, the sequence number of the last ordinal it records,
//!   written (conditional put) *before* the commit; a reader resumes *after*
//!   the sequence number of the table's recorded ordinal.
//!
//! Ordinals are deterministic: a shard's records are immutable and ordered,
//! so counting from the anchor always gives the same record the same
//! ordinal, and a sidecar left by a batch that was never committed holds
//! what a replay would write again. A sidecar that exists with another
//! sequence number (the shard was trimmed under a lagging reader) stops the
//! commit: the batch is dropped and the shard re-read from the table's
//! position. A crash anywhere leaves the table's `txn` as the one truth:
//! sidecars beyond it are ignored or rewritten identically.
//!
//! ## Shards across the fleet
//!
//! Each worker runs a coordinator per Kinesis source that, every third of
//! `lease_ttl`: heartbeats its membership object
//! (`_sluice_leases/members/...`, live for three TTLs); lists the shards;
//! works out which are *finished* (closed, read to the end, with the end
//! ordinal committed) and which are *ready* (unfinished, and every parent
//! finished or beyond retention); renews its shard leases (see
//! `fleet::lease`) and drops any it lost (a fenced reader: its next commit
//! is refused as stale); releases finished shards; and aims at a fair
//! share, `ceil(ready / live workers)`: it hands back extra shards (the
//! pipeline commits what it holds first) and acquires free ones. A child
//! shard is only read once its parents' last records are committed, so
//! records of one key land parent first. A crashed worker's shards are free
//! after at most two TTLs.
//!
//! The end of a closed shard is recorded as a sidecar too (`end`), so a
//! shard is finished when `end` exists and the table's ordinal reached it.

pub mod client;
pub mod positions;
pub mod reader;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use client::KinesisSourceError;
use positions::ShardPositions;
use reader::{Reader, ReaderExit, ShardShared};

use super::{Assignment, PartitionId, PositionLookup, SourceControl, SourceEvent};
use crate::config::{KinesisSourceConfig, StartFrom};
use crate::fleet::lease::{system_clock, Lease, Leases};
use crate::ingest::budget::MemoryBudget;
use crate::telemetry::stats::IngestStats;

/// Where leases and membership objects live, under the table root.
const LEASES_DIR: &str = "_sluice_leases";

/// Handle to a running Kinesis source.
pub struct KinesisSourceHandle {
    stop: CancellationToken,
    shards: Arc<Mutex<HashMap<String, Arc<ShardShared>>>>,
}

impl KinesisSourceHandle {
    fn shard(&self, partition: &PartitionId) -> Option<Arc<ShardShared>> {
        self.shards
            .lock()
            .expect("shards lock")
            .get(&partition.partition)
            .cloned()
    }
}

impl SourceControl for KinesisSourceHandle {
    fn seek(&self, partition: Arc<PartitionId>, next_position: i64) {
        if let Some(shard) = self.shard(&partition) {
            *shard.seek.lock().expect("seek lock") = Some(next_position);
        }
    }

    fn stop(&self) {
        self.stop.cancel();
    }

    fn prepare_commit(
        &self,
        positions: Vec<(Arc<PartitionId>, i64)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let shards: Vec<_> = positions
            .into_iter()
            .map(|(partition, last)| (self.shard(&partition), partition, last))
            .collect();
        Box::pin(async move {
            for (shard, partition, last) in shards {
                let shard = shard.ok_or_else(|| format!("{partition} is no longer held"))?;
                let sequence = shard
                    .sequence_of(last)
                    .ok_or_else(|| format!("{partition}: ordinal {last} was not read here"))?;
                shard
                    .positions
                    .record(last, &sequence)
                    .await
                    .map_err(|e| e.to_string())?;
                shard.forget_below(last);
            }
            Ok(())
        })
    }
}

/// Builds the source's client and checks the stream answers, naming the
/// config key at fault (`sources[index]...`) when it does not.
pub async fn connect(
    config: &KinesisSourceConfig,
    index: usize,
) -> Result<Client, KinesisSourceError> {
    let client = client::build(config, index).await?;
    client::preflight(&client, config, index).await?;
    Ok(client)
}

/// What the coordinator works with.
pub struct SourceParts {
    /// The source config.
    pub config: KinesisSourceConfig,
    /// Its client, from [`connect`].
    pub client: Client,
    /// The data table's object store, rooted at the table.
    pub store: Arc<dyn ObjectStore>,
    /// This worker's id.
    pub worker: String,
    /// How long a revoked shard's pipeline may take to commit.
    pub grace: Duration,
    /// Recorded ordinals of the table.
    pub lookup: PositionLookup,
    /// The worker's memory budget.
    pub budget: Arc<MemoryBudget>,
    /// The pipeline.
    pub tx: mpsc::Sender<SourceEvent>,
    /// Counters.
    pub stats: Arc<IngestStats>,
}

/// Starts the coordinator.
pub fn spawn(parts: SourceParts) -> Arc<KinesisSourceHandle> {
    let handle = Arc::new(KinesisSourceHandle {
        stop: CancellationToken::new(),
        shards: Arc::new(Mutex::new(HashMap::new())),
    });
    let leases = Leases::new(
        parts.store.clone(),
        Path::from(LEASES_DIR),
        parts.config.lease_ttl.0,
        parts.worker.clone(),
        system_clock(),
    );
    let coordinator = Coordinator {
        client: parts.client.clone(),
        leases,
        stop: handle.stop.clone(),
        shards: handle.shards.clone(),
        held: HashMap::new(),
        finished: HashSet::new(),
        ids: HashMap::new(),
        parts,
    };
    tokio::spawn(coordinator.run());
    handle
}

struct Held {
    lease: Lease,
    shared: Arc<ShardShared>,
    stop: CancellationToken,
    task: JoinHandle<ReaderExit>,
}

struct Coordinator {
    parts: SourceParts,
    client: Client,
    leases: Leases,
    stop: CancellationToken,
    shards: Arc<Mutex<HashMap<String, Arc<ShardShared>>>>,
    held: HashMap<String, Held>,
    finished: HashSet<String>,
    ids: HashMap<String, Arc<PartitionId>>,
}

impl Coordinator {
    fn partition(&mut self, shard: &str) -> Arc<PartitionId> {
        let (source, stream) = (&self.parts.config.name, &self.parts.config.stream);
        self.ids
            .entry(shard.to_string())
            .or_insert_with(|| {
                Arc::new(PartitionId {
                    source: source.clone(),
                    stream: stream.clone(),
                    partition: shard.to_string(),
                })
            })
            .clone()
    }

    fn lease_name(&self, shard: &str) -> String {
        format!(
            "kinesis/{}/{}/{shard}",
            self.parts.config.name, self.parts.config.stream
        )
    }

    fn members_dir(&self) -> Path {
        Path::from(format!(
            "{LEASES_DIR}/members/{}~{}",
            self.parts.config.name, self.parts.config.stream
        ))
    }

    async fn run(mut self) {
        let every = self.leases.renew_every();
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(source = %self.parts.config.name, %error, "shard coordination round failed; retrying");
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.parts.tx.closed() => {
                    // The pipeline is gone (it failed, or its task was
                    // aborted): nobody can commit for these shards any more;
                    // their leases lapse for other workers to take.
                    tracing::warn!(source = %self.parts.config.name, "pipeline gone; dropping shard readers");
                    self.stop.cancel();
                    return;
                }
                _ = tokio::time::sleep(every) => {}
            }
        }
        let shards: Vec<String> = self.held.keys().cloned().collect();
        self.hand_back(&shards, true).await;
        let member = Path::from(format!("{}/{}", self.members_dir(), self.parts.worker));
        let _ = self.parts.store.delete(&member).await;
        tracing::info!(source = %self.parts.config.name, "kinesis source stopped");
    }

    /// Writes this worker's heartbeat and counts the live members.
    async fn live_members(&self) -> Result<usize, String> {
        let dir = self.members_dir();
        let member = Path::from(format!("{dir}/{}", self.parts.worker));
        self.parts
            .store
            .put(&member, bytes::Bytes::from_static(b"alive").into())
            .await
            .map_err(|e| e.to_string())?;
        let listed: Vec<_> = futures::TryStreamExt::try_collect(self.parts.store.list(Some(&dir)))
            .await
            .map_err(|e: object_store::Error| e.to_string())?;
        let horizon = chrono::Utc::now()
            - chrono::Duration::from_std(self.parts.config.lease_ttl.0 * 3).unwrap_or_default();
        Ok(listed
            .iter()
            .filter(|m| m.last_modified >= horizon)
            .count()
            .max(1))
    }

    /// Which listed shards are finished: closed, read to the end, end committed.
    async fn refresh_finished(
        &mut self,
        shards: &[Shard],
        recorded: &HashMap<String, i64>,
    ) -> Result<(), String> {
        for shard in shards {
            let id = shard.shard_id();
            let closed = shard
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some();
            if !closed || self.finished.contains(id) {
                continue;
            }
            let partition = self.partition(id);
            let positions = ShardPositions::new(self.parts.store.clone(), &partition.app_id());
            let Some(end) = positions.end().await.map_err(|e| e.to_string())? else {
                continue;
            };
            let at = recorded.get(&partition.app_id()).copied();
            if end < 0 || at == Some(end) {
                self.finished.insert(id.to_string());
            }
        }
        Ok(())
    }

    async fn round(&mut self) -> Result<(), String> {
        let members = self.live_members().await?;
        let shards = client::list_shards(&self.client, &self.parts.config.stream).await?;
        let app_ids: Vec<String> = shards
            .iter()
            .map(|s| self.partition(s.shard_id()).app_id())
            .collect();
        let recorded = (self.parts.lookup)(app_ids).await?;
        self.refresh_finished(&shards, &recorded).await?;
        let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
        let done =
            |id: Option<&str>| id.is_none_or(|p| !listed.contains(p) || self.finished.contains(p));
        let ready: Vec<String> = shards
            .iter()
            .filter(|s| !self.finished.contains(s.shard_id()))
            .filter(|s| done(s.parent_shard_id()) && done(s.adjacent_parent_shard_id()))
            .map(|s| s.shard_id().to_string())
            .collect();

        // Renew what is held; let go of lost and finished shards.
        let mut lost = Vec::new();
        let mut finished = Vec::new();
        for (id, held) in self.held.iter_mut() {
            // Finished, or gone from the listing (expired past retention).
            if self.finished.contains(id) || !listed.contains(id.as_str()) {
                finished.push(id.clone());
                continue;
            }
            match self.leases.renew(&mut held.lease).await {
                Ok(true) => {}
                Ok(false) => lost.push(id.clone()),
                Err(error) => tracing::warn!(shard = %id, %error, "shard lease renewal failed"),
            }
        }
        if !lost.is_empty() {
            tracing::warn!(source = %self.parts.config.name, shards = ?lost, "shard leases lost to another worker");
            self.hand_back(&lost, false).await;
        }
        if !finished.is_empty() {
            tracing::info!(source = %self.parts.config.name, shards = ?finished, "shards finished");
            self.hand_back(&finished, true).await;
        }

        // Fair share of the ready shards among the live workers.
        let share = ready.len().div_ceil(members);
        let mine: Vec<String> = ready
            .iter()
            .filter(|s| self.held.contains_key(*s))
            .cloned()
            .collect();
        if mine.len() > share {
            let extra = mine[share..].to_vec();
            tracing::info!(source = %self.parts.config.name, shards = ?extra, members, "handing shards back for balance");
            self.hand_back(&extra, true).await;
        }
        let mut count = self.held.len();
        let free: Vec<String> = ready
            .iter()
            .filter(|s| !self.held.contains_key(*s))
            .cloned()
            .collect();
        for id in &free {
            if count >= share || self.stop.is_cancelled() {
                break;
            }
            let name = self.lease_name(id);
            // A child shard starts at its first record whatever `start_from`
            // says: everything written to it since the split is new.
            let child = shards
                .iter()
                .find(|s| s.shard_id() == id)
                .is_some_and(|s| s.parent_shard_id().is_some());
            let start_from = if child {
                StartFrom::Earliest
            } else {
                self.parts.config.start_from
            };
            match self.leases.try_acquire(&name).await {
                Ok(Some(lease)) => {
                    self.start_reader(id, lease, start_from).await?;
                    count += 1;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(shard = %id, %error, "shard lease acquisition failed"),
            }
        }
        Ok(())
    }

    async fn start_reader(
        &mut self,
        id: &str,
        lease: Lease,
        start_from: StartFrom,
    ) -> Result<(), String> {
        let partition = self.partition(id);
        let recorded = match (self.parts.lookup)(vec![partition.app_id()]).await {
            Ok(found) => found.get(&partition.app_id()).copied(),
            Err(error) => {
                let _ = self.leases.release(&lease).await;
                return Err(error);
            }
        };
        let shared = Arc::new(ShardShared {
            partition: partition.clone(),
            positions: ShardPositions::new(self.parts.store.clone(), &partition.app_id()),
            sequences: Mutex::new(Default::default()),
            seek: Mutex::new(None),
        });
        tracing::info!(%partition, ?recorded, "shard assigned");
        let assigned = SourceEvent::Assigned(vec![Assignment {
            partition,
            recorded,
        }]);
        if self.parts.tx.send(assigned).await.is_err() {
            let _ = self.leases.release(&lease).await;
            return Ok(());
        }
        self.shards
            .lock()
            .expect("shards lock")
            .insert(id.to_string(), shared.clone());
        let stop = self.stop.child_token();
        let reader = Reader {
            client: self.client.clone(),
            stream: self.parts.config.stream.clone(),
            shared: shared.clone(),
            recorded,
            start_from,
            on_trimmed: self.parts.config.on_trimmed,
            tx: self.parts.tx.clone(),
            budget: self.parts.budget.clone(),
            stats: self.parts.stats.clone(),
            stop: stop.clone(),
        };
        let task = tokio::spawn(reader.run());
        self.held.insert(
            id.to_string(),
            Held {
                lease,
                shared,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// Stops the readers of `ids`, lets the pipeline commit what it holds
    /// for them (waiting up to the grace period when `wait`), and releases
    /// their leases.
    async fn hand_back(&mut self, ids: &[String], wait: bool) {
        let mut partitions = Vec::new();
        let mut leases = Vec::new();
        for id in ids {
            let Some(held) = self.held.remove(id) else {
                continue;
            };
            held.stop.cancel();
            let _ = held.task.await;
            partitions.push(held.shared.partition.clone());
            leases.push(held.lease);
        }
        if partitions.is_empty() {
            return;
        }
        let (done, committed) = std::sync::mpsc::channel();
        let sent = self
            .parts
            .tx
            .send(SourceEvent::Revoked {
                partitions,
                done: wait.then_some(done),
            })
            .await
            .is_ok();
        if sent && wait {
            // Bounded by a third of the lease TTL too: the other shards'
            // leases are renewed by this same loop.
            let grace = self.parts.grace.min(self.leases.renew_every());
            let waited =
                tokio::task::spawn_blocking(move || committed.recv_timeout(grace).is_ok()).await;
            if !matches!(waited, Ok(true)) {
                tracing::warn!(source = %self.parts.config.name, "pipeline did not commit handed-back shards in time; its commit will be fenced");
            }
        }
        {
            let mut map = self.shards.lock().expect("shards lock");
            for id in ids {
                map.remove(id);
            }
        }
        for lease in leases {
            if let Err(error) = self.leases.release(&lease).await {
                tracing::warn!(lease = %lease.name, %error, "cannot release shard lease; it expires by itself");
            }
        }
    }
}
