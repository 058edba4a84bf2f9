//! Compaction: bin-pack a partition's small files into files near a target size.
//!
//! Per partition, files below `min_file_size` are candidates, and so are
//! files whose deletion vector removes at least a tenth of their rows
//! (mirror merges mark rows that way; the rewrite drops them for good,
//! and such a file is rewritten even alone in its bin); they are packed
//! (largest first) into bins of at most `target_size` bytes, and every bin of
//! two or more files is rewritten: its files are streamed batch by batch
//! through a Parquet writer that rolls at the target size, so memory holds
//! a few input batches and one output row group per bin, never a partition.
//! Two bins are written at once, on separate tasks.
//!
//! Each bin is its own commit: `remove` of exactly the files it read plus
//! `add` of the new ones, all with `dataChange=false`, under the `OPTIMIZE`
//! operation, landed by [`commit_rewrite`]: it commits only against a
//! version in which every input file is still live, retrying when appends
//! land first. Ingestion never fails or waits because of compaction
//! (invariant 3): an append does not depend on the files compaction removes.
//! If a concurrent commit removed one of the bin's files (another
//! compaction, an erasure), the bin aborts cleanly: its new files are never
//! referenced and vacuum removes them.
//!
//! ```no_run
//! # async fn example(table: &mut deltalake::DeltaTable) -> Result<(), sluice::maintain::MaintainError> {
//! use sluice::maintain::compact::{compact, CompactOptions};
//! let metrics = compact(table, &CompactOptions::default(), &|_| {}).await?;
//! println!("{} files -> {}", metrics.files_in, metrics.files_out);
//! # Ok(()) }
//! ```

use std::time::Instant;

use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::StreamExt;
use serde::Serialize;

use super::files::{live_files_by_partition, partition_label, read_batches, LiveFile};
use super::{commit_rewrite, AbortOnDrop, MaintainError, RewriteOutcome};
use crate::table::deletion_vectors::PURGE_SHARE;
use crate::table::writer::writer_properties;

/// Bins written at once (one Parquet encoder per core).
const PARALLEL_BINS: usize = 2;

/// Default output file size.
pub const DEFAULT_TARGET_SIZE: u64 = 512 << 20;

/// What to compact and how.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Output files roll at this size.
    pub target_size: u64,
    /// Files at or above this size are left alone.
    pub min_file_size: u64,
    /// Only partitions matching all of these `column = value` pairs.
    pub partition_filter: Vec<(String, String)>,
    /// The key column to bloom-filter in new files (default: the table's `sluice.key`).
    pub key_column: Option<String>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_size: DEFAULT_TARGET_SIZE,
            min_file_size: DEFAULT_TARGET_SIZE * 3 / 4,
            partition_filter: Vec::new(),
            key_column: None,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactMetrics {
    /// Partitions with at least one bin.
    pub partitions: u64,
    /// Bins committed.
    pub bins_committed: u64,
    /// Bins aborted because a concurrent commit removed one of their files.
    pub bins_aborted: u64,
    /// Files rewritten.
    pub files_in: u64,
    /// Bytes rewritten.
    pub bytes_in: u64,
    /// Files written.
    pub files_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Table versions committed.
    pub versions: Vec<i64>,
    /// Wall time.
    pub seconds: f64,
}

/// Progress callback: `(bytes of input done)`.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Bins of files to rewrite together, per partition.
pub fn plan(files: &[LiveFile], options: &CompactOptions) -> Vec<Vec<LiveFile>> {
    let purge = |f: &LiveFile| f.deleted_share() >= PURGE_SHARE;
    let mut candidates: Vec<&LiveFile> = files
        .iter()
        .filter(|f| f.size < options.min_file_size || purge(f))
        .collect();
    candidates.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
    let mut bins: Vec<(u64, Vec<LiveFile>)> = Vec::new();
    for file in candidates {
        match bins
            .iter_mut()
            .find(|(size, _)| size + file.size <= options.target_size)
        {
            Some((size, members)) => {
                *size += file.size;
                members.push(file.clone());
            }
            None => bins.push((file.size, vec![file.clone()])),
        }
    }
    bins.into_iter()
        .map(|(_, members)| members)
        .filter(|members| members.len() >= 2 || members.iter().any(purge))
        .collect()
}

/// Total input bytes a compaction with `options` would rewrite.
pub fn planned_bytes(table: &DeltaTable, options: &CompactOptions) -> Result<u64, MaintainError> {
    let groups = live_files_by_partition(table, &options.partition_filter)?;
    Ok(groups
        .values()
        .flat_map(|files| plan(files, options))
        .flatten()
        .map(|f| f.size)
        .sum())
}

/// Compacts `table`; see the module docs.
pub async fn compact(
    table: &mut DeltaTable,
    options: &CompactOptions,
    progress: Progress<'_>,
) -> Result<CompactMetrics, MaintainError> {
    let started = Instant::now();
    table.update_state().await?;
    let key = options
        .key_column
        .clone()
        .or_else(|| super::table_key(table));
    let groups = live_files_by_partition(table, &options.partition_filter)?;
    let mut metrics = CompactMetrics::default();
    let mut jobs = Vec::new();
    for (partition, files) in groups {
        let bins = plan(&files, options);
        if !bins.is_empty() {
            metrics.partitions += 1;
        }
        jobs.extend(bins.into_iter().map(|bin| (partition.clone(), bin)));
    }
    // Bins are written on parallel tasks (one Parquet encoder per core) and
    // committed one by one as they finish.
    let snapshot_table = table.clone();
    let mut written = futures::stream::iter(jobs.into_iter().map(move |(partition, bin)| {
        let (reader, options, key) = (snapshot_table.clone(), options.clone(), key.clone());
        AbortOnDrop(tokio::spawn(async move {
            let adds = write_bin(&reader, &bin, &options, key.as_deref()).await;
            (partition, bin, adds)
        }))
    }))
    .buffer_unordered(PARALLEL_BINS);
    let mut done = 0u64;
    while let Some(joined) = written.next().await {
        let (partition, bin, adds) =
            joined.map_err(|e| MaintainError::Invalid(format!("compaction task failed: {e}")))?;
        let bytes: u64 = bin.iter().map(|f| f.size).sum();
        match commit_bin(table, &bin, adds?, options).await? {
            BinOutcome::Committed {
                version,
                files_out,
                bytes_out,
            } => {
                metrics.bins_committed += 1;
                metrics.files_in += bin.len() as u64;
                metrics.bytes_in += bytes;
                metrics.files_out += files_out;
                metrics.bytes_out += bytes_out;
                metrics.versions.push(version);
                tracing::info!(
                    partition = %partition_label(&partition),
                    version,
                    files_in = bin.len(),
                    files_out,
                    "compacted bin"
                );
            }
            BinOutcome::Aborted(reason) => {
                metrics.bins_aborted += 1;
                tracing::warn!(partition = %partition_label(&partition), %reason, "compaction bin aborted");
            }
        }
        done += bytes;
        progress(done);
    }
    table.update_state().await?;
    metrics.seconds = started.elapsed().as_secs_f64();
    Ok(metrics)
}

enum BinOutcome {
    Committed {
        version: i64,
        files_out: u64,
        bytes_out: u64,
    },
    Aborted(String),
}

/// Writes a bin's rows into new files; returns their `add` actions.
async fn write_bin(
    table: &DeltaTable,
    bin: &[LiveFile],
    options: &CompactOptions,
    key: Option<&str>,
) -> Result<Vec<Add>, MaintainError> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let mut writer = RecordBatchWriter::for_table(table)?
        .with_writer_properties(writer_properties(key))
        .with_target_file_size(options.target_size);
    let mut batches = read_batches(table, bin.to_vec(), schema);
    while let Some(batch) = batches.recv().await {
        writer.write(batch?).await?;
    }
    let mut adds = writer.flush().await?;
    for add in &mut adds {
        add.data_change = false;
    }
    Ok(adds)
}

/// Commits a written bin (see [`commit_rewrite`]).
async fn commit_bin(
    table: &mut DeltaTable,
    bin: &[LiveFile],
    adds: Vec<Add>,
    options: &CompactOptions,
) -> Result<BinOutcome, MaintainError> {
    let files_out = adds.len() as u64;
    let bytes_out = adds.iter().map(|a| a.size as u64).sum();
    let actions: Vec<Action> = bin
        .iter()
        .map(|f| Action::Remove(f.remove.clone()))
        .chain(adds.into_iter().map(Action::Add))
        .collect();
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: options.target_size as i64,
    };
    let inputs: Vec<String> = bin.iter().map(|f| f.id()).collect();
    let info =
        serde_json::json!({"kind": "compact", "files_in": bin.len(), "files_out": files_out});
    Ok(
        match commit_rewrite(table, &inputs, actions, operation, info).await? {
            RewriteOutcome::Committed(version) => BinOutcome::Committed {
                version,
                files_out,
                bytes_out,
            },
            RewriteOutcome::Aborted(reason) => BinOutcome::Aborted(reason),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> LiveFile {
        let add = deltalake::kernel::Add {
            path: name.into(),
            size: size as i64,
            data_change: false,
            ..Default::default()
        };
        LiveFile {
            add,
            path: name.into(),
            location: name.into(),
            size,
            modified_ms: 0,
            rows: None,
            partition: Default::default(),
            tags: Default::default(),
            stats: None,
            remove: deltalake::kernel::Remove {
                path: name.into(),
                data_change: false,
                deletion_timestamp: None,
                extended_file_metadata: None,
                partition_values: None,
                size: Some(size as i64),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            },
        }
    }

    #[test]
    fn packs_small_files_and_leaves_big_ones_alone() {
        let options = CompactOptions {
            target_size: 100,
            min_file_size: 75,
            ..CompactOptions::default()
        };
        let files = vec![
            file("big", 90),
            file("a", 60),
            file("b", 30),
            file("c", 30),
            file("d", 10),
            file("lonely", 74),
        ];
        let bins = plan(&files, &options);
        let names: Vec<Vec<&str>> = bins
            .iter()
            .map(|b| b.iter().map(|f| f.path.as_str()).collect())
            .collect();
        // First fit, largest first: [lonely 74, d 10], [a 60, b 30], [c 30] (dropped: one file).
        assert_eq!(names, vec![vec!["lonely", "d"], vec!["a", "b"]]);
        assert!(bins
            .iter()
            .all(|b| b.iter().map(|f| f.size).sum::<u64>() <= 100));
    }

    #[test]
    fn files_with_many_deleted_rows_are_rewritten_even_alone() {
        let options = CompactOptions {
            target_size: 100,
            min_file_size: 75,
            ..CompactOptions::default()
        };
        let with_deleted = |name: &str, live: u64, deleted: i64| {
            let mut f = file(name, 90);
            f.rows = Some(live);
            f.add.deletion_vector = Some(deltalake::kernel::DeletionVectorDescriptor {
                storage_type: deltalake::kernel::StorageType::UuidRelativePath,
                path_or_inline_dv: "x".into(),
                offset: Some(1),
                size_in_bytes: 1,
                cardinality: deleted,
            });
            f
        };
        let files = vec![with_deleted("few", 990, 10), with_deleted("many", 800, 200)];
        let bins = plan(&files, &options);
        let names: Vec<Vec<&str>> = bins
            .iter()
            .map(|b| b.iter().map(|f| f.path.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["many"]]);
    }
}
