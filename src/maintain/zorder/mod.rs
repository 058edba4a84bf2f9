//! Z-order: cluster a partition's rows by one or more columns so that files
//! have narrow, mostly disjoint min/max ranges on them and a point lookup
//! (`user_id = ...`) can skip almost every file using stats alone.
//!
//! # Memory
//!
//! Rows stream from the input files into an external sort ([`sort`]) that
//! keeps at most half the memory budget of rows in memory and spills sorted
//! runs to local disk; the merge holds one batch per run. Peak memory is the
//! budget plus a fixed overhead, whatever the partition size. Up to two
//! partitions are rewritten side by side while each still gets at least
//! 128 MiB; the budget is shared between them, and the overhead (a writer's
//! row group and read-ahead per partition) stays fixed.
//!
//! # Incremental runs
//!
//! Every file a Z-order writes is tagged (`add.tags`) with the columns
//! (`sluice.zorder`) and the id of the rewrite that produced it
//! (`sluice.zorder.run`). The files of one run cover disjoint, consecutive key
//! ranges. A later Z-order of the same columns sorts only the files that are
//! not yet ordered (new appends, compacted files) into a new run and leaves
//! existing runs alone, so its rewrite is proportional to the new data. To
//! keep lookups cheap, a partition holds at most `max_runs` runs: when a new
//! run would exceed it, the smallest existing runs are merged into the new
//! one (tiered merging, as in an LSM tree), so each row is rewritten a
//! logarithmic number of times over the table's life, and a point lookup
//! reads at most one file per run.
//!
//! # Concurrency
//!
//! Each partition is one commit through [`commit_rewrite`]:
//! `remove` of exactly the files read and `add` of the sorted files, with
//! `dataChange=false`; it lands only if every input file is still live, so
//! appends pass through and a lost race aborts cleanly.

pub mod key;
pub mod sort;

use std::sync::Arc;

use futures::StreamExt;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use serde::Serialize;

use super::files::{live_files_by_partition, partition_label, read_batches, LiveFile};
use super::{commit_rewrite, AbortOnDrop, MaintainError, RewriteOutcome};
use crate::table::writer::writer_properties;
use key::{common_prefix, supported, KeyBuilder};
use sort::ExternalSorter;

/// Tag naming the Z-order columns of a file.
pub const COLUMNS_TAG: &str = "sluice.zorder";
/// Tag naming the Z-order run a file belongs to.
pub const RUN_TAG: &str = "sluice.zorder.run";
/// Name of the key column while sorting.
const KEY_COLUMN: &str = "__sluice_zorder_key";
/// Merged batches waiting for the writer.
const MERGED_AHEAD: usize = 4;
/// Least memory budget a partition sorted alongside others gets.
const MIN_JOB_BUDGET: usize = 128 << 20;
/// Most partitions rewritten at once (one Parquet encoder per core of a
/// small worker, as compaction's bins).
const PARALLEL_PARTITIONS: usize = 2;

/// What to Z-order and how.
#[derive(Debug, Clone)]
pub struct ZOrderOptions {
    /// Columns to cluster by, most important first.
    pub columns: Vec<String>,
    /// Output files roll at this size.
    pub target_size: u64,
    /// Memory for buffered rows; the rest spills to local disk.
    pub memory_budget: usize,
    /// Most runs a partition keeps before the smallest are merged.
    pub max_runs: usize,
    /// Only partitions matching all of these `column = value` pairs.
    pub partition_filter: Vec<(String, String)>,
}

impl Default for ZOrderOptions {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            target_size: super::compact::DEFAULT_TARGET_SIZE,
            memory_budget: 1 << 30,
            max_runs: 4,
            partition_filter: Vec::new(),
        }
    }
}

/// What a Z-order did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ZOrderMetrics {
    /// Partitions rewritten.
    pub partitions: u64,
    /// Partitions skipped because a concurrent commit removed an input.
    pub partitions_aborted: u64,
    /// Files read and replaced.
    pub files_in: u64,
    /// Bytes read and replaced.
    pub bytes_in: u64,
    /// Of those, bytes that were already ordered (merged runs).
    pub ordered_bytes_rewritten: u64,
    /// Files written.
    pub files_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Rows sorted.
    pub rows: u64,
    /// Sorted runs spilled to disk.
    pub spilled_runs: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Most bytes of rows the sorts held in memory at once (partitions are
    /// sorted side by side: the largest peaks of that many, added up).
    pub peak_sort_memory: u64,
    /// Table versions committed.
    pub versions: Vec<i64>,
    /// Wall time.
    pub seconds: f64,
}

/// The files of one partition that a Z-order run rewrites.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Files not yet ordered by these columns.
    pub unordered: Vec<LiveFile>,
    /// Files of existing runs merged into the new run.
    pub merged: Vec<LiveFile>,
}

/// Chooses what to rewrite in one partition (see the module docs).
pub fn select(files: &[LiveFile], columns: &str, max_runs: usize) -> Selection {
    let mut unordered = Vec::new();
    let mut runs: std::collections::BTreeMap<String, Vec<LiveFile>> = Default::default();
    for file in files {
        let ordered_by = file.tags.get(COLUMNS_TAG).cloned().flatten();
        let run = file.tags.get(RUN_TAG).cloned().flatten();
        match (ordered_by, run) {
            (Some(by), Some(run)) if by == columns => {
                runs.entry(run).or_default().push(file.clone())
            }
            _ => unordered.push(file.clone()),
        }
    }
    let mut merged = Vec::new();
    let new_runs = usize::from(!unordered.is_empty());
    if runs.len() + new_runs > max_runs.max(1) {
        let mut by_size: Vec<(u64, Vec<LiveFile>)> = runs
            .into_values()
            .map(|files| (files.iter().map(|f| f.size).sum(), files))
            .collect();
        by_size.sort_by_key(|(size, _)| *size);
        // Merge the smallest runs into the new one until the count fits.
        let keep = max_runs.max(1) - 1;
        let merge_count = by_size.len() - keep.min(by_size.len());
        let merge_count = if new_runs == 0 {
            merge_count.max(2).min(by_size.len())
        } else {
            merge_count
        };
        for (_, files) in by_size.into_iter().take(merge_count) {
            merged.extend(files);
        }
    }
    Selection { unordered, merged }
}

/// Z-orders `table` by `options.columns`; see the module docs.
pub async fn zorder(
    table: &mut DeltaTable,
    options: &ZOrderOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ZOrderMetrics, MaintainError> {
    let started = Instant::now();
    table.update_state().await?;
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let types = validate_columns(table, &schema, &options.columns)?;
    let columns_tag = options.columns.join(",");
    let key_column = super::table_key(table);
    let groups = live_files_by_partition(table, &options.partition_filter)?;
    let mut jobs = Vec::new();
    for (partition, files) in groups {
        let selection = select(&files, &columns_tag, options.max_runs);
        if selection.unordered.is_empty() && selection.merged.is_empty() {
            continue;
        }
        jobs.push((partition, selection));
    }
    let concurrency = concurrency(jobs.len(), options.memory_budget);
    let mut job_options = options.clone();
    job_options.memory_budget = options.memory_budget / concurrency;
    let reader = table.clone();
    let mut running = futures::stream::iter(jobs.into_iter().map(|(partition, selection)| {
        let inputs: Vec<LiveFile> = selection
            .unordered
            .iter()
            .chain(&selection.merged)
            .cloned()
            .collect();
        let job = PartitionJob {
            table: reader.clone(),
            schema: schema.clone(),
            prefixes: string_prefixes(&inputs, &options.columns, &types),
            types: types.clone(),
            inputs,
            options: job_options.clone(),
            key_column: key_column.clone(),
            columns_tag: columns_tag.clone(),
        };
        let handle = AbortOnDrop(tokio::spawn(job.run()));
        async move {
            let rewritten = handle
                .await
                .map_err(|e| MaintainError::Invalid(format!("z-order task failed: {e}")))?;
            Ok::<_, MaintainError>((partition, selection, rewritten?))
        }
    }))
    .buffer_unordered(concurrency);
    let mut metrics = ZOrderMetrics::default();
    let mut peaks = Vec::new();
    let mut done = 0u64;
    while let Some(finished) = running.next().await {
        let (partition, selection, (inputs, run_id, rewritten)) = finished?;
        let bytes_in: u64 = inputs.iter().map(|f| f.size).sum();
        let removed: Vec<String> = inputs.iter().map(|f| f.id()).collect();
        let actions: Vec<Action> = inputs
            .iter()
            .map(|f| Action::Remove(f.remove.clone()))
            .chain(rewritten.adds.iter().cloned().map(Action::Add))
            .collect();
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: options.target_size as i64,
        };
        let info = serde_json::json!({
            "kind": "zorder",
            "columns": options.columns,
            "run": run_id,
            "files_in": inputs.len(),
            "files_out": rewritten.adds.len(),
        });
        match commit_rewrite(table, &removed, actions, operation, info).await? {
            RewriteOutcome::Committed(version) => {
                metrics.partitions += 1;
                metrics.files_in += inputs.len() as u64;
                metrics.bytes_in += bytes_in;
                metrics.ordered_bytes_rewritten +=
                    selection.merged.iter().map(|f| f.size).sum::<u64>();
                metrics.files_out += rewritten.adds.len() as u64;
                metrics.bytes_out += rewritten.adds.iter().map(|a| a.size as u64).sum::<u64>();
                metrics.rows += rewritten.rows;
                metrics.spilled_runs += rewritten.spilled_runs;
                metrics.spilled_bytes += rewritten.spilled_bytes;
                peaks.push(rewritten.peak_buffered);
                metrics.versions.push(version);
                tracing::info!(partition = %partition_label(&partition), version, files_in = inputs.len(), files_out = rewritten.adds.len(), "z-ordered partition");
            }
            RewriteOutcome::Aborted(reason) => {
                metrics.partitions_aborted += 1;
                tracing::warn!(partition = %partition_label(&partition), %reason, "z-order of partition aborted");
            }
        }
        done += bytes_in;
        progress(done);
    }
    // Partitions sorted at once hold memory at once: the largest peaks add up.
    peaks.sort_unstable_by(|a, b| b.cmp(a));
    metrics.peak_sort_memory = peaks.iter().take(concurrency).sum();
    metrics.seconds = started.elapsed().as_secs_f64();
    Ok(metrics)
}

/// Partitions rewritten at once: up to [`PARALLEL_PARTITIONS`] (and no more
/// than the cores) while each still gets at least [`MIN_JOB_BUDGET`] of the
/// memory budget. Each job also holds a writer's row group and read-ahead
/// outside the budget, so the cap keeps that overhead fixed.
fn concurrency(partitions: usize, memory_budget: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    partitions
        .min(cores)
        .min(PARALLEL_PARTITIONS)
        .min(memory_budget / MIN_JOB_BUDGET)
        .max(1)
}

/// One partition's rewrite, owned so that it can run on its own task.
struct PartitionJob {
    table: DeltaTable,
    schema: SchemaRef,
    types: Vec<DataType>,
    prefixes: Vec<usize>,
    inputs: Vec<LiveFile>,
    options: ZOrderOptions,
    key_column: Option<String>,
    columns_tag: String,
}

impl PartitionJob {
    /// Sorts and writes the inputs; returns them with the run id and the files written.
    async fn run(self) -> Result<(Vec<LiveFile>, String, Rewritten), MaintainError> {
        let run_id = uuid::Uuid::new_v4().to_string();
        let rewritten = self.rewrite(&run_id).await?;
        Ok((self.inputs, run_id, rewritten))
    }

    /// Reads, sorts and writes the partition's rows as one run tagged `run_id`.
    async fn rewrite(&self, run_id: &str) -> Result<Rewritten, MaintainError> {
        let (table, inputs, options) = (&self.table, &self.inputs, &self.options);
        let builder = KeyBuilder::new(options.columns.clone(), &self.types, self.prefixes.clone())?;
        let mut sorter: Option<ExternalSorter> = None;
        let mut batches = read_batches(table, inputs.clone(), self.schema.clone());
        while let Some(batch) = batches.recv().await {
            let keyed = with_key(&batch?, &builder)?;
            let sorter = match &mut sorter {
                Some(sorter) => sorter,
                None => sorter.insert(ExternalSorter::new(
                    keyed.schema(),
                    keyed.num_columns() - 1,
                    options.memory_budget,
                )?),
            };
            sorter.push(keyed)?;
        }
        let Some(sorter) = sorter else {
            return Ok(Rewritten {
                adds: Vec::new(),
                rows: 0,
                spilled_runs: 0,
                spilled_bytes: 0,
                peak_buffered: 0,
            });
        };
        // Small output batches let the writer roll files close to the target.
        let bytes_in: u64 = inputs.iter().map(|f| f.size).sum();
        let rows_in: u64 = inputs.iter().filter_map(|f| f.rows).sum::<u64>().max(1);
        let bytes_per_row = (bytes_in / rows_in).max(1);
        let out_rows = (options.target_size / bytes_per_row / 8).clamp(256, 8192) as usize;
        let sorted = sorter.finish(out_rows)?;
        let mut writer = RecordBatchWriter::for_table(table)?
            .with_writer_properties(writer_properties(self.key_column.as_deref()))
            .with_target_file_size(options.target_size);
        // The merge runs on a blocking thread while this task encodes what it
        // produced: on two cores the two halves overlap.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(MERGED_AHEAD);
        let merging = tokio::task::spawn_blocking(move || merge_into(sorted, tx));
        let mut rows = 0u64;
        while let Some(batch) = rx.recv().await {
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
        let stats = merging
            .await
            .map_err(|e| MaintainError::Invalid(format!("z-order merge task failed: {e}")))??;
        let mut adds = writer.flush().await?;
        for add in &mut adds {
            add.data_change = false;
            let tags = add.tags.get_or_insert_with(Default::default);
            tags.insert(COLUMNS_TAG.to_string(), Some(self.columns_tag.clone()));
            tags.insert(RUN_TAG.to_string(), Some(run_id.to_string()));
        }
        Ok(Rewritten {
            adds,
            rows,
            spilled_runs: stats.spilled_runs,
            spilled_bytes: stats.spilled_bytes,
            peak_buffered: stats.peak_buffered,
        })
    }
}

/// Input bytes a Z-order with `options` would read.
pub fn planned_bytes(table: &DeltaTable, options: &ZOrderOptions) -> Result<u64, MaintainError> {
    let columns = options.columns.join(",");
    Ok(live_files_by_partition(table, &options.partition_filter)?
        .values()
        .map(|files| {
            let s = select(files, &columns, options.max_runs);
            s.unordered
                .iter()
                .chain(&s.merged)
                .map(|f| f.size)
                .sum::<u64>()
        })
        .sum())
}

fn validate_columns(
    table: &DeltaTable,
    schema: &SchemaRef,
    columns: &[String],
) -> Result<Vec<DataType>, MaintainError> {
    if columns.is_empty() {
        return Err(MaintainError::Invalid(
            "name at least one column to Z-order by".into(),
        ));
    }
    let partition_columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let mut types = Vec::new();
    for column in columns {
        if partition_columns.contains(column) {
            return Err(MaintainError::Invalid(format!(
                "`{column}` is a partition column; Z-order clusters rows within a partition, so use a data column"
            )));
        }
        let field = schema.field_with_name(column).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            MaintainError::Invalid(format!(
                "unknown column `{column}` (columns: {})",
                names.join(", ")
            ))
        })?;
        if !supported(field.data_type()) {
            return Err(MaintainError::Invalid(format!(
                "cannot Z-order by `{column}` of type {}",
                field.data_type()
            )));
        }
        types.push(field.data_type().clone());
    }
    Ok(types)
}

/// Per column, the byte prefix shared by every string value of the inputs (from stats).
fn string_prefixes(files: &[LiveFile], columns: &[String], types: &[DataType]) -> Vec<usize> {
    columns
        .iter()
        .zip(types)
        .map(|(column, ty)| {
            if !matches!(
                ty,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return 0;
            }
            let mut low: Option<String> = None;
            let mut high: Option<String> = None;
            for file in files {
                let Some(stats) = file
                    .stats
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                else {
                    return 0;
                };
                let (Some(min), Some(max)) = (
                    stats["minValues"][column].as_str(),
                    stats["maxValues"][column].as_str(),
                ) else {
                    return 0;
                };
                if low.as_deref().is_none_or(|l| min < l) {
                    low = Some(min.to_string());
                }
                if high.as_deref().is_none_or(|h| max > h) {
                    high = Some(max.to_string());
                }
            }
            match (low, high) {
                // Stats may truncate strings; stay one byte short of the shared prefix.
                (Some(l), Some(h)) => common_prefix(&l, &h).saturating_sub(1),
                _ => 0,
            }
        })
        .collect()
}

struct Rewritten {
    adds: Vec<deltalake::kernel::Add>,
    rows: u64,
    spilled_runs: u64,
    spilled_bytes: u64,
    peak_buffered: u64,
}

/// Sends the merged batches, without their key column, until the end or
/// until the receiver is gone (the writer failed; its error wins).
fn merge_into(
    mut sorted: sort::SortedBatches,
    tx: tokio::sync::mpsc::Sender<RecordBatch>,
) -> Result<sort::SortStats, MaintainError> {
    while let Some(mut batch) = sorted.next_batch()? {
        batch.remove_column(batch.num_columns() - 1);
        if tx.blocking_send(batch).is_err() {
            break;
        }
    }
    Ok(sorted.stats())
}

fn with_key(batch: &RecordBatch, builder: &KeyBuilder) -> Result<RecordBatch, MaintainError> {
    let keys = builder.keys(batch)?;
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
    let mut columns = batch.columns().to_vec();
    columns.push(keys);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
