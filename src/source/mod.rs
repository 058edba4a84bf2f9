//! Sources: where events come from and how their positions are named.
//!
//! A source runs on its own (a thread for Kafka, a task for files) and sends
//! [`SourceEvent`]s over a channel to its table's pipeline, in order: an
//! assignment with the positions the table recorded, then records, then
//! revocations. It never decides where to start by itself: on start and on
//! every assignment it asks the table ([`PositionLookup`]) and resumes at the
//! recorded position + 1 (invariant 1). The pipeline can ask it to seek back
//! through [`SourceControl`] after a fenced commit.

pub mod container;
pub mod file;
pub mod kafka;
pub mod kinesis;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

/// One partition of one source: a Kafka topic-partition or one NDJSON file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// The source's config name.
    pub source: String,
    /// Kafka topic, or `file` for file sources.
    pub stream: String,
    /// Kafka partition number, or the file path relative to the source's base.
    pub partition: String,
}

impl PartitionId {
    /// The Delta `txn` app id under which this partition's position is recorded.
    pub fn app_id(&self) -> String {
        format!("sluice/{}/{}/{}", self.source, self.stream, self.partition)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}[{}]", self.source, self.stream, self.partition)
    }
}

/// One event as read from a source.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it came from.
    pub partition: Arc<PartitionId>,
    /// Kafka offset or 0-based line number.
    pub position: i64,
    /// The raw bytes (one JSON document).
    pub payload: Bytes,
    /// Source timestamp in milliseconds since the epoch, if the source has one.
    pub timestamp_ms: Option<i64>,
    /// The Kafka record key, kept for change events (a MongoDB delete's
    /// document key is only there); `None` otherwise.
    pub key: Option<Bytes>,
}

impl Record {
    /// Bytes charged to the memory budget while this record is buffered.
    pub fn charge(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Bytes::len) + 96
    }
}

/// A partition handed to this worker, with the position the table recorded for it.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The partition.
    pub partition: Arc<PartitionId>,
    /// Last committed position (`None`: nothing committed yet).
    pub recorded: Option<i64>,
}

/// What a source tells its pipeline, in order.
#[derive(Debug)]
pub enum SourceEvent {
    /// Partitions now owned by this worker.
    Assigned(Vec<Assignment>),
    /// A batch of records, in position order per partition.
    Records(Vec<Record>),
    /// Partitions about to be taken away. The pipeline flushes what it holds
    /// for them and answers on `done` (if given) so the source can let go.
    Revoked {
        /// Partitions being revoked.
        partitions: Vec<Arc<PartitionId>>,
        /// Answered once buffered rows are committed (or dropped).
        done: Option<std::sync::mpsc::Sender<()>>,
    },
    /// A seek requested by the pipeline took effect: records after this
    /// event start at the requested position.
    Reseeked(Arc<PartitionId>),
    /// Records of a partition were lost before they could be read (a
    /// Kinesis shard trimmed past the recorded position); `detail` says
    /// which. The next commit covering the partition records it in its
    /// lineage, so the partition no longer reads as contiguous.
    Trimmed {
        /// The partition.
        partition: Arc<PartitionId>,
        /// What was lost, for people.
        detail: String,
    },
    /// A finite source (files) has sent everything.
    End,
    /// The source cannot go on (a file it cannot read): what was sent
    /// before is committed, then the pipeline stops with this error.
    Failed(String),
}

/// Reads the positions a table has recorded, keyed by [`PartitionId::app_id`].
pub type PositionLookup = Arc<
    dyn Fn(Vec<String>) -> BoxFuture<'static, Result<HashMap<String, i64>, String>> + Send + Sync,
>;

/// Requests a running source accepts from its pipeline.
pub trait SourceControl: Send + Sync {
    /// Move `partition` so the next record delivered is at `next_position`,
    /// then send [`SourceEvent::Reseeked`].
    fn seek(&self, partition: Arc<PartitionId>, next_position: i64);
    /// Stop reading; the source closes its channel soon after.
    fn stop(&self);
    /// Called before a commit records `positions` (partition, last
    /// position); the commit goes ahead only on `Ok`. Sources whose
    /// positions need more than the `txn` version write it here (Kinesis).
    fn prepare_commit(
        &self,
        positions: Vec<(Arc<PartitionId>, i64)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let _ = positions;
        Box::pin(async { Ok(()) })
    }
}
