//! Ingest counters. Each event worth counting is one method that bumps the
//! counter and writes the log line, so names are never scattered strings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Counters of one worker, shared by its pipelines (and read by progress bars and tests).
#[derive(Debug, Default)]
pub struct IngestStats {
    received: AtomicU64,
    committed: AtomicU64,
    dead_lettered: AtomicU64,
    discarded: AtomicU64,
    suppressed: AtomicU64,
    commits: AtomicU64,
    fenced: AtomicU64,
    files: AtomicU64,
    bytes_written: AtomicU64,
    bytes_received: AtomicU64,
    last_version: AtomicI64,
    commit_seconds: Histogram,
    partitions: Mutex<BTreeMap<String, PartitionProgress>>,
    started: AtomicBool,
    failed: AtomicBool,
    /// (table, field) -> records holding a field the table does not have.
    unknown: Mutex<BTreeMap<(String, String), u64>>,
}

/// Upper bounds (seconds) of the commit latency histogram buckets.
pub const COMMIT_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in COMMIT_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket, total count, and sum in seconds.
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Where one source partition stands, for lag and freshness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The table it feeds.
    pub table: String,
    /// The last position committed (or recorded when assigned).
    pub committed: Option<i64>,
    /// The source's next position to be written (Kafka high watermark), if known.
    pub high_watermark: Option<i64>,
    /// Source time (ms) of the newest committed record, if the source has times.
    pub newest_event_ms: Option<i64>,
    /// How far the reader is behind the source's tip, if the source says
    /// (Kinesis `MillisBehindLatest`).
    pub behind_ms: Option<i64>,
}

impl PartitionProgress {
    /// Records not yet committed, if the high watermark is known.
    pub fn lag_records(&self) -> Option<i64> {
        let high = self.high_watermark?;
        Some((high - self.committed.map_or(0, |c| c + 1)).max(0))
    }
}

/// A point-in-time copy of [`IngestStats`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records read from sources and accepted into a batch.
    pub received: u64,
    /// Rows committed to data tables.
    pub committed: u64,
    /// Records committed to dead-letter tables.
    pub dead_lettered: u64,
    /// Records dropped before batching (already committed, revoked, awaiting a seek).
    pub discarded: u64,
    /// Records dropped because their key is under an erasure request.
    pub suppressed: u64,
    /// Data commits made.
    pub commits: u64,
    /// Batches dropped because another worker had moved a partition on.
    pub fenced: u64,
    /// Data files committed.
    pub files: u64,
    /// Bytes of data files committed.
    pub bytes_written: u64,
    /// Latest data-table version committed by this worker (-1: none).
    pub last_version: i64,
}

impl IngestStats {
    /// Fresh counters.
    pub fn new() -> Self {
        Self {
            last_version: AtomicI64::new(-1),
            ..Default::default()
        }
    }

    /// Records accepted into a batch, with their payload bytes.
    pub fn records_received(&self, count: u64, bytes: u64) {
        self.received.fetch_add(count, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Payload bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// The commit latency histogram.
    pub fn commit_seconds(&self) -> &Histogram {
        &self.commit_seconds
    }

    /// A partition was assigned to this worker at `recorded`.
    pub fn partition_assigned(&self, table: &str, app_id: &str, recorded: Option<i64>) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        let entry = partitions.entry(app_id.to_string()).or_default();
        entry.table = table.to_string();
        entry.committed = recorded;
    }

    /// A partition left this worker.
    pub fn partition_revoked(&self, app_id: &str) {
        self.partitions
            .lock()
            .expect("partitions lock")
            .remove(app_id);
    }

    /// A commit covered `app_id` up to `last`; `newest_ms` is its newest record's source time.
    pub fn partition_committed(&self, app_id: &str, last: i64, newest_ms: Option<i64>) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        if let Some(entry) = partitions.get_mut(app_id) {
            entry.committed = Some(last);
            entry.newest_event_ms = entry.newest_event_ms.max(newest_ms);
        }
    }

    /// The source reports its next position for `app_id` (Kafka: the high watermark).
    pub fn high_watermark(&self, app_id: &str, next: i64) {
        if let Some(entry) = self
            .partitions
            .lock()
            .expect("partitions lock")
            .get_mut(app_id)
        {
            entry.high_watermark = Some(next);
        }
    }

    /// The source reports how far behind its tip the reader of `app_id` is.
    pub fn behind(&self, app_id: &str, ms: i64) {
        if let Some(entry) = self
            .partitions
            .lock()
            .expect("partitions lock")
            .get_mut(app_id)
        {
            entry.behind_ms = Some(ms.max(0));
        }
    }

    /// Every partition this worker holds.
    pub fn partitions(&self) -> BTreeMap<String, PartitionProgress> {
        self.partitions.lock().expect("partitions lock").clone()
    }

    /// Every pipeline is running (or not any more).
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
    }

    /// A pipeline stopped with an error.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Started and no pipeline failed.
    pub fn healthy(&self) -> bool {
        self.started.load(Ordering::Relaxed) && !self.failed.load(Ordering::Relaxed)
    }

    /// Records dropped before batching.
    pub fn records_discarded(&self, table: &str, count: u64, reason: &str) {
        self.discarded.fetch_add(count, Ordering::Relaxed);
        tracing::debug!(table, count, reason, "records discarded");
    }

    /// Fields records held that the table does not have, per name.
    pub fn unknown_fields(&self, table: &str, fields: &std::collections::BTreeMap<String, u64>) {
        let mut counts = self.unknown.lock().expect("unknown fields lock");
        for (name, count) in fields {
            let entry = counts.entry((table.to_string(), name.clone())).or_insert(0);
            if *entry == 0 {
                tracing::warn!(table, field = %name,
                    "records carry a field the table does not have (counted per name; `evolve = \"add_columns\"` adds such fields)");
            }
            *entry += count;
        }
    }

    /// Unknown fields counted so far: (table, field) -> records.
    pub fn unknown_field_counts(&self) -> std::collections::BTreeMap<(String, String), u64> {
        self.unknown.lock().expect("unknown fields lock").clone()
    }

    /// Records dropped because their key is under an erasure request.
    pub fn records_suppressed(&self, table: &str, count: u64) {
        self.suppressed.fetch_add(count, Ordering::Relaxed);
        tracing::info!(
            table,
            count,
            "records suppressed: their key is under an erasure request"
        );
    }

    /// A data commit landed.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_committed(
        &self,
        table: &str,
        version: i64,
        rows: u64,
        dead: u64,
        files: u64,
        bytes: u64,
        elapsed: Duration,
        reason: &str,
    ) {
        self.committed.fetch_add(rows, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.last_version.fetch_max(version, Ordering::Relaxed);
        self.commit_seconds.observe(elapsed);
        tracing::info!(
            table,
            version,
            rows,
            dead_lettered = dead,
            files,
            bytes,
            millis = elapsed.as_millis() as u64,
            reason,
            "committed batch"
        );
    }

    /// A batch was refused because another worker moved a partition on.
    pub fn batch_fenced(&self, table: &str, rows: u64, detail: &str) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            table,
            rows,
            detail,
            "stale batch dropped; re-seeking to the table's positions"
        );
    }

    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            last_version: self.last_version.load(Ordering::Relaxed),
        }
    }
}
