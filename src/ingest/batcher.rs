//! The open batch of one table: which partitions it covers and from where,
//! how much it holds, and when it must be flushed.
//!
//! A batch is flushed when the first of three limits is reached: `max_latency`
//! after its first record, `max_bytes` of payload, or `max_rows` records (the
//! pipeline also flushes early under memory pressure, on rebalance and on
//! shutdown).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::BatchingConfig;
use crate::source::{PartitionId, Record};
use crate::table::commit::PositionUpdate;
use crate::table::lineage::PartitionRange;

/// Per-partition span of the open batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Position recorded before the batch.
    pub prev: Option<i64>,
    /// First position in the batch.
    pub first: i64,
    /// Last position in the batch.
    pub last: i64,
    /// Records received.
    pub received: u64,
    /// Records rejected to the dead-letter table.
    pub dead: u64,
    /// Records dropped because their key is under an erasure request.
    pub suppressed: u64,
    /// Records that hold no row by design (change-event tombstones).
    pub skipped: u64,
    /// Source time (ms) of the newest record, if the source has times.
    pub newest_ms: Option<i64>,
    /// Registry schema ids of the records taken.
    pub schema_ids: BTreeSet<u32>,
    /// Registry schema ids of records dead-lettered.
    pub refused_schema_ids: BTreeSet<u32>,
}

/// Why a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `max_latency` elapsed.
    Latency,
    /// `max_bytes` reached.
    Bytes,
    /// `max_rows` reached.
    Rows,
    /// The memory budget is nearly spent.
    Memory,
    /// Partitions are being revoked.
    Rebalance,
    /// The worker is stopping or the source ended.
    Shutdown,
}

impl FlushReason {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Latency => "latency",
            FlushReason::Bytes => "bytes",
            FlushReason::Rows => "rows",
            FlushReason::Memory => "memory",
            FlushReason::Rebalance => "rebalance",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// The open batch.
#[derive(Debug, Default)]
pub struct Batch {
    spans: BTreeMap<Arc<PartitionId>, Span>,
    started: Option<Instant>,
    rows: u64,
    bytes: u64,
    charged: usize,
    unknown_fields: BTreeMap<String, u64>,
    /// Notes of records lost before a partition's next records, kept until
    /// a commit covering the partition carries them.
    trimmed: BTreeMap<Arc<PartitionId>, BTreeSet<String>>,
}

impl Batch {
    /// Adds a record that follows `prev` (the partition's recorded position).
    pub fn add(&mut self, record: &Record, prev: Option<i64>) {
        self.started.get_or_insert_with(Instant::now);
        self.rows += 1;
        self.bytes += record.payload.len() as u64;
        self.charged += record.charge();
        let span = self.spans.entry(record.partition.clone()).or_insert(Span {
            prev,
            first: record.position,
            last: record.position,
            received: 0,
            dead: 0,
            suppressed: 0,
            skipped: 0,
            newest_ms: None,
            schema_ids: BTreeSet::new(),
            refused_schema_ids: BTreeSet::new(),
        });
        span.newest_ms = span.newest_ms.max(record.timestamp_ms);
        span.last = record.position;
        span.received += 1;
    }

    /// Notes the registry schema id of a record of `partition`, taken or refused.
    pub fn add_schema_id(&mut self, partition: &Arc<PartitionId>, id: u32, refused: bool) {
        if let Some(span) = self.spans.get_mut(partition) {
            match refused {
                false => span.schema_ids.insert(id),
                true => span.refused_schema_ids.insert(id),
            };
        }
    }

    /// Counts a record of `partition` that holds no row by design.
    pub fn add_skipped(&mut self, partition: &Arc<PartitionId>) {
        if let Some(span) = self.spans.get_mut(partition) {
            span.skipped += 1;
        }
    }

    /// Counts fields the table does not have, per name.
    pub fn add_unknown_fields(&mut self, fields: &BTreeMap<String, u64>) {
        for (name, count) in fields {
            *self.unknown_fields.entry(name.clone()).or_insert(0) += count;
        }
    }

    /// The registry schema ids of the batch's records, taken or refused.
    pub fn schema_ids(&self) -> BTreeSet<u32> {
        self.spans
            .values()
            .flat_map(|s| s.schema_ids.iter().chain(&s.refused_schema_ids))
            .copied()
            .collect()
    }

    /// Counts of fields the table does not have, per name.
    pub fn unknown_fields(&self) -> BTreeMap<String, u64> {
        self.unknown_fields.clone()
    }

    /// Notes that records of `partition` were lost before its next ones.
    pub fn note_trimmed(&mut self, partition: &Arc<PartitionId>, detail: String) {
        self.trimmed
            .entry(partition.clone())
            .or_default()
            .insert(detail);
    }

    /// Drops the notes of `partition` (it was revoked, or assigned afresh:
    /// its reader sends them again if they still hold).
    pub fn forget_trimmed(&mut self, partition: &Arc<PartitionId>) {
        self.trimmed.remove(partition);
    }

    /// Counts a rejected record of `partition`.
    pub fn add_dead(&mut self, partition: &Arc<PartitionId>) {
        if let Some(span) = self.spans.get_mut(partition) {
            span.dead += 1;
        }
    }

    /// Counts a record of `partition` dropped because its key is being erased.
    pub fn add_suppressed(&mut self, partition: &Arc<PartitionId>) {
        if let Some(span) = self.spans.get_mut(partition) {
            span.suppressed += 1;
        }
    }

    /// The last position buffered for `partition`, if any.
    pub fn last_position(&self, partition: &PartitionId) -> Option<i64> {
        self.spans.get(partition).map(|s| s.last)
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Records buffered.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Memory-budget bytes held by the buffered records.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// When the latency limit falls due.
    pub fn deadline(&self, policy: &BatchingConfig) -> Option<Instant> {
        self.started.map(|t| t + policy.max_latency.0)
    }

    /// The size limit reached, if any.
    pub fn full(&self, policy: &BatchingConfig) -> Option<FlushReason> {
        if self.rows >= policy.max_rows {
            Some(FlushReason::Rows)
        } else if self.bytes >= policy.max_bytes.0 {
            Some(FlushReason::Bytes)
        } else {
            None
        }
    }

    /// Age of the batch.
    pub fn age(&self) -> Duration {
        self.started.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// The spans covered.
    pub fn spans(&self) -> impl Iterator<Item = (&Arc<PartitionId>, &Span)> {
        self.spans.iter()
    }

    /// Position updates for the data commit.
    pub fn position_updates(&self) -> Vec<PositionUpdate> {
        self.spans
            .iter()
            .map(|(p, s)| PositionUpdate {
                app_id: p.app_id(),
                prev: s.prev,
                last: s.last,
            })
            .collect()
    }

    /// Lineage entries for the data commit.
    pub fn lineage(&self) -> Vec<PartitionRange> {
        self.spans
            .iter()
            .map(|(p, s)| PartitionRange {
                app_id: p.app_id(),
                prev: s.prev,
                first: s.first,
                last: s.last,
                received: s.received,
                committed: s.received - s.dead - s.suppressed - s.skipped,
                dead_lettered: s.dead,
                suppressed: s.suppressed,
                skipped: s.skipped,
                schema_ids: s.schema_ids.iter().copied().collect(),
                refused_schema_ids: s.refused_schema_ids.iter().copied().collect(),
                trimmed: self
                    .trimmed
                    .get(p)
                    .map(|notes| notes.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Empties the batch, returning its memory charge.
    pub fn take(&mut self) -> (BTreeMap<Arc<PartitionId>, Span>, usize) {
        let spans = std::mem::take(&mut self.spans);
        let charged = self.charged;
        let mut trimmed = std::mem::take(&mut self.trimmed);
        // Notes whose partition this batch did not cover wait for the next.
        trimmed.retain(|p, _| !spans.contains_key(p));
        *self = Batch::default();
        self.trimmed = trimmed;
        (spans, charged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn record(partition: &Arc<PartitionId>, position: i64, payload: &str) -> Record {
        Record {
            partition: partition.clone(),
            position,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            timestamp_ms: None,
            key: None,
        }
    }

    #[test]
    fn tracks_ranges_counts_and_limits() {
        let p = Arc::new(PartitionId {
            source: "s".into(),
            stream: "t".into(),
            partition: "0".into(),
        });
        let policy = BatchingConfig {
            max_rows: 3,
            max_bytes: ByteSize(1000),
            ..BatchingConfig::default()
        };
        let mut batch = Batch::default();
        assert!(batch.deadline(&policy).is_none());
        batch.add(&record(&p, 10, "{}"), Some(9));
        batch.add(&record(&p, 11, "{}"), Some(9));
        batch.add_dead(&p);
        assert_eq!(batch.full(&policy), None);
        batch.add(&record(&p, 12, "{}"), Some(9));
        assert_eq!(batch.full(&policy), Some(FlushReason::Rows));
        let updates = batch.position_updates();
        assert_eq!(updates[0].prev, Some(9));
        assert_eq!(updates[0].last, 12);
        let lineage = batch.lineage();
        assert_eq!(
            (lineage[0].first, lineage[0].received, lineage[0].committed),
            (10, 3, 2)
        );
        let (_, charged) = batch.take();
        assert_eq!(charged, 3 * (2 + 96));
        assert!(batch.is_empty() && batch.rows() == 0);
    }
}
