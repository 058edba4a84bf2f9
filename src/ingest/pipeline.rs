//! One table's pipeline: source events in, fenced exactly-once commits out.
//!
//! The pipeline owns the table's open batch. Records are decoded in chunks
//! and streamed into Parquet files as they arrive; a flush finishes the files,
//! commits the batch's dead letters to the dead-letter table, then commits the
//! data files together with the last position of every source partition in
//! the batch (see `table::commit`). When the commit is refused as stale, the
//! batch is dropped (its files become orphans for vacuum) and each partition
//! is re-seeked to the table's position; records that arrive for it before
//! the seek takes effect are discarded.
//!
//! On shutdown the pipeline stops its source, keeps handling the events still
//! in flight (a Kafka source hands over its partitions through a revocation),
//! and commits what it holds within the grace period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::kernel::Action;
use deltalake::DeltaTable;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batch, FlushReason};
use super::budget::MemoryBudget;
use super::mirror::{discard, Mirror};
use crate::config::{defaults, BatchingConfig};
use crate::decode::{Decoded, Decoder};
use crate::erase::suppress::Suppressor;
use crate::source::{PartitionId, Record, SourceControl, SourceEvent};
use crate::table::commit::{
    commit_merge, commit_with_positions, commit_with_schema, CommitError, PositionUpdate,
};
use crate::table::dead_letter::{self, DeadLetter};
use crate::table::lineage::{CommitKind, CommitLineage, PartitionRange};
use crate::table::recorded_positions;
use crate::table::writer::TableWriter;
use crate::telemetry::stats::IngestStats;

/// Times a merge is planned again after concurrent rewrites removed a file it rewrote.
const MERGE_REPLANS: u32 = 10;

/// Errors that stop a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Writing data files failed.
    #[error("table `{table}`: writing data files: {source}")]
    Write {
        /// Table name.
        table: String,
        /// The delta-rs error.
        source: Box<deltalake::DeltaTableError>,
    },
    /// Dropping rows of erased keys failed.
    #[error("table `{table}`: suppressing erased keys: {source}")]
    Suppress {
        /// Table name.
        table: String,
        /// The Arrow error.
        source: arrow::error::ArrowError,
    },
    /// Stopped while the schema registry was unavailable: the records held
    /// could not be decoded, so nothing of them was committed (they are
    /// read again from the table's positions).
    #[error("table `{table}`: stopped while waiting for the schema registry; the buffered records were not committed and will be read again")]
    SchemasUnavailable {
        /// Table name.
        table: String,
    },
    /// The source failed (e.g. a file it cannot read); what it delivered
    /// before was committed.
    #[error("table `{table}`: {message}")]
    Source {
        /// Table name.
        table: String,
        /// What failed.
        message: String,
    },
    /// A commit kept failing.
    #[error("table `{table}`: {source}")]
    Commit {
        /// Table name.
        table: String,
        /// The commit error.
        source: Box<CommitError>,
    },
    /// A mirror table's merge could not be planned.
    #[error("merging into {table}: {source}")]
    Merge {
        /// The table.
        table: String,
        /// The cause.
        source: Box<super::mirror::MergeError>,
    },
}

/// What a pipeline needs besides its events.
pub struct PipelineParts {
    /// Table name (for logs and lineage).
    pub name: String,
    /// This worker's id, with the source when a table has several (lineage, `queryId`).
    pub worker: String,
    /// The subject-key column.
    pub key: String,
    /// Flush policy.
    pub batching: BatchingConfig,
    /// The decoder of the source's records for the table.
    pub decoder: Decoder,
    /// The data table.
    pub table: DeltaTable,
    /// The dead-letter table.
    pub dead_table: DeltaTable,
    /// The shared memory budget.
    pub budget: Arc<MemoryBudget>,
    /// The source, for seeks and stop.
    pub control: Arc<dyn SourceControl>,
    /// Shared counters.
    pub stats: Arc<IngestStats>,
    /// Keys under erasure requests, dropped before they are written.
    pub suppressor: Arc<Suppressor>,
    /// Object-store options (writers for a grown schema open the table by URL).
    pub storage_options: std::collections::BTreeMap<String, String>,
    /// A mirror table's primary key: batches are merged by it, not appended.
    pub mirror_key: Option<Vec<String>>,
    /// A mirror table's declared image columns (a partial update may leave them unset).
    pub mirror_image: Vec<String>,
    /// Whether a mirror table's merges mark replaced rows in deletion
    /// vectors (when the table has the feature) rather than rewrite files.
    pub mirror_marks: bool,
}

#[derive(Debug, Clone, Copy)]
struct PartState {
    recorded: Option<i64>,
    awaiting_seek: bool,
}

/// The running pipeline of one table.
pub struct Pipeline {
    parts: PipelineParts,
    writer: TableWriter,
    dead_writer: TableWriter,
    states: HashMap<Arc<PartitionId>, PartState>,
    batch: Batch,
    pending: Vec<Record>,
    in_flight: Option<tokio::task::JoinHandle<(Vec<Record>, Decoded)>>,
    decoder: Arc<Decoder>,
    dead: Vec<DeadLetter>,
    epoch: i64,
    /// Fires on shutdown: stops waiting for an unavailable schema registry.
    stop: CancellationToken,
    /// The schema `writer` writes.
    schema: arrow::datatypes::SchemaRef,
    /// A schema the table grew to in this batch: the commit carries it.
    grown: Option<arrow::datatypes::SchemaRef>,
    /// Files of this batch finished under an earlier schema.
    earlier: Vec<deltalake::kernel::Add>,
    /// A mirror table's open batch (its rows are merged, not streamed to files).
    mirror: Option<Mirror>,
    /// The batch's charge as last reported to the budget.
    held: usize,
}

impl Pipeline {
    /// Prepares writers for both tables.
    pub fn new(parts: PipelineParts) -> Result<Self, PipelineError> {
        let write_error = |source| PipelineError::Write {
            table: parts.name.clone(),
            source: Box::new(source),
        };
        let target = parts.batching.target_file_size.0;
        let writer = TableWriter::new(&parts.table, Some(&parts.key), target)
            .map_err(write_error)?
            .small_batches_in_snappy();
        let dead_writer = TableWriter::new(&parts.dead_table, None, target)
            .map_err(write_error)?
            .small_batches_in_snappy();
        let decoder = Arc::new(parts.decoder.clone());
        let schema = writer.arrow_schema();
        let mirror = parts.mirror_key.clone().map(|key| {
            Mirror::new(
                key,
                parts.key.clone(),
                target,
                parts.storage_options.clone(),
            )
            .with_image(&parts.mirror_image)
            .with_deletion_vectors(parts.mirror_marks)
        });
        Ok(Self {
            parts,
            writer,
            dead_writer,
            states: HashMap::new(),
            batch: Batch::default(),
            pending: Vec::new(),
            in_flight: None,
            decoder,
            dead: Vec::new(),
            epoch: 0,
            stop: CancellationToken::new(),
            schema,
            grown: None,
            earlier: Vec::new(),
            mirror,
            held: 0,
        })
    }

    /// Runs until the source ends or `shutdown` fires and the in-flight work is committed.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), PipelineError> {
        self.stop = shutdown.clone();
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        let mut ended = false;
        loop {
            let latency = self.batch.deadline(&self.parts.batching);
            let budget = self.parts.budget.clone();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                    tracing::info!(table = %self.parts.name, "stopping: committing what is buffered");
                    self.parts.control.stop();
                    grace_deadline = Some(tokio::time::Instant::now() + self.parts.batching.shutdown_grace.0);
                }
                _ = sleep_until_opt(grace_deadline) => {
                    tracing::warn!(table = %self.parts.name, "grace period over; committing and leaving");
                    break;
                }
                event = events.recv() => match event {
                    None => break,
                    Some(SourceEvent::End) => ended = true,
                    Some(SourceEvent::Failed(message)) => {
                        // Commit what the source delivered before it failed, then stop loudly.
                        self.parts.control.stop();
                        self.flush(FlushReason::Shutdown).await?;
                        return Err(PipelineError::Source {
                            table: self.parts.name.clone(),
                            message,
                        });
                    }
                    Some(event) => self.handle(event).await?,
                },
                _ = sleep_until_opt(latency.map(tokio::time::Instant::from_std)) => {
                    self.flush(FlushReason::Latency).await?;
                }
                _ = budget.pressured(), if !self.batch.is_empty() => {
                    if self.holds_its_share() {
                        self.flush(FlushReason::Memory).await?;
                    }
                }
            }
            let overdue = self
                .batch
                .deadline(&self.parts.batching)
                .is_some_and(|d| d <= Instant::now());
            if let Some(reason) = self.batch.full(&self.parts.batching) {
                self.flush(reason).await?;
            } else if overdue {
                self.flush(FlushReason::Latency).await?;
            } else if self.parts.budget.under_pressure() && self.holds_its_share() {
                self.flush(FlushReason::Memory).await?;
            }
            if ended && grace_deadline.is_none() {
                // A finite source is done: commit and stop.
                self.parts.control.stop();
                break;
            }
        }
        self.flush(FlushReason::Shutdown).await
    }

    async fn handle(&mut self, event: SourceEvent) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Assigned(assignments) => {
                for a in assignments {
                    self.batch.forget_trimmed(&a.partition);
                    self.parts.stats.partition_assigned(
                        &self.parts.name,
                        &a.partition.app_id(),
                        a.recorded,
                    );
                    self.states.insert(
                        a.partition,
                        PartState {
                            recorded: a.recorded,
                            awaiting_seek: false,
                        },
                    );
                }
            }
            SourceEvent::Records(records) => self.accept(records).await?,
            SourceEvent::Revoked { partitions, done } => {
                let result = self.flush(FlushReason::Rebalance).await;
                for p in &partitions {
                    self.batch.forget_trimmed(p);
                    self.states.remove(p);
                    self.parts.stats.partition_revoked(&p.app_id());
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                result?;
            }
            SourceEvent::Reseeked(partition) => {
                if let Some(state) = self.states.get_mut(&partition) {
                    state.awaiting_seek = false;
                }
            }
            SourceEvent::Trimmed { partition, detail } => {
                tracing::warn!(table = %self.parts.name, %partition, %detail,
                    "records lost to the stream's retention; the gap is recorded in the next commit's lineage");
                self.batch.note_trimmed(&partition, detail);
            }
            SourceEvent::End | SourceEvent::Failed(_) => {}
        }
        Ok(())
    }

    async fn accept(&mut self, records: Vec<Record>) -> Result<(), PipelineError> {
        let mut discarded = 0u64;
        let mut freed = 0usize;
        let mut accepted = 0u64;
        let mut accepted_bytes = 0u64;
        for record in records {
            let state = self.states.get(&record.partition).copied();
            let usable = match state {
                Some(s) if !s.awaiting_seek => {
                    let after = self.batch.last_position(&record.partition).or(s.recorded);
                    after
                        .is_none_or(|p| record.position > p)
                        .then_some(s.recorded)
                }
                _ => None,
            };
            match usable {
                Some(prev) => {
                    self.batch.add(&record, prev);
                    accepted += 1;
                    accepted_bytes += record.payload.len() as u64;
                    self.pending.push(record);
                    if let Some(reason) = self.batch.full(&self.parts.batching) {
                        self.flush(reason).await?;
                    }
                }
                None => {
                    discarded += 1;
                    freed += record.charge();
                }
            }
        }
        self.parts.budget.release(freed);
        self.parts.stats.records_received(accepted, accepted_bytes);
        tracing::debug!(table = %self.parts.name, accepted, buffered = self.batch.rows(), "records buffered");
        if discarded > 0 {
            self.parts.stats.records_discarded(
                &self.parts.name,
                discarded,
                "already committed, revoked or awaiting a seek",
            );
        }
        self.note_holding();
        if self.pending.len() >= defaults::DECODE_CHUNK_ROWS {
            self.decode_pending().await?;
        }
        Ok(())
    }

    /// Tells the budget what this pipeline's batch holds now.
    fn note_holding(&mut self) {
        let held = self.batch.charged();
        if held != self.held {
            self.parts.budget.report_held(self.held, held);
            self.held = held;
        }
    }

    /// Whether the open batch holds at least its share of the memory
    /// reserved, so a flush under pressure frees what others wait for.
    fn holds_its_share(&self) -> bool {
        !self.batch.is_empty() && self.parts.budget.holds_its_share(self.batch.charged())
    }

    /// Starts decoding the pending records on a blocking thread and, while
    /// that runs, writes the previously decoded chunk: decode and Parquet
    /// encode overlap on two cores.
    async fn decode_pending(&mut self) -> Result<(), PipelineError> {
        let previous = self.in_flight.take();
        if !self.pending.is_empty() {
            let records = std::mem::take(&mut self.pending);
            if !self.decoder.prepare(&records, &self.stop).await {
                return Err(PipelineError::SchemasUnavailable {
                    table: self.parts.name.clone(),
                });
            }
            self.follow_schema().await?;
            let decoder = self.decoder.clone();
            self.in_flight = Some(tokio::task::spawn_blocking(move || {
                let decoded = decoder.decode(&records);
                (records, decoded)
            }));
        }
        if let Some(handle) = previous {
            let (records, decoded) = handle.await.expect("decode task does not panic");
            self.absorb(records, decoded).await?;
        }
        Ok(())
    }

    /// Decodes and writes everything pending.
    async fn drain_decodes(&mut self) -> Result<(), PipelineError> {
        self.decode_pending().await?;
        if let Some(handle) = self.in_flight.take() {
            let (records, decoded) = handle.await.expect("decode task does not panic");
            self.absorb(records, decoded).await?;
        }
        Ok(())
    }

    /// Switches to a writer for the decoder's schema when it grew: the
    /// files written so far keep the older schema (Delta reads their missing
    /// columns as null) and this batch's commit carries the new one.
    async fn follow_schema(&mut self) -> Result<(), PipelineError> {
        let decoded = self.decoder.table_schema();
        if !crate::table::schema::adds_fields(self.schema.fields(), decoded.fields()) {
            return Ok(());
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(
            crate::table::schema::merge_fields(self.schema.fields(), decoded.fields()),
        ));
        let write_error = |source| PipelineError::Write {
            table: self.parts.name.clone(),
            source: Box::new(source),
        };
        let finished = self.writer.finish().await.map_err(write_error)?;
        self.earlier.extend(finished);
        self.writer = TableWriter::with_schema(
            &self.parts.table,
            &self.parts.storage_options,
            schema.clone(),
            Some(&self.parts.key),
            self.parts.batching.target_file_size.0,
        )
        .map_err(write_error)?
        .small_batches_in_snappy();
        tracing::info!(table = %self.parts.name, columns = schema.fields().len(), "table schema grows with the next commit");
        self.schema = schema.clone();
        self.grown = Some(schema);
        Ok(())
    }

    async fn absorb(
        &mut self,
        records: Vec<Record>,
        decoded: Decoded,
    ) -> Result<(), PipelineError> {
        let mut suppressed = 0u64;
        if !decoded.unknown_fields.is_empty() {
            self.batch.add_unknown_fields(&decoded.unknown_fields);
            self.parts
                .stats
                .unknown_fields(&self.parts.name, &decoded.unknown_fields);
        }
        for &index in &decoded.kept {
            if let Some(id) = self.decoder.schema_id(&records[index]) {
                self.batch
                    .add_schema_id(&records[index].partition, id, false);
            }
        }
        for (index, _) in &decoded.rejected {
            if let Some(id) = self.decoder.schema_id(&records[*index]) {
                self.batch
                    .add_schema_id(&records[*index].partition, id, true);
            }
        }
        for &index in &decoded.skipped {
            self.batch.add_skipped(&records[index].partition);
        }
        for (index, reason) in decoded.rejected {
            let record = &records[index];
            if self.parts.suppressor.holds_payload(&record.payload) {
                self.batch.add_suppressed(&record.partition);
                suppressed += 1;
                continue;
            }
            self.batch.add_dead(&record.partition);
            self.dead.push(DeadLetter {
                partition: record.partition.clone(),
                position: record.position,
                payload: record.payload.clone(),
                error: reason,
                source_time_ms: record.timestamp_ms,
            });
        }
        if suppressed > 0 {
            self.parts
                .stats
                .records_suppressed(&self.parts.name, suppressed);
        }
        if let Some(batch) = decoded.batch {
            let batch = self.suppress(batch, &records, &decoded.kept)?;
            let behind =
                crate::table::schema::adds_fields(batch.schema().fields(), self.schema.fields());
            let batch = if !behind {
                batch
            } else {
                // Decoded before the schema grew: the new columns are null.
                crate::table::schema::widen(&batch, &self.schema).map_err(|source| {
                    PipelineError::Suppress {
                        table: self.parts.name.clone(),
                        source,
                    }
                })?
            };
            if let (Some(mirror), true) = (&mut self.mirror, batch.num_rows() > 0) {
                mirror.push(batch);
            } else if batch.num_rows() > 0 {
                self.writer
                    .write(batch)
                    .await
                    .map_err(|source| PipelineError::Write {
                        table: self.parts.name.clone(),
                        source: Box::new(source),
                    })?;
            }
        }
        Ok(())
    }

    /// Drops the rows whose key is under an erasure request, counting them
    /// per source partition so the lineage still adds up.
    fn suppress(
        &mut self,
        batch: arrow::array::RecordBatch,
        records: &[Record],
        kept: &[usize],
    ) -> Result<arrow::array::RecordBatch, PipelineError> {
        let error = |source| PipelineError::Suppress {
            table: self.parts.name.clone(),
            source,
        };
        let Some(mask) = self.parts.suppressor.mask(&batch).map_err(error)? else {
            return Ok(batch);
        };
        for (row, hit) in mask.iter().enumerate() {
            if hit == Some(true) {
                self.batch.add_suppressed(&records[kept[row]].partition);
            }
        }
        self.parts
            .stats
            .records_suppressed(&self.parts.name, mask.true_count() as u64);
        let keep = arrow::compute::not(&mask).map_err(error)?;
        arrow::compute::filter_record_batch(&batch, &keep).map_err(error)
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<(), PipelineError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.drain_decodes().await?;
        if !self.prepare_positions().await? {
            return Ok(());
        }
        let table = self.parts.name.clone();
        let write_error = |source| PipelineError::Write {
            table: table.clone(),
            source: Box::new(source),
        };
        self.commit_dead_letters().await?;
        if self.mirror.is_some() {
            return self.flush_merge(reason, started).await;
        }
        let mut adds = std::mem::take(&mut self.earlier);
        adds.extend(self.writer.finish().await.map_err(write_error)?);
        let files = adds.len() as u64;
        let bytes: u64 = adds.iter().map(|a| a.size as u64).sum();
        let lineage = self.lineage(None);
        let updates = self.batch.position_updates();
        self.epoch += 1;
        let result = commit_with_schema(
            &mut self.parts.table,
            adds.into_iter().map(Action::Add).collect(),
            self.grown.as_ref(),
            &updates,
            &lineage,
            &self.parts.worker,
            self.epoch,
        )
        .await;
        if result.is_ok() {
            self.grown = None;
        }
        self.committed(result, &lineage, files, bytes, reason, started)
    }

    /// Merges a mirror table's batch: planned, then committed while every
    /// file it rewrote is live; planned again when a concurrent rewrite
    /// removed one.
    async fn flush_merge(
        &mut self,
        reason: FlushReason,
        started: Instant,
    ) -> Result<(), PipelineError> {
        let mirror = self.mirror.as_ref().expect("a mirror table");
        let updates = self.batch.position_updates();
        self.epoch += 1;
        let mut replans = 0;
        let (result, plan) = loop {
            // The merge must see every file committed so far, its own last commit's too.
            self.parts
                .table
                .update_state()
                .await
                .map_err(|source| PipelineError::Merge {
                    table: self.parts.name.clone(),
                    source: Box::new(source.into()),
                })?;
            let plan = mirror
                .plan(&self.parts.table, self.grown.as_ref())
                .await
                .map_err(|source| PipelineError::Merge {
                    table: self.parts.name.clone(),
                    source: Box::new(source),
                })?;
            if super::mirror::injected_crash(&self.parts.name) {
                return Err(PipelineError::Merge {
                    table: self.parts.name.clone(),
                    source: Box::new(super::mirror::MergeError::Injected),
                });
            }
            let lineage = self.lineage(Some(plan.summary.clone()));
            let result = commit_merge(
                &mut self.parts.table,
                plan.actions.clone(),
                self.grown.as_ref(),
                &plan.inputs,
                &updates,
                &lineage,
                &self.parts.worker,
                self.epoch,
            )
            .await;
            match result {
                Err(CommitError::Moved(path)) if replans < MERGE_REPLANS => {
                    replans += 1;
                    tracing::info!(table = %self.parts.name, %path, replans, "a file the merge rewrote was rewritten meanwhile; planning again");
                    discard(&self.parts.table, &plan).await;
                }
                Err(_) => {
                    discard(&self.parts.table, &plan).await;
                    break (result, plan);
                }
                Ok(_) => break (result, plan),
            }
        };
        self.mirror.as_mut().expect("a mirror table").clear();
        if result.is_ok() {
            self.grown = None;
        }
        let files = plan.written().count() as u64;
        let bytes: u64 = plan.written().map(|a| a.size as u64).sum();
        if result.is_ok() {
            crate::telemetry::metrics::merged(&self.parts.name, &plan.summary);
        }
        let lineage = self.lineage(Some(plan.summary));
        self.committed(result, &lineage, files, bytes, reason, started)
    }

    /// The lineage of the open batch's data commit.
    fn lineage(&self, merge: Option<crate::table::lineage::MergeSummary>) -> CommitLineage {
        CommitLineage {
            kind: CommitKind::Data,
            worker: self.parts.worker.clone(),
            partitions: self.batch.lineage(),
            unknown_fields: self.batch.unknown_fields(),
            schemas: self
                .batch
                .schema_ids()
                .into_iter()
                .filter_map(|id| Some((id, self.decoder.schema_label(id)?)))
                .collect(),
            merge,
        }
    }

    /// Ends the open batch after its commit: counts it, or re-seeks its
    /// partitions when it was fenced.
    fn committed(
        &mut self,
        result: Result<i64, CommitError>,
        lineage: &CommitLineage,
        files: u64,
        bytes: u64,
        reason: FlushReason,
        started: Instant,
    ) -> Result<(), PipelineError> {
        let rows: u64 = lineage.partitions.iter().map(|r| r.committed).sum();
        let dead: u64 = lineage.partitions.iter().map(|r| r.dead_lettered).sum();
        let (spans, charged) = self.batch.take();
        self.parts.budget.release(charged);
        self.note_holding();
        match result {
            Ok(version) => {
                for (partition, span) in spans {
                    if let Some(state) = self.states.get_mut(&partition) {
                        state.recorded = Some(span.last);
                    }
                    self.parts.stats.partition_committed(
                        &partition.app_id(),
                        span.last,
                        span.newest_ms,
                    );
                }
                self.parts.stats.batch_committed(
                    &self.parts.name,
                    version,
                    rows,
                    dead,
                    files,
                    bytes,
                    started.elapsed(),
                    reason.as_str(),
                );
                Ok(())
            }
            Err(CommitError::Stale {
                app_id,
                table_position,
                ours,
                recorded,
            }) => {
                let detail = format!("{app_id}: table at {table_position:?}, batch after {ours:?}");
                self.parts
                    .stats
                    .batch_fenced(&self.parts.name, rows + dead, &detail);
                for partition in spans.into_keys() {
                    let now = recorded.get(&partition.app_id()).copied();
                    if let Some(state) = self.states.get_mut(&partition) {
                        state.recorded = now;
                        state.awaiting_seek = true;
                        self.parts
                            .control
                            .seek(partition.clone(), now.map_or(0, |p| p + 1));
                    }
                }
                Ok(())
            }
            Err(source) => Err(PipelineError::Commit {
                table: self.parts.name.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// Lets the source record what the commit's positions mean (Kinesis
    /// sidecars). When it cannot, the batch is dropped like a fenced one and
    /// its partitions are re-read from the table's positions; false then.
    async fn prepare_positions(&mut self) -> Result<bool, PipelineError> {
        let positions: Vec<(Arc<PartitionId>, i64)> = self
            .batch
            .spans()
            .map(|(p, s)| (p.clone(), s.last))
            .collect();
        let Err(error) = self.parts.control.prepare_commit(positions).await else {
            return Ok(true);
        };
        tracing::error!(table = %self.parts.name, %error, "cannot record the batch's source positions; dropping it and re-reading");
        // The files become orphans for vacuum; nothing references them.
        self.writer
            .finish()
            .await
            .map_err(|source| PipelineError::Write {
                table: self.parts.name.clone(),
                source: Box::new(source),
            })?;
        let rows = self.batch.rows();
        self.dead.clear();
        self.earlier.clear();
        if let Some(mirror) = &mut self.mirror {
            mirror.clear();
        }
        let (spans, charged) = self.batch.take();
        self.parts.budget.release(charged);
        self.note_holding();
        self.parts
            .stats
            .batch_fenced(&self.parts.name, rows, &error);
        for partition in spans.into_keys() {
            if let Some(state) = self.states.get_mut(&partition) {
                state.awaiting_seek = true;
                let next = state.recorded.map_or(0, |p| p + 1);
                self.parts.control.seek(partition.clone(), next);
            }
        }
        Ok(false)
    }

    /// Commits the batch's dead letters, skipping any the dead-letter table
    /// already holds (a replay after a crash between the two commits).
    async fn commit_dead_letters(&mut self) -> Result<(), PipelineError> {
        if self.dead.is_empty() {
            return Ok(());
        }
        let letters = std::mem::take(&mut self.dead);
        let spans: Vec<(Arc<PartitionId>, i64)> = self
            .batch
            .spans()
            .filter(|(_, s)| s.dead > 0)
            .map(|(p, s)| (p.clone(), s.last))
            .collect();
        let app_ids: Vec<String> = spans.iter().map(|(p, _)| p.app_id()).collect();
        let table = self.parts.name.clone();
        let commit_error = |source| PipelineError::Commit {
            table: table.clone(),
            source: Box::new(source),
        };
        let write_error = |source| PipelineError::Write {
            table: table.clone(),
            source: Box::new(source),
        };
        for _attempt in 0..5 {
            self.parts
                .dead_table
                .update_state()
                .await
                .map_err(write_error)?;
            let recorded = recorded_positions(&self.parts.dead_table, &app_ids)
                .await
                .map_err(write_error)?;
            let fresh: Vec<&DeadLetter> = letters
                .iter()
                .filter(|l| {
                    recorded
                        .get(&l.partition.app_id())
                        .is_none_or(|r| l.position > *r)
                })
                .collect();
            let mut updates = Vec::new();
            let mut ranges = Vec::new();
            for (partition, last) in &spans {
                let app_id = partition.app_id();
                let prev = recorded.get(&app_id).copied();
                if prev.is_some_and(|p| p >= *last) {
                    continue;
                }
                let mine: Vec<&&DeadLetter> =
                    fresh.iter().filter(|l| &l.partition == partition).collect();
                updates.push(PositionUpdate {
                    app_id: app_id.clone(),
                    prev,
                    last: *last,
                });
                ranges.push(PartitionRange {
                    app_id,
                    prev,
                    first: mine.first().map_or(*last, |l| l.position),
                    last: *last,
                    received: mine.len() as u64,
                    committed: mine.len() as u64,
                    dead_lettered: 0,
                    suppressed: 0,
                    skipped: 0,
                    schema_ids: Vec::new(),
                    refused_schema_ids: Vec::new(),
                    trimmed: Vec::new(),
                });
            }
            if updates.is_empty() {
                return Ok(());
            }
            let mut actions = Vec::new();
            if !fresh.is_empty() {
                let rows = dead_letter::to_batch(&self.parts.name, &fresh);
                self.dead_writer.write(rows).await.map_err(write_error)?;
                let adds = self.dead_writer.finish().await.map_err(write_error)?;
                actions.extend(adds.into_iter().map(Action::Add));
            }
            let lineage = CommitLineage {
                kind: CommitKind::DeadLetter,
                worker: self.parts.worker.clone(),
                partitions: ranges,
                unknown_fields: Default::default(),
                schemas: Default::default(),
                merge: None,
            };
            match commit_with_positions(
                &mut self.parts.dead_table,
                actions,
                &updates,
                &lineage,
                &self.parts.worker,
                self.epoch,
            )
            .await
            {
                Ok(version) => {
                    tracing::info!(table = %self.parts.name, version, count = fresh.len(), "committed dead letters");
                    return Ok(());
                }
                Err(CommitError::Stale { .. }) => continue,
                Err(e) => return Err(commit_error(e)),
            }
        }
        Err(commit_error(CommitError::Failed {
            attempts: 5,
            source: Box::new(deltalake::DeltaTableError::Generic(
                "dead-letter table kept moving under concurrent writers".into(),
            )),
        }))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // A pipeline that stopped on an error holds nothing any more.
        self.parts.budget.report_held(self.held, 0);
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
