//! One file's part of a mirror merge (see [`super::mirror`]): its rows
//! the batch replaces are marked in its deletion vector, or the file is
//! streamed into a new one without them (copy-on-write), and partial
//! updates are folded onto the rows it holds.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
#[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use roaring::RoaringTreemap;

use super::mirror::{applies, order_at, string_column, KeyColumns, MergeError, RowKey};
use super::mirror_patch::{Patches, Source};
use crate::decode::debezium::ORDER_COLUMN;
use crate::erase::find::Candidate;
use crate::erase::keys::KeyKind;
use crate::maintain::files::{with_partition_columns, LiveFile};
use crate::table::deletion_vectors::{self, LiveRows};
use crate::table::writer::TableWriter;

/// Output size of a rewritten file (one input file gives one output file).
const REWRITE_TARGET_SIZE: u64 = 1 << 30;

/// Opens a merge's file writers: the table's schema, or the one it grows
/// to with the merge's commit.
#[derive(Clone)]
pub(super) struct Writers {
    pub(super) table: DeltaTable,
    pub(super) grown: Option<SchemaRef>,
    pub(super) storage_options: std::collections::BTreeMap<String, String>,
    pub(super) bloom_column: String,
}

impl Writers {
    pub(super) fn open(&self, target_file_size: u64) -> Result<TableWriter, DeltaTableError> {
        let key = Some(self.bloom_column.as_str());
        let writer = match &self.grown {
            None => TableWriter::new(&self.table, key, target_file_size)?,
            Some(schema) => TableWriter::with_schema(
                &self.table,
                &self.storage_options,
                schema.clone(),
                key,
                target_file_size,
            )?,
        };
        Ok(writer.at_merge_level())
    }

    /// `batch` (read in the table's schema) in the schema files are written in.
    pub(super) fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, MergeError> {
        match &self.grown {
            Some(grown) => Ok(crate::table::schema::widen(&batch, grown)?),
            None => Ok(batch),
        }
    }
}

/// What rewriting files needs, shared by the rewrite tasks.
pub(super) struct RewriteJob {
    pub(super) table: DeltaTable,
    pub(super) schema: SchemaRef,
    pub(super) keys: Vec<(String, KeyKind)>,
    pub(super) writers: Writers,
    /// The batch's keys with the position of each one's winning mutation.
    pub(super) incoming: Arc<HashMap<RowKey, Option<String>>>,
    /// The mutations of keys with a partial update.
    pub(super) patches: Option<Arc<Patches>>,
    /// Whether replaced rows are marked in a deletion vector instead of
    /// the file being rewritten.
    pub(super) marking: bool,
}

/// One file's part of a merge.
pub(super) struct FileMerge {
    pub(super) file: LiveFile,
    pub(super) adds: Vec<Add>,
    pub(super) removed: u64,
    pub(super) stale: Vec<RowKey>,
    /// Keys with a partial update whose mutations were folded onto the row here.
    pub(super) resolved: Vec<RowKey>,
    /// Rows written from those folds.
    pub(super) upserted: u64,
    /// Of those keys, the ones that ended deleted.
    pub(super) deleted: u64,
    /// Partial updates that came after a delete of their key.
    pub(super) unmatched: u64,
    /// When marking: every row the file's new deletion vector removes.
    pub(super) vector: Option<RoaringTreemap>,
    /// When marking: rows folded from partial updates, to append.
    pub(super) folded: Vec<RecordBatch>,
}

impl RewriteJob {
    /// Streams `candidate` into a new file without the rows the batch
    /// replaces, or when marking, reads its key and position columns and
    /// marks those rows in its deletion vector; `removed == 0` (nothing
    /// written) when every key it holds is stale.
    pub(super) async fn rewrite(&self, candidate: Candidate) -> Result<FileMerge, MergeError> {
        let Candidate { file, sets } = candidate;
        let first = &sets[0];
        let store = self.table.object_store();
        let held = match file.deletion_vector() {
            Some(dv) => deletion_vectors::read(&store, self.table.table_url(), dv).await?,
            None => RoaringTreemap::new(),
        };
        let mut live = LiveRows::except(held.clone());
        #[allow(deprecated)] // as above
        let reader =
            ParquetObjectReader::new(store, file.location.clone()).with_file_size(file.size);
        let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        if self.marking && self.patches.is_none() {
            // Only the key and position columns decide which rows go.
            let wanted: Vec<&str> = self
                .keys
                .iter()
                .map(|(name, _)| name.as_str())
                .chain([ORDER_COLUMN])
                .collect();
            let mask = ProjectionMask::columns(builder.parquet_schema(), wanted);
            builder = builder.with_projection(mask);
        }
        // Profiled like ingestion's files: columns whose values barely
        // repeat go without a dictionary.
        let mut writer = match self.marking {
            true => None,
            false => Some(self.writers.open(REWRITE_TARGET_SIZE)?),
        };
        let mut stream = builder.with_batch_size(8192).build()?;
        let mut merge = FileMerge {
            file: file.clone(),
            adds: Vec::new(),
            removed: 0,
            stale: Vec::new(),
            resolved: Vec::new(),
            upserted: 0,
            deleted: 0,
            unmatched: 0,
            vector: self.marking.then(|| held.clone()),
            folded: Vec::new(),
        };
        let mut offset = 0u64;
        while let Some(batch) = stream.try_next().await? {
            let rows = batch.num_rows();
            let batch = with_partition_columns(batch, &self.schema, &file.partition)?;
            let alive = live.mask(rows);
            let column = batch.column_by_name(first.column()).ok_or_else(|| {
                MergeError::Key(first.column().into(), "missing from a file".into())
            })?;
            let hits = first.matches(column.as_ref())?;
            let mut keep: Vec<bool> = match &alive {
                Some(alive) => alive.iter().map(|v| v == Some(true)).collect(),
                None => vec![true; rows],
            };
            let mut folded: Vec<Vec<Source>> = Vec::new();
            if hits.true_count() > 0 {
                let columns = KeyColumns::of(&batch, &self.keys)?;
                let orders = string_column(&batch, ORDER_COLUMN);
                for (row, hit) in hits.iter().enumerate() {
                    if hit != Some(true) || !keep[row] {
                        continue; // not a batch key, or a row a deletion vector removed
                    }
                    let Some(key) = columns.key_at(row) else {
                        continue;
                    };
                    let Some(incoming) = self.incoming.get(&key) else {
                        continue; // another column of a composite key differs
                    };
                    if let Some((patches, chain)) = self
                        .patches
                        .as_ref()
                        .and_then(|p| Some((p, p.chain(&key)?)))
                    {
                        let after = patches.after(chain, order_at(orders.as_ref(), row));
                        if after.is_empty() {
                            merge.stale.push(key);
                            continue;
                        }
                        keep[row] = false;
                        let fold = patches.fold(Some(row), &after);
                        merge.unmatched += fold.unmatched;
                        match fold.row {
                            Some(sources) => {
                                merge.upserted += 1;
                                folded.push(sources);
                            }
                            None if fold.deleted => merge.deleted += 1,
                            None => {}
                        }
                        merge.resolved.push(key);
                    } else if applies(order_at(orders.as_ref(), row), incoming.as_deref()) {
                        keep[row] = false;
                    } else {
                        merge.stale.push(key);
                        continue;
                    }
                    merge.removed += 1;
                    if let Some(vector) = merge.vector.as_mut() {
                        vector.insert(offset + row as u64);
                    }
                }
            }
            offset += rows as u64;
            let built = match (&self.patches, folded.is_empty()) {
                (Some(patches), false) => {
                    let held = self.writers.conform(batch.clone())?;
                    Some(patches.build(Some(&held), &folded)?)
                }
                _ => None,
            };
            let Some(writer) = writer.as_mut() else {
                merge.folded.extend(built);
                continue;
            };
            let kept = match keep.iter().all(|k| *k) {
                true => batch,
                false => arrow::compute::filter_record_batch(
                    &batch,
                    &arrow::array::BooleanArray::from(keep),
                )?,
            };
            if kept.num_rows() > 0 {
                writer.write(self.writers.conform(kept)?).await?;
            }
            if let Some(built) = built {
                writer.write(built).await?;
            }
        }
        if let Some(mut writer) = writer {
            // A file whose only change is dropping rows a deletion vector
            // removed is left as it is.
            match merge.removed {
                0 => writer.abort(),
                _ => merge.adds = writer.finish().await?,
            }
        }
        Ok(merge)
    }
}
