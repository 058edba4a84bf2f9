//! JSON records to Arrow batches in the table's schema.
//!
//! Records are decoded in groups with `arrow-json`'s [`Decoder`] against the
//! declared columns (never serde per row). A group that fails (malformed JSON,
//! a value of the wrong type, a missing non-nullable field, a payload holding
//! zero or several documents) is split in halves until each failing record
//! stands alone; those are rejected with the decoder's message and go to the
//! dead-letter table, every other record is kept.
//!
//! `timestamp` columns are decoded as text (numbers included) and parsed here:
//! RFC 3339 strings (a missing offset means UTC), or epoch numbers in the
//! column's `epoch_unit`. They become microseconds in UTC. A value that does
//! not parse rejects its record. Derived and metadata columns are appended
//! last, in the table's column order.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::reader::{Decoder, ReaderBuilder};

use super::columns::Extras;
use super::timestamp::parse_timestamp_micros;
use crate::config::{EpochUnit, TableConfig};
use crate::source::Record;
use crate::table::schema::parse_type;

/// Records decoded together before falling back to halves.
const GROUP_RECORDS: usize = 512;

/// Errors building a decoder from a table config.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// A column type did not parse (normally caught by config validation).
    #[error("table `{table}`, column `{column}`: {reason}")]
    BadColumn {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A schema-carrying source's schema cannot type the table.
    #[error("table `{table}`, source `{source_name}`: {reason}")]
    Schema {
        /// Table name.
        table: String,
        /// Source name.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Stopped before the schema registry answered.
    #[error("stopped while waiting for the schema registry")]
    Stopped,
    /// arrow-json refused the schema.
    #[error("table `{table}`: {0}", table = .1)]
    Arrow(arrow::error::ArrowError, String),
}

/// The result of decoding a slice of records.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Rows in the table schema, one per kept record (none if every record was rejected).
    pub batch: Option<RecordBatch>,
    /// Index (into the input slice) of the record behind each row of `batch`.
    pub kept: Vec<usize>,
    /// Rejected records: input index and reason.
    pub rejected: Vec<(usize, String)>,
    /// Top-level fields the table does not have, with the records holding
    /// them (JSON; they are not stored unless the table evolves).
    pub unknown_fields: std::collections::BTreeMap<String, u64>,
    /// Records that hold no row by design (Kafka tombstones of change
    /// events): input indexes, counted in the lineage as skipped.
    pub skipped: Vec<usize>,
}

impl Decoded {
    /// The decode of a subset of some records (`origin[i]`: the index in
    /// the whole of the subset's record `i`) as a decode of the whole,
    /// with what was `rejected` and `skipped` before the subset was made.
    pub fn onto(
        self,
        origin: &[usize],
        mut rejected: Vec<(usize, String)>,
        mut skipped: Vec<usize>,
    ) -> Decoded {
        rejected.extend(self.rejected.into_iter().map(|(i, r)| (origin[i], r)));
        rejected.sort_by_key(|(i, _)| *i);
        skipped.extend(self.skipped.into_iter().map(|i| origin[i]));
        skipped.sort_unstable();
        Decoded {
            batch: self.batch,
            kept: self.kept.into_iter().map(|i| origin[i]).collect(),
            rejected,
            unknown_fields: Default::default(),
            skipped,
        }
    }
}

/// Decodes JSON records for one table.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    decode_schema: SchemaRef,
    table_schema: SchemaRef,
    timestamps: Vec<(usize, EpochUnit)>,
    extras: Extras,
    /// The declared column names.
    known: Arc<std::collections::HashSet<String>>,
}

impl JsonDecoder {
    /// Builds the decoder and the table's Arrow schema from its config.
    pub fn new(table: &TableConfig) -> Result<Self, DecoderError> {
        let mut decode_fields = Vec::new();
        let mut table_fields = Vec::new();
        let mut timestamps = Vec::new();
        for (i, column) in table.columns.iter().enumerate() {
            let ty = parse_type(&column.type_name).map_err(|reason| DecoderError::BadColumn {
                table: table.name.clone(),
                column: column.name.clone(),
                reason,
            })?;
            let decode_ty = if matches!(ty, DataType::Timestamp(..)) {
                timestamps.push((i, column.epoch_unit));
                DataType::Utf8
            } else {
                ty.clone()
            };
            decode_fields.push(Field::new(column.field(), decode_ty, column.nullable));
            table_fields.push(Field::new(&column.name, ty, column.nullable));
        }
        let (extras, extra_fields) =
            Extras::new(table, &table_fields).map_err(|reason| DecoderError::BadColumn {
                table: table.name.clone(),
                column: "derived".into(),
                reason,
            })?;
        table_fields.extend(extra_fields);
        let decoder = Self {
            decode_schema: Arc::new(Schema::new(decode_fields)),
            table_schema: Arc::new(Schema::new(table_fields)),
            timestamps,
            extras,
            known: Arc::new(
                table
                    .columns
                    .iter()
                    .map(|c| c.field().to_string())
                    .collect(),
            ),
        };
        decoder
            .raw_decoder(1)
            .map_err(|e| DecoderError::Arrow(e, table.name.clone()))?;
        Ok(decoder)
    }

    /// The table's Arrow schema: declared, then derived, then metadata columns.
    pub fn table_schema(&self) -> SchemaRef {
        self.table_schema.clone()
    }

    fn raw_decoder(&self, rows: usize) -> Result<Decoder, arrow::error::ArrowError> {
        ReaderBuilder::new(self.decode_schema.clone())
            .with_batch_size(rows.max(1))
            .with_coerce_primitive(true)
            .build_decoder()
    }

    /// Decodes `records`, separating the ones that do not fit the schema.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        let mut pieces = Vec::new();
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        let mut start = 0;
        while start < records.len() {
            let end = (start + GROUP_RECORDS).min(records.len());
            self.decode_range(records, start..end, &mut pieces, &mut kept, &mut rejected);
            start = end;
        }
        let raw = match pieces.len() {
            0 => None,
            1 => pieces.pop(),
            _ => Some(concat_batches(&self.decode_schema, &pieces).expect("same schema")),
        };
        let unknown_fields = self.unknown_fields(records);
        let Some(raw) = raw else {
            return Decoded {
                batch: None,
                kept,
                rejected,
                unknown_fields,
                skipped: Vec::new(),
            };
        };
        let (batch, kept) = self.shape(raw, kept, records, &mut rejected);
        rejected.sort_by_key(|(i, _)| *i);
        Decoded {
            batch,
            kept,
            rejected,
            unknown_fields,
            skipped: Vec::new(),
        }
    }

    /// Whether the table declares a field named `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.known.contains(name)
    }

    /// Whether a column of the table has `name` when case is ignored.
    pub fn knows_ignoring_case(&self, name: &str) -> bool {
        self.table_schema
            .fields()
            .iter()
            .any(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Counts, per name, the top-level fields of `records` the table lacks.
    fn unknown_fields(&self, records: &[Record]) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for record in records {
            super::json_keys::for_each_top_level_key(&record.payload, |key| {
                if !self.known.contains(key) {
                    *counts.entry(key.to_string()).or_insert(0) += 1;
                }
            });
        }
        counts
    }

    fn decode_range(
        &self,
        records: &[Record],
        range: Range<usize>,
        pieces: &mut Vec<RecordBatch>,
        kept: &mut Vec<usize>,
        rejected: &mut Vec<(usize, String)>,
    ) {
        match self.try_decode(&records[range.clone()]) {
            Ok(batch) => {
                pieces.push(batch);
                kept.extend(range);
            }
            Err(reason) if range.len() == 1 => rejected.push((range.start, reason)),
            Err(_) => {
                let mid = range.start + range.len() / 2;
                self.decode_range(records, range.start..mid, pieces, kept, rejected);
                self.decode_range(records, mid..range.end, pieces, kept, rejected);
            }
        }
    }

    /// Decodes a group that must yield exactly one row per record.
    fn try_decode(&self, records: &[Record]) -> Result<RecordBatch, String> {
        let mut decoder = self.raw_decoder(records.len()).map_err(|e| e.to_string())?;
        for (i, record) in records.iter().enumerate() {
            let mut rest: &[u8] = &record.payload;
            while !rest.is_empty() {
                let used = decoder.decode(rest).map_err(|e| e.to_string())?;
                if used == 0 {
                    return Err("more than one JSON document in the record".into());
                }
                rest = &rest[used..];
            }
            decoder.decode(b"\n").map_err(|e| e.to_string())?;
            if decoder.has_partial_record() {
                return Err("truncated JSON document".into());
            }
            if decoder.len() != i + 1 {
                return Err(match decoder.len() <= i {
                    true => "empty record: no JSON document".into(),
                    false => "more than one JSON document in the record".into(),
                });
            }
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) if batch.num_rows() == records.len() => Ok(batch),
            _ => Err("record did not decode to exactly one row".into()),
        }
    }

    /// Parses timestamps, drops rows whose timestamps are invalid, and appends
    /// derived and metadata columns.
    fn shape(
        &self,
        raw: RecordBatch,
        kept: Vec<usize>,
        records: &[Record],
        rejected: &mut Vec<(usize, String)>,
    ) -> (Option<RecordBatch>, Vec<usize>) {
        let mut columns: Vec<ArrayRef> = raw.columns().to_vec();
        let mut valid = vec![true; raw.num_rows()];
        for &(index, unit) in &self.timestamps {
            let name = self.decode_schema.field(index).name();
            let text = columns[index]
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("timestamps decode as text");
            let parsed: TimestampMicrosecondArray = text
                .iter()
                .enumerate()
                .map(|(row, value)| {
                    let value = value?;
                    match parse_timestamp_micros(value, unit) {
                        Ok(micros) => Some(micros),
                        Err(reason) => {
                            if valid[row] {
                                valid[row] = false;
                                rejected.push((kept[row], format!("field `{name}`: {reason}")));
                            }
                            // A placeholder keeps non-nullable columns valid; the row is dropped below.
                            Some(0)
                        }
                    }
                })
                .collect();
            columns[index] = Arc::new(parsed.with_timezone("UTC"));
        }
        self.extras.append(&mut columns, records, &kept);
        let batch = RecordBatch::try_new(self.table_schema.clone(), columns)
            .expect("shaped columns match the table schema");
        if valid.iter().all(|v| *v) {
            return (Some(batch), kept);
        }
        let mask = BooleanArray::from(valid.clone());
        let filtered = filter_record_batch(&batch, &mask).expect("mask matches batch");
        let kept = kept
            .into_iter()
            .zip(valid)
            .filter_map(|(i, ok)| ok.then_some(i))
            .collect();
        (Some(filtered).filter(|b| b.num_rows() > 0), kept)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{ColumnConfig, TableConfig};
    use crate::source::PartitionId;
    use arrow::array::{Array, AsArray};

    fn column(name: &str, type_name: &str) -> ColumnConfig {
        ColumnConfig {
            name: name.into(),
            field: None,
            type_name: type_name.into(),
            nullable: true,
            epoch_unit: EpochUnit::Auto,
        }
    }

    /// A record of partition `s:t[0]` at `position`.
    pub(crate) fn record(position: i64, json: &str) -> Record {
        Record {
            partition: Arc::new(PartitionId {
                source: "s".into(),
                stream: "t".into(),
                partition: "0".into(),
            }),
            position,
            payload: bytes::Bytes::copy_from_slice(json.as_bytes()),
            timestamp_ms: None,
            key: None,
        }
    }

    #[test]
    fn decodes_structs_lists_and_maps_and_rejects_only_bad_records() {
        let table = TableConfig {
            name: "t".into(),
            source: vec!["s".into()],
            uri: None,
            key: "id".into(),
            columns: vec![
                column("id", "string"),
                column("pickup", "struct<lat:double,lon:double>"),
                column("tags", "array<string>"),
                column("attributes", "map<string,long>"),
            ],
            partition_by: vec![],
            derived: vec![],
            metadata_columns: vec![],
            zorder_by: vec![],
            dead_letter_uri: None,
            properties: Default::default(),
            description: None,
            owner: None,
            tags: Vec::new(),
            before_image: false,
            mode: Default::default(),
            primary_key: Vec::new(),
            deletion_vectors: None,
            evolve: Default::default(),
        };
        let decoder = JsonDecoder::new(&table).unwrap();
        let records = vec![
            record(
                0,
                r#"{"id":"a","pickup":{"lat":1.5,"lon":2},"tags":["x","y"],"attributes":{"n":1,"m":2}}"#,
            ),
            record(1, r#"{"id":"b","attributes":{"n":"not a number"}}"#),
            record(2, r#"{"id":"c","tags":[],"attributes":{}}"#),
        ];
        let decoded = decoder.decode(&records);
        assert_eq!(decoded.kept, vec![0, 2]);
        assert_eq!(decoded.rejected.len(), 1);
        assert_eq!(decoded.rejected[0].0, 1);
        let batch = decoded.batch.unwrap();
        let pickup = batch.column_by_name("pickup").unwrap().as_struct();
        let lon = pickup
            .column_by_name("lon")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(lon.value(0), 2.0, "integer widened inside a struct");
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value_length(0), 2);
        let attributes = batch.column_by_name("attributes").unwrap().as_map();
        assert_eq!(attributes.value_length(0), 2);
        assert_eq!(attributes.value_length(1), 0);
        assert!(pickup.is_null(1), "a missing struct is null");
    }
}
