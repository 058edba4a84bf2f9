//! Ingest counters. Each event worth counting is one method that bumps the
//! counter and writes the log line, so names are never scattered strings.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    last_version: AtomicI64,
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

    /// Records accepted into a batch.
    pub fn records_received(&self, count: u64) {
        self.received.fetch_add(count, Ordering::Relaxed);
    }

    /// Records dropped before batching.
    pub fn records_discarded(&self, table: &str, count: u64, reason: &str) {
        self.discarded.fetch_add(count, Ordering::Relaxed);
        tracing::debug!(table, count, reason, "records discarded");
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
