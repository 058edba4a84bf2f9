//! Parquet data files for a table: zstd, per-file statistics, a bloom filter
//! on the subject-key column, rolled at the target file size.
//!
//! Files stream straight to the table's object store through delta-rs's
//! [`RecordBatchWriter`] (which splits rows by partition values and builds
//! the `add` actions with `numRecords`, `minValues`, `maxValues` and
//! `nullCount`). sluice commits those actions itself (see `commit`) so the
//! commit can carry source positions and be fenced.

use deltalake::kernel::Add;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use arrow::array::RecordBatch;

use crate::config::defaults;

/// Parquet settings for sluice's data files.
pub fn writer_properties(key_column: Option<&str>) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(defaults::ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(defaults::ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(defaults::ROW_GROUP_BYTES));
    if let Some(key) = key_column {
        let path = ColumnPath::from(key);
        builder = builder
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path, defaults::KEY_BLOOM_FPP);
    }
    builder.build()
}

/// Writes a table's buffered rows as Parquet files.
pub struct TableWriter {
    inner: RecordBatchWriter,
    rows: usize,
}

impl TableWriter {
    /// A writer for `table`'s current schema and partitioning.
    pub fn new(
        table: &DeltaTable,
        key_column: Option<&str>,
        target_file_size: u64,
    ) -> Result<Self, DeltaTableError> {
        let inner = RecordBatchWriter::for_table(table)?
            .with_writer_properties(writer_properties(key_column))
            .with_target_file_size(target_file_size);
        Ok(Self { inner, rows: 0 })
    }

    /// A writer of files in `schema` (a schema the table is about to take:
    /// the commit that adds these files carries it).
    pub fn with_schema(
        table: &DeltaTable,
        storage_options: &std::collections::BTreeMap<String, String>,
        schema: arrow::datatypes::SchemaRef,
        key_column: Option<&str>,
        target_file_size: u64,
    ) -> Result<Self, DeltaTableError> {
        let partition_columns = table.snapshot()?.metadata().partition_columns().to_vec();
        let inner = RecordBatchWriter::try_new(
            table.table_url().as_str(),
            schema,
            Some(partition_columns),
            Some(storage_options.clone().into_iter().collect()),
        )?
        .with_writer_properties(writer_properties(key_column))
        .with_target_file_size(target_file_size);
        Ok(Self { inner, rows: 0 })
    }

    /// Streams rows into the open files.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaTableError> {
        self.rows += batch.num_rows();
        self.inner.write(batch).await
    }

    /// The schema of the files it writes.
    pub fn arrow_schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.arrow_schema()
    }

    /// Rows written since the last flush.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Encoded bytes written since the last flush.
    pub fn encoded_bytes(&self) -> usize {
        self.inner.buffer_len()
    }

    /// Finishes the open files and returns their `add` actions.
    pub async fn finish(&mut self) -> Result<Vec<Add>, DeltaTableError> {
        self.rows = 0;
        self.inner.flush().await
    }

    /// Abandons the open files (already-finished ones become orphans for vacuum).
    pub fn abort(&mut self) {
        self.rows = 0;
        self.inner.reset();
    }
}
