//! What a table holds and whether its ingestion lineage adds up.
//!
//! Files and sizes come from the current snapshot; recorded positions from
//! its `txn` actions; the lineage check walks every retained commit's
//! `commitInfo.sluice` entry per source partition: each commit must start
//! where the previous one ended (`prev` = previous `last`), and every commit's
//! counts must add up (`received = committed + dead_lettered + suppressed`).

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use serde::Serialize;
use url::Url;

use crate::table::lineage::{CommitLineage, MergeSummary, COMMIT_INFO_KEY};
use crate::table::{open, recorded_positions, TableError};

/// The status of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// Table URL.
    pub url: String,
    /// Current version.
    pub version: i64,
    /// Live data files.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Rows according to file statistics, less those deletion vectors hide.
    pub rows: u64,
    /// Rows deletion vectors hide: still in the files' bytes (readers
    /// skip them) until compaction rewrites those files.
    pub hidden_rows: u64,
    /// Files below the small-file threshold.
    pub small_files: u64,
    /// Time of the latest commit (RFC 3339).
    pub last_commit_time: Option<String>,
    /// Per source partition: position and lineage.
    pub partitions: Vec<PartitionStatus>,
    /// Top-level fields records held that the table did not have, with
    /// how many records held each, over the retained history (JSON).
    pub unknown_fields: BTreeMap<String, u64>,
    /// Where the registry holds the schema ids the partitions name
    /// (`subject vN`, by id), as recorded at ingestion.
    pub schemas: BTreeMap<u32, String>,
    /// A mirror table's merges over the retained history (none for
    /// append tables).
    pub merges: Option<MergeTotals>,
}

/// What a mirror table's merges did, summed over the retained history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MergeTotals {
    /// Merge commits.
    pub commits: u64,
    /// Their counts added up.
    #[serde(flatten)]
    pub sums: MergeSummary,
}

/// Position and lineage of one source partition.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PartitionStatus {
    /// The `txn` app id.
    pub app_id: String,
    /// Recorded position (the `txn` version).
    pub position: Option<i64>,
    /// Commits covering it in the retained history.
    pub commits: u64,
    /// Records received, summed over those commits.
    pub received: u64,
    /// Rows committed.
    pub committed: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Records suppressed because their key is under an erasure request.
    pub suppressed: u64,
    /// Records that hold no row by design (change-event tombstones).
    pub skipped: u64,
    /// Every commit starts where the previous one ended.
    pub contiguous: bool,
    /// Every commit's counts add up.
    pub counts_add_up: bool,
    /// `(expected prev, actual prev)` for each break in the chain.
    pub gaps: Vec<(Option<i64>, Option<i64>)>,
    /// Registry schema ids of the records committed (Avro with a registry).
    pub schema_ids: std::collections::BTreeSet<u32>,
    /// Registry schema ids whose records were dead-lettered.
    pub refused_schema_ids: std::collections::BTreeSet<u32>,
    /// Records lost to the stream's retention before they were read
    /// (Kinesis `on_trimmed = "skip"`), as the commits noted them.
    pub trimmed: Vec<String>,
}

/// Reads the status of the table at `url`.
pub async fn table_status(
    url: &Url,
    storage_options: &BTreeMap<String, String>,
    small_file_bytes: u64,
) -> Result<TableStatus, TableError> {
    let table = open(url, storage_options).await?;
    let history = history(url, &table).await?;
    status_of(url, &table, &history, small_file_bytes).await
}

/// The table's retained commits, oldest first.
pub async fn history(
    url: &Url,
    table: &deltalake::DeltaTable,
) -> Result<Vec<deltalake::kernel::CommitInfo>, TableError> {
    let mut history: Vec<_> =
        table
            .history(None)
            .try_collect()
            .await
            .map_err(|source| TableError::Delta {
                url: url.to_string(),
                source: Box::new(source),
            })?;
    history.reverse();
    Ok(history)
}

/// The status of an open `table` with its `history` (oldest first).
pub async fn status_of(
    url: &Url,
    table: &deltalake::DeltaTable,
    history: &[deltalake::kernel::CommitInfo],
    small_file_bytes: u64,
) -> Result<TableStatus, TableError> {
    let delta = |source| TableError::Delta {
        url: url.to_string(),
        source: Box::new(source),
    };
    let snapshot = table.snapshot().map_err(delta)?;
    let (mut files, mut bytes, mut rows, mut small) = (0u64, 0u64, 0u64, 0u64);
    let mut hidden_rows = 0u64;
    for file in snapshot.log_data().iter() {
        let size = file.size() as u64;
        files += 1;
        bytes += size;
        // Rows a deletion vector removes are not the table's.
        let deleted = file
            .deletion_vector_descriptor()
            .map_or(0, |dv| dv.cardinality.max(0) as u64);
        rows += (file.num_records().unwrap_or(0) as u64).saturating_sub(deleted);
        hidden_rows += deleted;
        if size < small_file_bytes {
            small += 1;
        }
    }
    let last_commit_time = history
        .last()
        .and_then(|c| c.timestamp)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339());

    let mut by_partition: BTreeMap<String, PartitionStatus> = BTreeMap::new();
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    let mut ordered: Vec<CommitLineage> = Vec::new();
    let mut unknown_fields: BTreeMap<String, u64> = BTreeMap::new();
    let mut schemas: BTreeMap<u32, String> = BTreeMap::new();
    for commit in history {
        if let Some(value) = commit.info.get(COMMIT_INFO_KEY) {
            if let Ok(lineage) = serde_json::from_value::<CommitLineage>(value.clone()) {
                ordered.push(lineage);
            }
        }
    }
    let mut merges: Option<MergeTotals> = None;
    for lineage in ordered {
        if let Some(merge) = &lineage.merge {
            let totals = merges.get_or_insert_with(MergeTotals::default);
            totals.commits += 1;
            totals.sums.absorb(merge);
        }
        for (field, count) in &lineage.unknown_fields {
            *unknown_fields.entry(field.clone()).or_insert(0) += count;
        }
        schemas.extend(lineage.schemas);
        for range in lineage.partitions {
            let entry =
                by_partition
                    .entry(range.app_id.clone())
                    .or_insert_with(|| PartitionStatus {
                        app_id: range.app_id.clone(),
                        contiguous: true,
                        counts_add_up: true,
                        ..Default::default()
                    });
            if let Some(previous) = last_seen.get(&range.app_id) {
                if range.prev != Some(*previous) {
                    entry.contiguous = false;
                    entry.gaps.push((Some(*previous), range.prev));
                }
            }
            last_seen.insert(range.app_id.clone(), range.last);
            entry.commits += 1;
            entry.received += range.received;
            entry.committed += range.committed;
            entry.dead_lettered += range.dead_lettered;
            entry.suppressed += range.suppressed;
            entry.schema_ids.extend(&range.schema_ids);
            entry.refused_schema_ids.extend(&range.refused_schema_ids);
            if !range.trimmed.is_empty() {
                entry.contiguous = false;
                entry.trimmed.extend(range.trimmed.iter().cloned());
            }
            entry.skipped += range.skipped;
            if range.received
                != range.committed + range.dead_lettered + range.suppressed + range.skipped
            {
                entry.counts_add_up = false;
            }
        }
    }
    let app_ids: Vec<String> = by_partition.keys().cloned().collect();
    let positions = recorded_positions(table, &app_ids).await.map_err(delta)?;
    for (app_id, status) in by_partition.iter_mut() {
        status.position = positions.get(app_id).copied();
        if status.position != last_seen.get(app_id).copied() {
            status.contiguous = false;
            status
                .gaps
                .push((last_seen.get(app_id).copied(), status.position));
        }
    }
    Ok(TableStatus {
        url: url.to_string(),
        version: snapshot.version() as i64,
        files,
        bytes,
        rows,
        hidden_rows,
        small_files: small,
        last_commit_time,
        partitions: by_partition.into_values().collect(),
        unknown_fields,
        schemas,
        merges,
    })
}
