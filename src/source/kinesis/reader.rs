//! One shard's reader: shard iterators, `GetRecords` within the per-shard
//! limits, dense ordinals, and the shard's end.
//!
//! The reader starts after the table's recorded ordinal (looked up through
//! its sidecar), at the anchor (ordinal 0) when the table has nothing yet,
//! or at `start_from` when nobody has read the shard before, in which case it
//! writes the anchor before handing on the first record. It numbers records
//! densely from there and remembers each ordinal's sequence number until the
//! pipeline commits it (`prepare_commit` writes the sidecar). It calls
//! `GetRecords` at most five times a second (the per-shard limit), waits a
//! second when the shard is idle, backs off exponentially when throttled,
//! and re-opens an expired iterator where it left off. When the shard is
//! closed and read to its end, it records the last ordinal and finishes.
//!
//! Retention gaps: before it opens after a position the table recorded, the
//! reader asks for the shard's oldest retained record. If that record comes
//! after the recorded one, the recorded record has been trimmed (the worker
//! was away longer than the stream's retention) and the records between
//! them may be gone; Kinesis itself would just return the first retained
//! one, or empty reads, without a word. `on_trimmed = "fail"` stops the
//! pipeline naming the shard and the range; `"skip"` resumes at the oldest
//! retained record and sends [`SourceEvent::Trimmed`], which the next
//! commit records in its lineage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::positions::{PositionError, ShardPositions};
use crate::config::{OnTrimmed, StartFrom};
use crate::ingest::budget::MemoryBudget;
use crate::source::{PartitionId, Record, SourceEvent};
use crate::telemetry::stats::IngestStats;

/// Records asked for per `GetRecords` call (the API's maximum).
const GET_LIMIT: i32 = 10_000;
/// Kinesis allows five `GetRecords` calls per second per shard.
const MIN_CALL_GAP: Duration = Duration::from_millis(200);
/// Wait after an empty read.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Longest backoff after throttling or errors.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a reader at the end of a closed shard looks for a re-seek.
const SEEK_POLL: Duration = Duration::from_millis(200);
/// `GetRecords` calls spent looking for a shard's oldest retained record
/// (Kinesis may answer empty reads before it reaches one).
const PROBE_CALLS: usize = 20;
/// Records asked for per probing call: only the first is used, but a server
/// may count records past the retention against the limit before dropping
/// them (kinesalite does), so a call asking for one can come back empty.
const PROBE_LIMIT: i32 = 100;

/// What the pipeline and the coordinator share with a shard's reader.
pub struct ShardShared {
    /// The shard as a source partition.
    pub partition: Arc<PartitionId>,
    /// The shard's sidecars.
    pub positions: ShardPositions,
    /// Sequence numbers of ordinals read but not yet committed.
    pub sequences: Mutex<BTreeMap<i64, String>>,
    /// A seek requested by the pipeline: the next ordinal to deliver.
    pub seek: Mutex<Option<i64>>,
}

impl ShardShared {
    /// The sequence number of an ordinal this reader delivered.
    pub fn sequence_of(&self, ordinal: i64) -> Option<String> {
        self.sequences
            .lock()
            .expect("sequences lock")
            .get(&ordinal)
            .cloned()
    }

    /// Forgets ordinals below `ordinal` (committed or about to be).
    pub fn forget_below(&self, ordinal: i64) {
        let mut sequences = self.sequences.lock().expect("sequences lock");
        *sequences = sequences.split_off(&ordinal);
    }
}

/// How a reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderExit {
    /// The shard is closed and every record was handed on.
    Finished,
    /// Stopped by the coordinator, or the pipeline went away.
    Stopped,
}

/// Everything a reader needs.
pub struct Reader {
    /// The Kinesis client.
    pub client: Client,
    /// The stream name.
    pub stream: String,
    /// Shared with the pipeline and coordinator.
    pub shared: Arc<ShardShared>,
    /// The table's recorded ordinal for the shard.
    pub recorded: Option<i64>,
    /// Where a never-read shard starts.
    pub start_from: StartFrom,
    /// What to do when the recorded position has been trimmed.
    pub on_trimmed: OnTrimmed,
    /// The pipeline.
    pub tx: mpsc::Sender<SourceEvent>,
    /// The worker's memory budget.
    pub budget: Arc<MemoryBudget>,
    /// Counters (high watermark for lag).
    pub stats: Arc<IngestStats>,
    /// Cancelled to stop this reader.
    pub stop: CancellationToken,
}

enum Failure {
    Throttled,
    Expired,
    Other(String),
}

enum OpenError {
    /// The table's recorded record (`after`) is older than the shard's
    /// oldest retained one (`first`; `None`: the shard retains none).
    Trimmed {
        after: String,
        first: Option<String>,
    },
    Other(String),
}

/// What a look for the shard's oldest retained record found.
enum Oldest {
    /// Its sequence number.
    Found(String),
    /// The shard retains no record (read to its tip).
    Empty,
}

impl From<String> for OpenError {
    fn from(error: String) -> Self {
        OpenError::Other(error)
    }
}

/// Whether Kinesis sequence number `a` comes after `b` (both decimal).
fn sequence_after(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) > (b.len(), b)
}

impl Reader {
    fn shard(&self) -> &str {
        &self.shared.partition.partition
    }

    /// An iterator whose first record is ordinal `next`; the flag says
    /// whether ordinal 0 is anchored (known) already.
    async fn open(&self, next: i64) -> Result<(String, bool), OpenError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(self.shard());
        let (request, anchored) = if next > 0 {
            let (before, recorded) = match self.shared.sequence_of(next - 1) {
                Some(seq) => (Some(seq), false),
                None => (
                    self.shared
                        .positions
                        .sequence(next - 1)
                        .await
                        .map_err(|e| e.to_string())?,
                    true,
                ),
            };
            let before = before.ok_or_else(|| {
                format!(
                    "no sequence number recorded for ordinal {} of {}",
                    next - 1,
                    self.shared.partition
                )
            })?;
            if recorded {
                // Read long ago (by this worker or another): it may be gone.
                match self.oldest_retained().await? {
                    Oldest::Found(first) if sequence_after(&first, &before) => {
                        return Err(OpenError::Trimmed {
                            after: before,
                            first: Some(first),
                        })
                    }
                    Oldest::Found(_) => {}
                    Oldest::Empty => {
                        return Err(OpenError::Trimmed {
                            after: before,
                            first: None,
                        })
                    }
                }
            }
            let request = request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(before);
            (request, true)
        } else {
            match self
                .shared
                .positions
                .sequence(0)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(anchor) => (
                    request
                        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                        .starting_sequence_number(anchor),
                    true,
                ),
                None => {
                    let kind = match self.start_from {
                        StartFrom::Earliest => ShardIteratorType::TrimHorizon,
                        StartFrom::Latest => ShardIteratorType::Latest,
                    };
                    (request.shard_iterator_type(kind), false)
                }
            }
        };
        let answer = request
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        let iterator = answer
            .shard_iterator()
            .ok_or("GetShardIterator returned no iterator".to_string())?;
        Ok((iterator.to_string(), anchored))
    }

    /// An iterator of `kind`, at `sequence` for the kinds that take one.
    async fn open_iterator(
        &self,
        kind: ShardIteratorType,
        sequence: Option<&str>,
    ) -> Result<String, String> {
        let answer = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(self.shard())
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence.map(str::to_string))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        answer
            .shard_iterator()
            .map(str::to_string)
            .ok_or_else(|| "GetShardIterator returned no iterator".to_string())
    }

    /// The shard's oldest retained record; an error (retried) when a few
    /// reads neither found one nor reached the shard's tip.
    async fn oldest_retained(&self) -> Result<Oldest, String> {
        let mut iterator = self
            .open_iterator(ShardIteratorType::TrimHorizon, None)
            .await?;
        for call in 0..PROBE_CALLS {
            let output = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(PROBE_LIMIT)
                .send()
                .await
                .map_err(|e| DisplayErrorContext(e).to_string())?;
            if let Some(record) = output.records().first() {
                return Ok(Oldest::Found(record.sequence_number().to_string()));
            }
            // At the tip (nothing behind) after a few reads: the shard is empty.
            match output.next_shard_iterator() {
                Some(following) if call < 2 || output.millis_behind_latest() != Some(0) => {
                    iterator = following.to_string()
                }
                _ => return Ok(Oldest::Empty),
            }
            if !self.pause(MIN_CALL_GAP).await {
                return Err("stopped while looking for the oldest retained record".into());
            }
        }
        Err(format!(
            "no retained record found within {PROBE_CALLS} reads from the trim horizon, nor the shard's tip"
        ))
    }

    /// What to do about a trimmed position: `fail` tells the pipeline and
    /// stops (`None`); `skip` notes the gap and opens at the oldest retained
    /// record (`Err` if that cannot be opened now).
    async fn trimmed(
        &self,
        next: i64,
        after: &str,
        first: Option<&str>,
    ) -> Option<Result<(String, bool), String>> {
        let range = match first {
            Some(first) => format!(
                "the records after sequence number {after} (ordinal {}, the table's position) and before {first} (the oldest the stream retains)",
                next - 1
            ),
            None => format!(
                "the records after sequence number {after} (ordinal {}, the table's position; the shard retains none now)",
                next - 1
            ),
        };
        match self.on_trimmed {
            OnTrimmed::Fail => {
                let message = format!(
                    "shard {}: the table's position is older than the stream's retention; {range} may be lost. Set `on_trimmed = \"skip\"` on the source to resume at the oldest retained record and record the gap",
                    self.shared.partition
                );
                tracing::error!(shard = %self.shared.partition, after, ?first, "recorded position trimmed from the stream");
                let _ = self.tx.send(SourceEvent::Failed(message)).await;
                None
            }
            OnTrimmed::Skip => {
                // Ordinals from `next` on now name other records: sidecars a
                // worker wrote for them before dying uncommitted must go.
                if let Err(error) = self.shared.positions.forget_from(next).await {
                    return Some(Err(error.to_string()));
                }
                let opened = match first {
                    Some(first) => {
                        self.open_iterator(ShardIteratorType::AtSequenceNumber, Some(first))
                            .await
                    }
                    None => {
                        self.open_iterator(ShardIteratorType::TrimHorizon, None)
                            .await
                    }
                };
                let iterator = match opened {
                    Ok(iterator) => iterator,
                    Err(error) => return Some(Err(error)),
                };
                let detail =
                    format!("{range} were trimmed by the stream's retention before they were read");
                let event = SourceEvent::Trimmed {
                    partition: self.shared.partition.clone(),
                    detail,
                };
                if self.tx.send(event).await.is_err() {
                    return None;
                }
                tracing::warn!(shard = %self.shared.partition, after, ?first, next,
                    "recorded position trimmed from the stream; resuming at the oldest retained record (on_trimmed = skip)");
                Some(Ok((iterator, true)))
            }
        }
    }

    /// Sleeps for `wait` unless stopped first; false when stopped.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// Opens at `next`, retrying with backoff until it works or the reader stops.
    async fn open_retrying(&self, next: i64) -> Option<(String, bool)> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let error = match self.open(next).await {
                Ok(opened) => return Some(opened),
                Err(OpenError::Trimmed { after, first }) => {
                    match self.trimmed(next, &after, first.as_deref()).await? {
                        Ok(opened) => return Some(opened),
                        Err(error) => error,
                    }
                }
                Err(OpenError::Other(error)) => error,
            };
            tracing::warn!(shard = %self.shared.partition, next, %error, "cannot open a shard iterator; retrying");
            if !self.pause(backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn get(
        &self,
        iterator: &str,
    ) -> Result<aws_sdk_kinesis::operation::get_records::GetRecordsOutput, Failure> {
        self.client
            .get_records()
            .shard_iterator(iterator)
            .limit(GET_LIMIT)
            .send()
            .await
            .map_err(|error| match error.as_service_error() {
                Some(GetRecordsError::ProvisionedThroughputExceededException(_)) => {
                    Failure::Throttled
                }
                Some(GetRecordsError::ExpiredIteratorException(_)) => Failure::Expired,
                _ => Failure::Other(DisplayErrorContext(error).to_string()),
            })
    }

    /// Reads the shard until it ends or the reader is stopped.
    pub async fn run(self) -> ReaderExit {
        let mut next = self.recorded.map_or(0, |r| r + 1);
        let Some((mut iterator, mut anchored)) = self.open_retrying(next).await else {
            return ReaderExit::Stopped;
        };
        let app_id = self.shared.partition.app_id();
        let mut backoff = Duration::ZERO;
        let mut last_call = tokio::time::Instant::now() - MIN_CALL_GAP;
        loop {
            if self.stop.is_cancelled() {
                return ReaderExit::Stopped;
            }
            let seek = self.shared.seek.lock().expect("seek lock").take();
            if let Some(target) = seek {
                next = target;
                self.shared
                    .sequences
                    .lock()
                    .expect("sequences lock")
                    .retain(|ordinal, _| *ordinal < target);
                let Some(opened) = self.open_retrying(next).await else {
                    return ReaderExit::Stopped;
                };
                (iterator, anchored) = opened;
                tracing::info!(shard = %self.shared.partition, next, "re-seeked to the table's position");
                if self
                    .tx
                    .send(SourceEvent::Reseeked(self.shared.partition.clone()))
                    .await
                    .is_err()
                {
                    return ReaderExit::Stopped;
                }
                continue;
            }
            let since = last_call.elapsed();
            if since < MIN_CALL_GAP.max(backoff)
                && !self.pause(MIN_CALL_GAP.max(backoff) - since).await
            {
                return ReaderExit::Stopped;
            }
            last_call = tokio::time::Instant::now();
            let output = match self.get(&iterator).await {
                Ok(output) => {
                    backoff = Duration::ZERO;
                    output
                }
                Err(failure) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF);
                    match failure {
                        Failure::Throttled => {
                            tracing::debug!(shard = %self.shared.partition, ?backoff, "read throttled; backing off")
                        }
                        Failure::Expired => {
                            let Some(opened) = self.open_retrying(next).await else {
                                return ReaderExit::Stopped;
                            };
                            (iterator, anchored) = opened;
                        }
                        Failure::Other(error) => {
                            tracing::warn!(shard = %self.shared.partition, %error, "GetRecords failed; retrying")
                        }
                    }
                    continue;
                }
            };
            let mut records = Vec::with_capacity(output.records().len());
            let mut taken = 0;
            for record in output.records() {
                let sequence = record.sequence_number();
                if !anchored {
                    match self.shared.positions.record(0, sequence).await {
                        Ok(()) => anchored = true,
                        Err(error) => {
                            // Another reader anchored the shard first (or the
                            // store failed): start over from the anchor.
                            tracing::warn!(shard = %self.shared.partition, %error, "anchoring the shard failed; re-opening at the anchor");
                            if matches!(error, PositionError::Store { .. })
                                && !self.pause(backoff.max(Duration::from_millis(500))).await
                            {
                                return ReaderExit::Stopped;
                            }
                            break;
                        }
                    }
                }
                let payload = Bytes::copy_from_slice(record.data().as_ref());
                let item = Record {
                    partition: self.shared.partition.clone(),
                    position: next,
                    payload,
                    timestamp_ms: record
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok()),
                    key: None,
                };
                if !self.budget.try_reserve(item.charge()) {
                    // Hand over what this call read first: the budget may be
                    // spent on exactly those records, and the pipeline can
                    // only flush (and free it) once it has them.
                    if !records.is_empty() {
                        let ready = std::mem::take(&mut records);
                        if self.tx.send(SourceEvent::Records(ready)).await.is_err() {
                            return ReaderExit::Stopped;
                        }
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return ReaderExit::Stopped,
                        _ = self.budget.reserve(item.charge()) => {}
                    }
                }
                self.shared
                    .sequences
                    .lock()
                    .expect("sequences lock")
                    .insert(next, sequence.to_string());
                next += 1;
                taken += 1;
                records.push(item);
            }
            let complete = taken == output.records().len();
            let got = taken;
            if !records.is_empty() && self.tx.send(SourceEvent::Records(records)).await.is_err() {
                return ReaderExit::Stopped;
            }
            // Lag: records read but not committed, and the shard's own
            // measure of how far behind its tip this reader is.
            self.stats.high_watermark(&app_id, next);
            if let Some(behind) = output.millis_behind_latest() {
                self.stats.behind(&app_id, behind);
            }
            if !complete {
                let Some(opened) = self.open_retrying(next).await else {
                    return ReaderExit::Stopped;
                };
                (iterator, anchored) = opened;
                continue;
            }
            match output.next_shard_iterator() {
                Some(following) => iterator = following.to_string(),
                None => {
                    if let ReaderExit::Stopped = self.finish(next - 1).await {
                        return ReaderExit::Stopped;
                    }
                    // Read to its end; stay until stopped, in case the batch
                    // holding the last records is dropped and re-seeks here.
                    if !self.await_seek().await {
                        return ReaderExit::Stopped;
                    }
                    continue;
                }
            }
            if got == 0 && !self.pause(IDLE_WAIT).await {
                return ReaderExit::Stopped;
            }
        }
    }

    /// Waits for a re-seek; false when stopped first.
    async fn await_seek(&self) -> bool {
        loop {
            if self.shared.seek.lock().expect("seek lock").is_some() {
                return true;
            }
            if !self.pause(SEEK_POLL).await {
                return false;
            }
        }
    }

    /// Records the end of a closed shard read to the end.
    async fn finish(&self, last: i64) -> ReaderExit {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.shared.positions.record_end(last).await {
                Ok(()) => {
                    tracing::info!(shard = %self.shared.partition, last, "closed shard read to its end");
                    return ReaderExit::Finished;
                }
                Err(error) => {
                    tracing::warn!(shard = %self.shared.partition, %error, "cannot record the shard's end; retrying")
                }
            }
            if !self.pause(backoff).await {
                return ReaderExit::Stopped;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
