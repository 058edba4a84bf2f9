//! The dead-letter table: records that could not be decoded, with their raw
//! bytes, the reason, and their source coordinates.
//!
//! Dead-letter writes are exactly-once on their own: each commit records, per
//! source partition, the last position of the batch it came from (`txn`, as in
//! data tables). The pipeline commits dead letters before the batch's data
//! commit; a batch replayed after a crash between the two skips every dead
//! letter at or below the dead-letter table's recorded position, so no bad
//! record is written twice and none is lost.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::DeltaTable;
use url::Url;

use super::schema::timestamp_type;
use super::{open_or_create, TableError};
use crate::source::PartitionId;

/// One rejected record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from.
    pub partition: Arc<PartitionId>,
    /// Its position.
    pub position: i64,
    /// The raw bytes.
    pub payload: bytes::Bytes,
    /// Why it was rejected.
    pub error: String,
    /// Source timestamp (ms), if any.
    pub source_time_ms: Option<i64>,
}

/// The dead-letter table's schema.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("partition", DataType::Utf8, false),
        Field::new("position", DataType::Int64, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_text", DataType::Utf8, false),
        Field::new("source_time", timestamp_type(), true),
        Field::new("ingest_time", timestamp_type(), false),
    ]))
}

/// Opens (or creates) the dead-letter table of `table_name`, with the
/// table's configured `properties` (retention durations apply to both).
pub async fn open(
    url: &Url,
    storage_options: &BTreeMap<String, String>,
    table_name: &str,
    properties: &BTreeMap<String, String>,
) -> Result<DeltaTable, TableError> {
    open_or_create(
        url,
        storage_options,
        &format!("{table_name}_dead_letters"),
        &schema(),
        &[],
        &[
            super::table_properties(None, properties),
            vec![
                (super::about::KIND.to_string(), "dead_letters".to_string()),
                (super::about::FOR_TABLE.to_string(), table_name.to_string()),
            ],
        ]
        .concat(),
        Some(&format!(
            "Records of table `{table_name}` that could not be decoded, with the reason and their source coordinates"
        )),
    )
    .await
}

/// Rows for `letters` in the dead-letter schema.
pub fn to_batch(table_name: &str, letters: &[&DeadLetter]) -> RecordBatch {
    let now = chrono::Utc::now().timestamp_micros();
    let text = |f: &dyn Fn(&DeadLetter) -> String| -> ArrayRef {
        Arc::new(letters.iter().map(|l| Some(f(l))).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|_| table_name.to_string()),
        text(&|l| l.partition.source.clone()),
        text(&|l| l.partition.stream.clone()),
        text(&|l| l.partition.partition.clone()),
        Arc::new(
            letters
                .iter()
                .map(|l| Some(l.position))
                .collect::<Int64Array>(),
        ),
        text(&|l| l.error.clone()),
        Arc::new(
            letters
                .iter()
                .map(|l| Some(l.payload.as_ref()))
                .collect::<BinaryArray>(),
        ),
        text(&|l| String::from_utf8_lossy(&l.payload).into_owned()),
        Arc::new(
            letters
                .iter()
                .map(|l| l.source_time_ms.map(|ms| ms * 1000))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        Arc::new(
            letters
                .iter()
                .map(|_| Some(now))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema(), columns).expect("dead-letter columns match the schema")
}
