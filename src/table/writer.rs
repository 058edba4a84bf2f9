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

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::config::defaults;

/// Parquet settings for sluice's data files.
pub fn writer_properties(key_column: Option<&str>) -> WriterProperties {
    properties(key_column, &[], Codec::Zstd(defaults::ZSTD_LEVEL))
}

/// How a writer's files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// zstd at this level.
    Zstd(i32),
    /// Snappy, for a batch of fewer than [`defaults::SMALL_BATCH_ROWS`] rows.
    Small,
}

/// Parquet settings with dictionary encoding off for `plain` columns.
fn properties(key_column: Option<&str>, plain: &[ColumnPath], codec: Codec) -> WriterProperties {
    let compression = match codec {
        Codec::Zstd(level) => {
            Compression::ZSTD(ZstdLevel::try_new(level).expect("valid zstd level"))
        }
        Codec::Small => Compression::SNAPPY,
    };
    // A row group holds at most this many keys; the filter is folded down
    // to the keys it saw when the row group closes.
    let keys = match codec {
        Codec::Zstd(_) => defaults::ROW_GROUP_ROWS,
        Codec::Small => defaults::SMALL_BATCH_KEYS,
    };
    let mut builder = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(defaults::ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(defaults::ROW_GROUP_BYTES));
    if let Some(key) = key_column {
        // A nested key (`customer.id`) is a leaf inside its struct.
        let path = ColumnPath::new(key.split('.').map(str::to_string).collect());
        builder = builder
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), defaults::KEY_BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(path, keys as u64);
    }
    for path in plain {
        builder = builder.set_column_dictionary_enabled(path.clone(), false);
    }
    builder.build()
}

/// The columns of `batch` (top level and inside structs) whose values
/// barely repeat: most values of a sample of its rows occur in it once.
/// A dictionary does not shrink such a column (ids, measurements, event
/// times) but interning every value costs more than the rest of its
/// encoding, so their files are written without one. Columns with fewer than
/// [`defaults::DICTIONARY_SAMPLE_MIN`] non-null values in the sample, lists,
/// maps and booleans keep the dictionary.
pub fn distinct_columns(batch: &RecordBatch) -> Vec<ColumnPath> {
    let mut found = Vec::new();
    let rows = batch.num_rows().min(defaults::DICTIONARY_SAMPLE_ROWS);
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        collect_distinct(
            vec![field.name().clone()],
            &column.slice(0, rows),
            &mut found,
        );
    }
    found
}

fn collect_distinct(path: Vec<String>, column: &ArrayRef, found: &mut Vec<ColumnPath>) {
    let unique = match column.data_type() {
        DataType::Struct(_) => {
            let strukt = column.as_struct();
            for (field, child) in strukt.fields().iter().zip(strukt.columns()) {
                let mut child_path = path.clone();
                child_path.push(field.name().clone());
                collect_distinct(child_path, child, found);
            }
            return;
        }
        DataType::Utf8 => once_share(
            column.len(),
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::as_bytes),
        ),
        DataType::LargeUtf8 => once_share(
            column.len(),
            column
                .as_string::<i64>()
                .iter()
                .flatten()
                .map(str::as_bytes),
        ),
        DataType::Binary => once_share(column.len(), column.as_binary::<i32>().iter().flatten()),
        DataType::LargeBinary => {
            once_share(column.len(), column.as_binary::<i64>().iter().flatten())
        }
        data_type => match data_type.primitive_width() {
            Some(width) => {
                let data = column.to_data();
                let values = &data.buffers()[0].as_slice()
                    [data.offset() * width..(data.offset() + data.len()) * width];
                once_share(
                    data.len(),
                    values
                        .chunks_exact(width)
                        .enumerate()
                        .filter(|(row, _)| data.is_valid(*row))
                        .map(|(_, value)| value),
                )
            }
            None => None,
        },
    };
    if unique.is_some_and(|share| share > defaults::DICTIONARY_MAX_UNIQUE_SHARE) {
        found.push(ColumnPath::new(path));
    }
}

/// Occurrences of each value in a sample.
type Counts<'a> = std::collections::HashMap<&'a [u8], u32, foldhash::fast::RandomState>;

/// The share of `values` (of a column of `rows` rows) that occur once
/// among them, or `None` for too few values to judge.
///
/// Every table profiles its first large write, so a worker of hundreds of
/// tables hashes hundreds of samples: the map is sized for the sample up
/// front and uses a fast non-cryptographic hash (the values are not
/// adversarial: a collision only costs time).
fn once_share<'a>(rows: usize, values: impl Iterator<Item = &'a [u8]>) -> Option<f64> {
    let mut counts = Counts::with_capacity_and_hasher(rows, Default::default());
    let mut total = 0usize;
    for value in values {
        *counts.entry(value).or_default() += 1;
        total += 1;
    }
    let once = counts.values().filter(|&&count| count == 1).count();
    (total >= defaults::DICTIONARY_SAMPLE_MIN).then(|| once as f64 / total as f64)
}

/// Writes a table's buffered rows as Parquet files.
///
/// The first chunk of at least [`defaults::DICTIONARY_SAMPLE_MIN`] rows it
/// writes decides which columns go without a dictionary
/// ([`distinct_columns`]) in the files it opens from then on.
///
/// A writer made [`TableWriter::small_batches_in_snappy`] writes a batch
/// whose first write holds fewer than [`defaults::SMALL_BATCH_ROWS`] rows
/// with Snappy and a bloom filter sized for that batch: opening a zstd
/// file costs a compressor and a decompressor context per column, which
/// for a few hundred rows (a quiet topic flushed every few seconds) costs
/// more than the rest of the file, and compaction re-encodes small files
/// with zstd anyway.
pub struct TableWriter {
    inner: Option<RecordBatchWriter>,
    key_column: Option<String>,
    level: i32,
    /// Columns written without a dictionary (once profiled).
    plain: Vec<ColumnPath>,
    profiled: bool,
    rows: usize,
    /// Whether small batches go to Snappy.
    small_batches: bool,
    /// The codec of the files open now.
    codec: Codec,
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
        Ok(Self::wrap(inner, key_column))
    }

    /// The writer for a mirror table's merge: zstd at
    /// [`defaults::MERGE_ZSTD_LEVEL`], since a merge rewrites whole files
    /// while a batch waits (compaction and Z-order re-encode them at the
    /// usual level later).
    pub fn at_merge_level(mut self) -> Self {
        self.level = defaults::MERGE_ZSTD_LEVEL;
        self.set_codec(Codec::Zstd(self.level));
        self
    }

    /// Writes batches of fewer than [`defaults::SMALL_BATCH_ROWS`] rows
    /// with Snappy (see the type's docs).
    pub fn small_batches_in_snappy(mut self) -> Self {
        self.small_batches = true;
        self
    }

    /// Makes the files opened from now on use `codec` (and the columns
    /// profiled so far).
    fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
        let props = properties(self.key_column.as_deref(), &self.plain, codec);
        let inner = self
            .inner
            .take()
            .expect("the writer is only taken to be replaced");
        self.inner = Some(inner.with_writer_properties(props));
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
        Ok(Self::wrap(inner, key_column))
    }

    fn wrap(inner: RecordBatchWriter, key_column: Option<&str>) -> Self {
        Self {
            inner: Some(inner),
            key_column: key_column.map(str::to_owned),
            level: defaults::ZSTD_LEVEL,
            plain: Vec::new(),
            profiled: false,
            rows: 0,
            small_batches: false,
            codec: Codec::Zstd(defaults::ZSTD_LEVEL),
        }
    }

    fn inner(&mut self) -> &mut RecordBatchWriter {
        self.inner
            .as_mut()
            .expect("the writer is only taken to be replaced")
    }

    /// Streams rows into the open files.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaTableError> {
        let mut codec = self.codec;
        if self.small_batches && self.rows == 0 {
            // No file is open: the batch's first write picks its codec.
            codec = if batch.num_rows() < defaults::SMALL_BATCH_ROWS {
                Codec::Small
            } else {
                Codec::Zstd(self.level)
            };
        }
        if !self.profiled && batch.num_rows() >= defaults::DICTIONARY_SAMPLE_MIN {
            self.profiled = true;
            self.plain = distinct_columns(&batch);
            if !self.plain.is_empty() {
                self.set_codec(codec);
            }
        }
        if codec != self.codec {
            self.set_codec(codec);
        }
        self.rows += batch.num_rows();
        self.inner().write(batch).await
    }

    /// The schema of the files it writes.
    pub fn arrow_schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner
            .as_ref()
            .expect("the writer is only taken to be replaced")
            .arrow_schema()
    }

    /// Rows written since the last flush.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Encoded bytes written since the last flush.
    pub fn encoded_bytes(&self) -> usize {
        self.inner
            .as_ref()
            .expect("the writer is only taken to be replaced")
            .buffer_len()
    }

    /// Finishes the open files and returns their `add` actions.
    pub async fn finish(&mut self) -> Result<Vec<Add>, DeltaTableError> {
        self.rows = 0;
        self.inner().flush().await
    }

    /// Abandons the open files (already-finished ones become orphans for vacuum).
    pub fn abort(&mut self) {
        self.rows = 0;
        self.inner().reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, StructArray};
    use arrow::datatypes::{Field, Fields};
    use std::sync::Arc;

    #[test]
    fn columns_whose_values_barely_repeat_go_without_a_dictionary() {
        let rows = 8192;
        let ids = StringArray::from_iter_values((0..rows).map(|n| format!("e-{n}")));
        let cities = StringArray::from_iter_values((0..rows).map(|n| format!("c-{}", n % 12)));
        // 5,000 drivers over 8,192 rows: most repeat.
        let drivers =
            StringArray::from_iter_values((0..rows).map(|n| format!("d-{}", n * 7 % 5000)));
        let times = Int64Array::from_iter_values((0..rows as i64).map(|n| 1_700_000_000_000 + n));
        let lat = Arc::new(Float64Array::from_iter_values(
            (0..rows).map(|n| n as f64 / 3.0),
        ));
        let pickup = StructArray::new(
            Fields::from(vec![Field::new("lat", DataType::Float64, false)]),
            vec![lat],
            None,
        );
        // Mostly null: too few values to judge.
        let notes = StringArray::from_iter((0..rows).map(|n| (n < 100).then(|| format!("n-{n}"))));
        let batch = RecordBatch::try_from_iter([
            ("event_id", Arc::new(ids) as ArrayRef),
            ("city", Arc::new(cities)),
            ("driver_id", Arc::new(drivers)),
            ("event_time", Arc::new(times)),
            ("pickup", Arc::new(pickup)),
            ("note", Arc::new(notes)),
        ])
        .unwrap();
        let plain: Vec<String> = distinct_columns(&batch)
            .iter()
            .map(ColumnPath::string)
            .collect();
        assert_eq!(plain, ["event_id", "event_time", "pickup.lat"]);

        let props = properties(
            Some("event_id"),
            &distinct_columns(&batch),
            Codec::Zstd(defaults::ZSTD_LEVEL),
        );
        assert!(!props.dictionary_enabled(&ColumnPath::from("event_id")));
        assert!(props.dictionary_enabled(&ColumnPath::from("city")));
        assert!(props
            .bloom_filter_properties(&ColumnPath::from("event_id"))
            .is_some());

        // A nested key's bloom filter is on the leaf inside its struct.
        let nested = writer_properties(Some("customer.id"));
        let leaf = ColumnPath::new(vec!["customer".into(), "id".into()]);
        assert!(nested.bloom_filter_properties(&leaf).is_some());
    }
}
