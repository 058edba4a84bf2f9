//! The live files of a table, grouped by partition, as maintenance plans them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::{Add, DeletionVectorDescriptor, Remove};
use deltalake::{DeltaTable, DeltaTableError, Path};

use crate::table::deletion_vectors::LiveRows;

/// One live data file.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// Path relative to the table root, as in the log.
    pub path: String,
    /// Object-store path.
    pub location: Path,
    /// Size in bytes.
    pub size: u64,
    /// When it was written (ms since the epoch).
    pub modified_ms: i64,
    /// Live rows (from stats, less those its deletion vector removes), if known.
    pub rows: Option<u64>,
    /// Partition values as strings (`None`: null).
    pub partition: BTreeMap<String, Option<String>>,
    /// `add.tags`.
    pub tags: HashMap<String, Option<String>>,
    /// `add.stats` (JSON), if written.
    pub stats: Option<String>,
    /// The `remove` action that retires it without changing data.
    pub remove: Remove,
    /// The `add` action that made it live (with its deletion vector, if any).
    pub add: Add,
}

impl LiveFile {
    /// Its deletion vector, if a commit marked some of its rows removed.
    pub fn deletion_vector(&self) -> Option<&DeletionVectorDescriptor> {
        self.add.deletion_vector.as_ref()
    }

    /// Its identity for the rewrite-safety rule (see [`crate::table::commit::file_id`]).
    pub fn id(&self) -> String {
        crate::table::commit::file_id(&self.path, self.deletion_vector())
    }

    /// Rows its deletion vector removes.
    pub fn deleted_rows(&self) -> u64 {
        self.deletion_vector()
            .map_or(0, |dv| dv.cardinality.max(0) as u64)
    }

    /// Share of its rows its deletion vector removes (0 without one).
    pub fn deleted_share(&self) -> f64 {
        let deleted = self.deleted_rows();
        match (deleted, self.rows) {
            (0, _) => 0.0,
            (deleted, Some(live)) => deleted as f64 / (live + deleted).max(1) as f64,
            (_, None) => 1.0,
        }
    }
}

/// Partition values, as a sortable key.
pub type PartitionKey = Vec<(String, Option<String>)>;

/// Renders a partition key as `a=1/b=x` (or `(unpartitioned)`).
pub fn partition_label(key: &PartitionKey) -> String {
    if key.is_empty() {
        return "(unpartitioned)".into();
    }
    key.iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("null")))
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses `--partition date=2024-05-01` filters.
pub fn parse_partition_filter(filters: &[String]) -> Result<Vec<(String, String)>, String> {
    filters
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("partition filter `{f}` is not of the form column=value"))
        })
        .collect()
}

/// Live files grouped by partition, filtered by `filter` (all must match).
pub fn live_files_by_partition(
    table: &DeltaTable,
    filter: &[(String, String)],
) -> Result<BTreeMap<PartitionKey, Vec<LiveFile>>, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    for (column, _) in filter {
        if !partition_columns.contains(column) {
            return Err(DeltaTableError::Generic(format!(
                "`{column}` is not a partition column (partition columns: {partition_columns:?})"
            )));
        }
    }
    let mut groups: BTreeMap<PartitionKey, Vec<LiveFile>> = BTreeMap::new();
    for view in snapshot.log_data().iter() {
        let values = view.partition_values_map();
        let key: PartitionKey = partition_columns
            .iter()
            .map(|c| (c.clone(), values.get(c).cloned().flatten()))
            .collect();
        let matches = filter.iter().all(|(column, wanted)| {
            key.iter()
                .any(|(c, v)| c == column && v.as_deref() == Some(wanted.as_str()))
        });
        if !matches {
            continue;
        }
        // Tags are only exposed through the `Add` conversion.
        #[allow(deprecated)]
        let add = view.add_action();
        let deleted = add
            .deletion_vector
            .as_ref()
            .map_or(0, |dv| dv.cardinality.max(0) as u64);
        groups.entry(key.clone()).or_default().push(LiveFile {
            path: view.path().to_string(),
            location: view.object_store_path(),
            size: view.size() as u64,
            modified_ms: view.modification_time(),
            rows: view
                .num_records()
                .map(|n| (n as u64).saturating_sub(deleted)),
            partition: key.into_iter().collect(),
            tags: add.tags.clone().unwrap_or_default(),
            stats: view.stats(),
            remove: view.remove_action(false),
            add,
        });
    }
    Ok(groups)
}

/// Adds the partition columns (constant per file) back to a batch read from a
/// data file, so it matches the table schema.
pub fn with_partition_columns(
    batch: RecordBatch,
    table_schema: &SchemaRef,
    partition: &BTreeMap<String, Option<String>>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(table_schema.fields().len());
    for field in table_schema.fields() {
        if let Some(column) = batch.column_by_name(field.name()) {
            columns.push(column.clone());
        } else if let Some(value) = partition.get(field.name()) {
            let column: ArrayRef = match value {
                Some(text) => {
                    let strings: ArrayRef = Arc::new(StringArray::from(vec![text.as_str(); rows]));
                    arrow::compute::cast(&strings, field.data_type())?
                }
                None => new_null_array(field.data_type(), rows),
            };
            columns.push(column);
        } else {
            columns.push(new_null_array(field.data_type(), rows));
        }
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(
        table_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, columns)
}

/// Input files below this size are read whole, several at a time.
const PREFETCH_MAX_BYTES: u64 = 4 << 20;
/// Small files read at once.
const PREFETCH_FILES: usize = 3;

async fn read_file(
    store: Arc<dyn deltalake::ObjectStore>,
    root: &url::Url,
    file: &LiveFile,
    schema: &SchemaRef,
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch, super::MaintainError>>,
) -> Result<(), super::MaintainError> {
    use futures::TryStreamExt;
    let mut live = LiveRows::of(&store, root, file.deletion_vector()).await?;
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader = deltalake::parquet::arrow::async_reader::ParquetObjectReader::new(
        store,
        file.location.clone(),
    )
    .with_file_size(file.size);
    let mut stream =
        deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .with_batch_size(8192)
            .build()?;
    while let Some(batch) = stream.try_next().await? {
        let batch = with_partition_columns(live.filter(batch)?, schema, &file.partition)?;
        if batch.num_rows() == 0 {
            continue;
        }
        if tx.send(Ok(batch)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Reads the live rows of `table`'s `files` (with their partition columns,
/// without the rows their deletion vectors remove) on background
/// tasks, in no particular order, so decoding overlaps with the caller's
/// writing. Small files are read a few at a time; large ones one by one,
/// streamed batch by batch. The channel holds a handful of batches.
pub fn read_batches(
    table: &DeltaTable,
    files: Vec<LiveFile>,
    schema: SchemaRef,
) -> tokio::sync::mpsc::Receiver<Result<RecordBatch, super::MaintainError>> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (store, root) = (table.object_store(), table.table_url().clone());
    tokio::spawn(async move {
        let (small, large): (Vec<LiveFile>, Vec<LiveFile>) =
            files.into_iter().partition(|f| f.size < PREFETCH_MAX_BYTES);
        let mut reads = futures::stream::iter(small.into_iter().map(|file| {
            let (store, root, schema, tx) =
                (store.clone(), root.clone(), schema.clone(), tx.clone());
            tokio::spawn(async move { read_file(store, &root, &file, &schema, &tx).await })
        }))
        .buffer_unordered(PREFETCH_FILES);
        while let Some(joined) = reads.next().await {
            let result = joined.unwrap_or_else(|e| {
                Err(super::MaintainError::Invalid(format!(
                    "read task failed: {e}"
                )))
            });
            if let Err(error) = result {
                let _ = tx.send(Err(error)).await;
                return;
            }
        }
        for file in &large {
            if let Err(error) = read_file(store.clone(), &root, file, &schema, &tx).await {
                let _ = tx.send(Err(error)).await;
                return;
            }
        }
    });
    rx
}
