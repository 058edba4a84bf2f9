//! Mirror tables (`mode = "mirror"`): one row per primary key, the latest
//! image of the source table's row, kept by merging each micro-batch of
//! change events in one commit.
//!
//! A flush merges the batch's mutations:
//!
//! 1. **Collapse.** Per primary key, the mutation that comes last in the
//!    source's log wins (`cdc_order`; arrival order when a mutation has no
//!    position). A key with a MongoDB partial update keeps all its
//!    mutations instead: they are folded onto the row it holds in step 3
//!    (or onto an insert of the batch in step 4; see
//!    `mirror_patch`).
//! 2. **Find.** The files that hold a batch key are found the way erasure
//!    finds a subject's rows ([`crate::erase::find`]): min/max statistics on
//!    the first key column, then each row group's bloom filter, then that
//!    column alone (when marking, step 3 reads it with `cdc_order`
//!    instead). Nothing else of the table is read.
//! 3. **Mark or rewrite.** In each file that holds a key, the rows the
//!    batch replaces or deletes are marked in the file's deletion vector
//!    (only the key and `cdc_order` columns are read; see
//!    [`crate::table::deletion_vectors`]), or, on a table without the
//!    feature or with `deletion_vectors = false`, the file is streamed into
//!    a new one without them. Rows an earlier vector hides are not
//!    matched. A row whose applied position (`cdc_order`) is at or after
//!    the batch's mutation for its key stays, and that mutation is dropped
//!    as stale: a replayed or out-of-order change (Debezium delivers at
//!    least once) changes nothing.
//! 4. **Append.** The winning images of inserts, updates and snapshot reads
//!    that are not stale go into new files; deletes add nothing.
//!
//! The pipeline commits the removes and adds (a marked file is removed
//! with its old vector and added back with the new one) with the batch's
//! `txn` positions in one commit, which lands only while every file it
//! rewrote or marked is still live with the vector it read (see
//! [`crate::table::commit`]); when a compaction, Z-order
//! or erasure removed one meanwhile, the merge is planned again on the new
//! version. A crash before the commit leaves only orphan files (vacuum
//! removes them) and the batch is read again from the table's positions; a
//! crash after it finds the positions recorded. Either way nothing is
//! applied twice.
//!
//! Cost: a batch reads the key columns of every file holding one of its
//! keys; marking then writes a few kilobytes per file, copy-on-write
//! rewrites each of them. Z-ordering by the primary key (the default for
//! mirror tables) keeps a key range in few files, so a batch of clustered
//! keys touches few; keys spread over the whole key space touch up to
//! every file. Readers skip marked rows until compaction drops them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use deltalake::kernel::{Action, Add};
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;
use object_store::ObjectStoreExt as _;

use super::mirror_file::{RewriteJob, Writers};
use super::mirror_patch::{Patches, Source};
use crate::decode::debezium::ORDER_COLUMN;
use crate::erase::find::{bloom_screen, confirm, stat_at, Candidate};
use crate::erase::keys::{KeyKind, KeySet, KeyValue, MatchSource};
use crate::maintain::files::{live_files_by_partition, LiveFile};
use crate::table::deletion_vectors::{self, VectorFile};
use crate::table::lineage::MergeSummary;

/// Candidate files confirmed at once (bloom filter and key column reads: mostly I/O).
const PARALLEL_CONFIRMS: usize = 8;
/// Files rewritten at once (one Parquet encoder per core).
const PARALLEL_FILES: usize = 2;

/// Why a merge could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading the table or writing files failed.
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
    /// Arrow could not handle the rows.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A Parquet file could not be read.
    #[error(transparent)]
    Parquet(#[from] deltalake::parquet::errors::ParquetError),
    /// Finding the files that hold the keys failed.
    #[error("finding the batch's keys: {0}")]
    Find(String),
    /// A crash injected before the commit (tests).
    #[error("injected crash before the merge's commit")]
    Injected,
    /// The table lacks a primary-key column of a usable type.
    #[error("primary key column `{0}`: {1}")]
    Key(String, String),
}

/// A planned merge: its actions, and the files that must still be live
/// for it to commit.
pub struct MergePlan {
    /// Removes of the rewritten files, adds of their replacements and of the appended rows.
    pub actions: Vec<Action>,
    /// The rewritten or marked files, by [`LiveFile::id`].
    pub inputs: Vec<String>,
    /// What it does.
    pub summary: MergeSummary,
    /// Paths of files that stay, with a new deletion vector.
    pub marked: HashSet<String>,
    /// The file holding the new deletion vectors, if any.
    pub vectors: Option<deltalake::Path>,
}

impl MergePlan {
    /// The data files it wrote (orphans once the plan is dropped).
    pub fn written(&self) -> impl Iterator<Item = &Add> {
        self.actions.iter().filter_map(|a| match a {
            Action::Add(add) if !self.marked.contains(&add.path) => Some(add),
            _ => None,
        })
    }
}

/// The open batch of a mirror table.
pub struct Mirror {
    key: Vec<String>,
    bloom_column: String,
    target_file_size: u64,
    storage_options: std::collections::BTreeMap<String, String>,
    pending: Vec<RecordBatch>,
    /// The declared image columns (a partial update may leave them unset).
    image: HashSet<String>,
    /// Whether to mark replaced rows in deletion vectors when the table has them.
    marks: bool,
}

impl Mirror {
    /// A mirror keyed by `key`, writing files with a bloom filter on
    /// `bloom_column` (the table's subject key).
    pub fn new(
        key: Vec<String>,
        bloom_column: String,
        target_file_size: u64,
        storage_options: std::collections::BTreeMap<String, String>,
    ) -> Self {
        Self {
            key,
            bloom_column,
            target_file_size,
            storage_options,
            pending: Vec::new(),
            image: HashSet::new(),
            marks: true,
        }
    }

    /// Whether merges mark replaced rows in deletion vectors (when the
    /// table has the feature; the default) or rewrite the files (`false`).
    pub fn with_deletion_vectors(mut self, marks: bool) -> Self {
        self.marks = marks;
        self
    }

    /// With the table's declared image columns, which partial updates
    /// (MongoDB `patch`) may leave unset (see `mirror_patch`).
    pub fn with_image(mut self, columns: &[String]) -> Self {
        self.image = columns.iter().cloned().collect();
        self
    }

    /// Adds decoded mutations, in arrival order.
    pub fn push(&mut self, batch: RecordBatch) {
        self.pending.push(batch);
    }

    /// Forgets the batch (committed or dropped).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Plans the batch's merge into `table` and writes its files; with
    /// `grown`, in the schema the table grows to with this commit.
    pub async fn plan(
        &self,
        table: &DeltaTable,
        grown: Option<&SchemaRef>,
    ) -> Result<MergePlan, MergeError> {
        let mut summary = MergeSummary::default();
        let Some(first) = self.pending.first() else {
            return Ok(MergePlan {
                actions: Vec::new(),
                inputs: Vec::new(),
                summary,
                marked: HashSet::new(),
                vectors: None,
            });
        };
        let schema = table.snapshot()?.snapshot().arrow_schema();
        // Rows decoded before the schema grew lack its new columns.
        let widest = grown.cloned().unwrap_or_else(|| first.schema());
        let pending = self
            .pending
            .iter()
            .map(|b| {
                match crate::table::schema::adds_fields(b.schema().fields(), widest.fields()) {
                    true => crate::table::schema::widen(b, &widest),
                    false => Ok(b.clone()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = arrow::compute::concat_batches(&widest, &pending)?;
        summary.mutations = batch.num_rows() as u64;
        let writers = Writers {
            table: table.clone(),
            grown: grown.cloned(),
            storage_options: self.storage_options.clone(),
            bloom_column: self.bloom_column.clone(),
        };
        let keys = KeyColumns::kinds(&schema, &self.key)?;

        // 1. Collapse: the last mutation of each key wins.
        let columns = KeyColumns::of(&batch, &keys)?;
        let orders = string_column(&batch, ORDER_COLUMN);
        let mut winners: HashMap<RowKey, u32> = HashMap::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let Some(key) = columns.key_at(row) else {
                continue; // the decoder refuses events without their key
            };
            match winners.entry(key) {
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(row as u32);
                }
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    let held = order_at(orders.as_ref(), *entry.get() as usize);
                    if applies(held, order_at(orders.as_ref(), row)) {
                        entry.insert(row as u32);
                    }
                }
            }
        }
        summary.keys = winners.len() as u64;
        let patches = Patches::of(&batch, &columns, &self.image).map(Arc::new);
        let incoming: Arc<HashMap<RowKey, Option<String>>> = Arc::new(
            winners
                .iter()
                .map(|(k, row)| {
                    (
                        k.clone(),
                        order_at(orders.as_ref(), *row as usize).map(str::to_owned),
                    )
                })
                .collect(),
        );

        // 2. Find the files that hold a key.
        let mut first_keys = KeySet::new(&self.key[0], keys[0].1);
        for key in winners.keys() {
            first_keys.insert(key.0[0].clone());
        }
        let candidates: Vec<Candidate> = live_files_by_partition(table, &[])?
            .into_values()
            .flatten()
            .filter_map(|file| in_range(file, &first_keys))
            .collect();
        summary.files_in_range = candidates.len() as u64;
        let store = table.object_store();
        // Marking reads the key column of each file next anyway: only the
        // bloom filters screen the candidates first.
        let marking = self.marks && deletion_vectors::enabled(table);
        let mut confirms = futures::stream::iter(candidates.into_iter().map(|c| {
            let (store, column) = (store.clone(), self.key[0].clone());
            tokio::spawn(async move {
                match marking {
                    true => bloom_screen(store, c, &column)
                        .await
                        .map(|found| (found.is_some(), found)),
                    false => confirm(store, c, Some(&column), MatchSource::Column).await,
                }
            })
        }))
        .buffer_unordered(PARALLEL_CONFIRMS);
        let mut holding: Vec<Candidate> = Vec::new();
        while let Some(joined) = confirms.next().await {
            let (read, found) = joined
                .map_err(|e| MergeError::Find(format!("task failed: {e}")))?
                .map_err(|e| MergeError::Find(e.to_string()))?;
            summary.files_read += u64::from(read);
            holding.extend(found);
        }
        drop(confirms);

        // 3. Mark or rewrite them without the rows the batch replaces.
        let job = Arc::new(RewriteJob {
            table: table.clone(),
            schema: schema.clone(),
            keys: keys.clone(),
            writers: writers.clone(),
            incoming,
            patches: patches.clone(),
            marking,
        });
        let mut rewrites = futures::stream::iter(holding.into_iter().map(|c| {
            let job = job.clone();
            tokio::spawn(async move { job.rewrite(c).await })
        }))
        .buffer_unordered(if marking {
            PARALLEL_CONFIRMS
        } else {
            PARALLEL_FILES
        });
        let mut vectors = VectorFile::new();
        let mut marked = HashSet::new();
        let mut extra: Vec<RecordBatch> = Vec::new();
        let mut stale: HashSet<RowKey> = HashSet::new();
        let mut resolved: HashSet<RowKey> = HashSet::new();
        let mut actions = Vec::new();
        let mut inputs = Vec::new();
        let now_ms = chrono::Utc::now().timestamp_millis();
        while let Some(joined) = rewrites.next().await {
            let merged = joined.map_err(|e| MergeError::Find(format!("task failed: {e}")))??;
            stale.extend(merged.stale);
            resolved.extend(merged.resolved);
            summary.upserted += merged.upserted;
            summary.deleted += merged.deleted;
            summary.unmatched += merged.unmatched;
            extra.extend(merged.folded);
            if merged.removed == 0 {
                continue;
            }
            summary.removed += merged.removed;
            let mut remove = merged.file.remove.clone();
            remove.data_change = true;
            remove.deletion_timestamp = Some(now_ms);
            inputs.push(merged.file.id());
            actions.push(Action::Remove(remove));
            match merged.vector {
                Some(rows) => {
                    summary.files_marked += 1;
                    let mut add = merged.file.add.clone();
                    add.deletion_vector = Some(vectors.add(&rows)?);
                    add.stats = deletion_vectors::wide_stats(add.stats.as_deref()).or(add.stats);
                    add.data_change = true;
                    marked.insert(add.path.clone());
                    actions.push(Action::Add(add));
                }
                None => {
                    summary.files_rewritten += 1;
                    summary.bytes_rewritten += merged.file.size;
                    actions.extend(merged.adds.into_iter().map(Action::Add));
                }
            }
        }
        drop(rewrites);
        let vectors = vectors.put(&table.object_store()).await?;
        summary.stale = stale.len() as u64;

        // 4. Append the latest images.
        let ops = string_column(&batch, "cdc_op");
        let mut rows: Vec<u32> = Vec::with_capacity(winners.len());
        let mut folded: Vec<Vec<Source>> = Vec::new();
        for (key, row) in winners {
            if stale.contains(&key) || resolved.contains(&key) {
                continue;
            }
            if let Some(chain) = patches.as_ref().and_then(|p| Some((p, p.chain(&key)?))) {
                // The key has no row in the table: fold onto nothing.
                let (patches, chain) = chain;
                let fold = patches.fold(None, chain);
                summary.unmatched += fold.unmatched;
                match fold.row {
                    Some(sources) => folded.push(sources),
                    None if fold.deleted => summary.deleted += 1,
                    None => {}
                }
                continue;
            }
            if ops.as_ref().is_some_and(|o| o.value(row as usize) == "d") {
                summary.deleted += 1;
            } else {
                rows.push(row);
            }
        }
        rows.sort_unstable();
        summary.upserted += (rows.len() + folded.len()) as u64;
        if summary.unmatched > 0 {
            tracing::warn!(
                unmatched = summary.unmatched,
                "partial updates with no row to apply to (the key is not in the table, or was deleted earlier in the batch) were not applied"
            );
        }
        if !rows.is_empty() || !folded.is_empty() || !extra.is_empty() {
            let indices = UInt32Array::from(rows);
            let columns = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c, &indices, None))
                .collect::<Result<Vec<_>, _>>()?;
            let images = RecordBatch::try_new(batch.schema(), columns)?;
            let mut writer = writers.open(self.target_file_size)?;
            if images.num_rows() > 0 {
                writer.write(images).await?;
            }
            if let (Some(patches), false) = (&patches, folded.is_empty()) {
                writer.write(patches.build(None, &folded)?).await?;
            }
            for batch in extra {
                writer.write(batch).await?;
            }
            actions.extend(writer.finish().await?.into_iter().map(Action::Add));
        }
        Ok(MergePlan {
            actions,
            inputs,
            summary,
            marked,
            vectors,
        })
    }
}

/// Tables whose next merge stops after writing its files, before its
/// commit, as a crash there would. For tests.
static CRASHES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Makes the next merge of `table` fail between writing its files and
/// committing them. For tests.
#[doc(hidden)]
pub fn crash_before_next_commit(table: &str) {
    CRASHES.lock().expect("crash lock").push(table.to_string());
}

/// Whether a crash was asked for before this merge's commit (once).
pub(crate) fn injected_crash(table: &str) -> bool {
    let mut crashes = CRASHES.lock().expect("crash lock");
    let found = crashes.iter().position(|t| t == table);
    found.map(|i| crashes.remove(i)).is_some()
}

/// Deletes the files a plan wrote that will not be committed (best effort:
/// vacuum removes any left).
pub async fn discard(table: &DeltaTable, plan: &MergePlan) {
    let store = table.object_store();
    let written = plan
        .written()
        .map(|add| deltalake::Path::from(add.path.as_str()));
    for path in written.chain(plan.vectors.clone()) {
        if let Err(error) = store.delete(&path).await {
            tracing::debug!(%path, %error, "could not delete an uncommitted merge file");
        }
    }
}

/// Whether a mutation at `incoming` replaces what is held at `held`: a
/// later position does; an equal or earlier one is a replay. Without both
/// positions the later arrival wins.
pub(super) fn applies(held: Option<&str>, incoming: Option<&str>) -> bool {
    match (held, incoming) {
        (Some(held), Some(incoming)) => incoming > held,
        _ => true,
    }
}

pub(super) fn string_column(batch: &RecordBatch, name: &str) -> Option<StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>().cloned())
}

pub(super) fn order_at(orders: Option<&StringArray>, row: usize) -> Option<&str> {
    orders.and_then(|o| o.is_valid(row).then(|| o.value(row)))
}

/// A row's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct RowKey(Vec<KeyValue>);

/// The primary-key columns of a batch, cast once.
pub(super) struct KeyColumns(Vec<KeyArray>);

enum KeyArray {
    Int(Int64Array),
    Str(StringArray),
}

impl KeyColumns {
    /// The kind of each key column in `schema`.
    fn kinds(schema: &SchemaRef, key: &[String]) -> Result<Vec<(String, KeyKind)>, MergeError> {
        key.iter()
            .map(|name| {
                let field = schema.field_with_name(name).map_err(|_| {
                    MergeError::Key(name.clone(), "not a column of the table".into())
                })?;
                let kind = KeyKind::of(field.data_type()).ok_or_else(|| {
                    MergeError::Key(
                        name.clone(),
                        format!("type {} is not a key type", field.data_type()),
                    )
                })?;
                Ok((name.clone(), kind))
            })
            .collect()
    }

    pub(super) fn of(batch: &RecordBatch, keys: &[(String, KeyKind)]) -> Result<Self, MergeError> {
        let arrays = keys
            .iter()
            .map(|(name, kind)| {
                let column = batch
                    .column_by_name(name)
                    .ok_or_else(|| MergeError::Key(name.clone(), "missing from the rows".into()))?;
                Ok(match kind {
                    KeyKind::Int => KeyArray::Int(
                        arrow::compute::cast(column, &DataType::Int64)?
                            .as_primitive::<arrow::datatypes::Int64Type>()
                            .clone(),
                    ),
                    KeyKind::Str => KeyArray::Str(
                        arrow::compute::cast(column, &DataType::Utf8)?
                            .as_string::<i32>()
                            .clone(),
                    ),
                })
            })
            .collect::<Result<Vec<_>, MergeError>>()?;
        Ok(Self(arrays))
    }

    pub(super) fn key_at(&self, row: usize) -> Option<RowKey> {
        self.0
            .iter()
            .map(|array| match array {
                KeyArray::Int(a) => a.is_valid(row).then(|| KeyValue::Int(a.value(row))),
                KeyArray::Str(a) => a
                    .is_valid(row)
                    .then(|| KeyValue::Str(a.value(row).to_string())),
            })
            .collect::<Option<Vec<_>>>()
            .map(RowKey)
    }
}

/// `file` with the batch keys its statistics admit, if any.
fn in_range(file: LiveFile, keys: &KeySet) -> Option<Candidate> {
    let stats: serde_json::Value = file
        .stats
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let found = keys.in_range(
        stats
            .get("minValues")
            .and_then(|m| stat_at(m, keys.column())),
        stats
            .get("maxValues")
            .and_then(|m| stat_at(m, keys.column())),
    );
    if found.is_empty() {
        return None;
    }
    let mut set = KeySet::new(keys.column(), keys.kind());
    for value in found {
        set.insert(value);
    }
    Some(Candidate {
        file,
        sets: vec![set],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_position_applies_and_a_replay_does_not() {
        assert!(applies(Some("0001"), Some("0002")));
        assert!(!applies(Some("0002"), Some("0002")));
        assert!(!applies(Some("0003"), Some("0002")));
        // Without positions the later arrival wins.
        assert!(applies(None, Some("0001")));
        assert!(applies(Some("0001"), None));
    }
}
