//! Debezium change events written by Kafka Connect's Avro or Protobuf
//! converter (the registry wire format): the envelope (`before`, `after`,
//! `source`, `op`, `ts_ms`, `transaction`) is decoded by the Avro or
//! Protobuf decoder against the latest envelope schema of the topic's
//! subject, then flattened into the same rows as JSON change events (see
//! [`super::debezium`]): the change columns, then the fields of the row
//! image (`after`, or `before` for a delete), typed from the envelope's
//! `Value` record or message with its field docs or comments.
//!
//! MongoDB's connector writes its images as extended-JSON text (`after`,
//! `patch`, `filter`, `updateDescription.updatedFields`) inside the
//! envelope. Such an envelope is written back out as the JSON converter's
//! event and read by [`super::debezium`]'s decoder into the table's
//! declared columns (partial updates included), with the record key
//! decoded through the registry's `<topic>-key` subject when the keys are
//! registry-framed too: a change-stream update or a delete names its
//! document only there.
//!
//! Tombstones (empty values) are skipped and counted; an event without an
//! `op` (a Protobuf string reads empty when unset) or whose `op` is not c,
//! u, d or r, an insert, update or read without an `after` image, and
//! (mirror tables) an image without its primary key or a required column,
//! are dead letters with the reason. Image columns are nullable (a delete's
//! `before` image may carry the key alone). Derived and metadata columns
//! are not available on these tables yet.

use std::sync::Arc;

use arrow::array::{
    make_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use super::avro::AvroDecoder;
use super::debezium::{
    order, position, DebeziumDecoder, MirrorShape, BEFORE_COLUMN, CDC_COLUMNS, ORDER_COLUMN,
};
use super::protobuf_decoder::ProtobufDecoder;
use super::Decoded;
use crate::config::{TableConfig, TableMode};
use crate::source::Record;

/// Source-block fields read for positions and names.
const SOURCE_FIELDS: [&str; 11] = [
    "connector",
    "lsn",
    "sequence",
    "file",
    "pos",
    "row",
    "ord",
    "ts_ms",
    "db",
    "table",
    "collection",
];

/// The decoder of the envelope itself, by the subject's schema type.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// Kafka Connect's Avro converter.
    Avro(Box<AvroDecoder>),
    /// Kafka Connect's Protobuf converter.
    Protobuf(Box<ProtobufDecoder>),
}

impl Envelope {
    pub(crate) fn table_schema(&self) -> SchemaRef {
        match self {
            Envelope::Avro(d) => d.table_schema(),
            Envelope::Protobuf(d) => d.table_schema(),
        }
    }

    async fn prepare(&self, records: &[Record], stop: &CancellationToken) -> bool {
        match self {
            Envelope::Avro(d) => d.prepare(records, stop).await,
            Envelope::Protobuf(d) => d.prepare(records, stop).await,
        }
    }

    fn schema_id(&self, record: &Record) -> Option<u32> {
        match self {
            Envelope::Avro(d) => d.schema_id(record),
            Envelope::Protobuf(d) => d.schema_id(record),
        }
    }

    fn schema_label(&self, id: u32) -> Option<String> {
        match self {
            Envelope::Avro(d) => d.schema_label(id),
            Envelope::Protobuf(d) => d.schema_label(id),
        }
    }

    fn decode(&self, records: &[Record]) -> Decoded {
        match self {
            Envelope::Avro(d) => d.decode(records),
            Envelope::Protobuf(d) => d.decode(records),
        }
    }
}

/// Decodes registry-framed Debezium envelopes for one table.
#[derive(Debug, Clone)]
pub struct RegistryChanges {
    envelope: Envelope,
    before_image: bool,
    mirror: Option<MirrorShape>,
    /// MongoDB envelopes, whose images are extended-JSON text.
    documents: Option<Documents>,
}

/// How MongoDB envelopes are read: each decoded envelope is written out as
/// the JSON converter's event (`after`, `patch`, `filter` and
/// `updateDescription` as they are) and read by the JSON change-event
/// decoder into the declared columns, partial updates included.
#[derive(Debug, Clone)]
struct Documents {
    decoder: DebeziumDecoder,
    /// The record keys' decoder when keys are registry-framed too (the
    /// `<topic>-key` subject): a change-stream update or a delete carries
    /// the document key only there.
    keys: Option<Envelope>,
}

impl RegistryChanges {
    /// Wraps the decoder of the envelope (and of the record keys, for
    /// MongoDB envelopes); refuses a schema that is not a Debezium envelope.
    pub fn new(
        table: &TableConfig,
        envelope: Envelope,
        keys: Option<Envelope>,
    ) -> Result<Self, String> {
        let schema = envelope.table_schema();
        let record = |name: &str| match schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(DataType::Struct(_)) => Ok(()),
            _ => Err(format!(
                "not a Debezium envelope: no `{name}` record (fields: {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        record("source")?;
        let documents = match schema.field_with_name("after").map(|f| f.data_type()) {
            Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                if table.columns.is_empty() {
                    return Err("a MongoDB envelope (`after` is extended-JSON text): declare the table's `columns`".into());
                }
                let decoder = DebeziumDecoder::new(table).map_err(|e| e.to_string())?;
                Some(Documents { decoder, keys })
            }
            _ => {
                record("after")?;
                None
            }
        };
        if !matches!(
            schema.field_with_name("op").map(|f| f.data_type()),
            Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        ) {
            return Err("not a Debezium envelope: no `op` string field".into());
        }
        let mirror = (table.mode == TableMode::Mirror).then(|| MirrorShape::of(table));
        Ok(Self {
            envelope,
            before_image: table.before_image,
            mirror,
            documents,
        })
    }

    /// The table's Arrow schema: the change columns, the image's fields,
    /// then `cdc_before`.
    pub fn table_schema(&self) -> SchemaRef {
        if let Some(documents) = &self.documents {
            return documents.decoder.table_schema();
        }
        let envelope = self.envelope.table_schema();
        let image = image_fields(&envelope);
        let mut fields: Vec<Field> = CDC_COLUMNS
            .iter()
            .map(|(name, _)| {
                let data_type = match *name {
                    "cdc_ts" => crate::table::schema::timestamp_type(),
                    _ => DataType::Utf8,
                };
                Field::new(*name, data_type, *name != "cdc_op")
            })
            .collect();
        if self.mirror.is_some() {
            fields.push(Field::new(ORDER_COLUMN, DataType::Utf8, true));
        }
        fields.extend(image.iter().map(|f| f.as_ref().clone().with_nullable(true)));
        if self.before_image {
            fields.push(Field::new(
                BEFORE_COLUMN,
                DataType::Struct(image.clone()),
                true,
            ));
        }
        Arc::new(Schema::new(fields))
    }

    /// Fetches the writer schemas the records name, waiting while the
    /// registry is unavailable; `false` if `stop` fired first.
    pub async fn prepare(&self, records: &[Record], stop: &CancellationToken) -> bool {
        if let Some(keys) = self.documents.as_ref().and_then(|d| d.keys.as_ref()) {
            if !keys.prepare(&key_records(records).1, stop).await {
                return false;
            }
        }
        self.envelope.prepare(records, stop).await
    }

    /// The registry schema id a record names.
    pub fn schema_id(&self, record: &Record) -> Option<u32> {
        self.envelope.schema_id(record)
    }

    /// Where registry schema `id` is registered.
    pub fn schema_label(&self, id: u32) -> Option<String> {
        self.envelope.schema_label(id)
    }

    /// Decodes `records`: envelopes become rows, tombstones are skipped,
    /// anything else is rejected with the reason.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        if let Some(documents) = &self.documents {
            return self.decode_documents(documents, records);
        }
        let skipped: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].payload.is_empty())
            .collect();
        let (events, decoded, mut rejected) = self.envelopes(records);
        let mut kept = Vec::new();
        let batch = decoded.batch.and_then(|batch| {
            let (rows, refused) = self.check(&batch);
            for (row, reason) in refused {
                rejected.push((events[decoded.kept[row]], reason));
            }
            kept = rows
                .iter()
                .map(|&r| events[decoded.kept[r as usize]])
                .collect();
            (!rows.is_empty()).then(|| self.flatten(&batch, &UInt32Array::from(rows)))
        });
        rejected.sort_by_key(|(i, _)| *i);
        Decoded {
            batch,
            kept,
            rejected,
            unknown_fields: Default::default(),
            skipped,
        }
    }

    /// Decodes the envelopes among `records` (tombstones aside): the
    /// indexes of those records, what the envelope decoder made of them
    /// (`kept` indexes into the first list), and its refusals by record index.
    fn envelopes(&self, records: &[Record]) -> (Vec<usize>, Decoded, Vec<(usize, String)>) {
        let events: Vec<usize> = (0..records.len())
            .filter(|&i| !records[i].payload.is_empty())
            .collect();
        let inner: Vec<Record> = events.iter().map(|&i| records[i].clone()).collect();
        let mut decoded = self.envelope.decode(&inner);
        let rejected = std::mem::take(&mut decoded.rejected)
            .into_iter()
            .map(|(i, reason)| (events[i], reason))
            .collect();
        (events, decoded, rejected)
    }

    /// Decodes MongoDB envelopes: each one the envelope decoder takes is
    /// written out as JSON, with its record key decoded to JSON too, and
    /// read by the JSON change-event decoder.
    fn decode_documents(&self, documents: &Documents, records: &[Record]) -> Decoded {
        let (events, decoded, mut rejected) = self.envelopes(records);
        let mut json: Vec<Option<Bytes>> = vec![None; records.len()];
        if let Some(batch) = &decoded.batch {
            match json_lines(batch) {
                Ok(lines) => {
                    for (row, line) in lines.into_iter().enumerate() {
                        json[events[decoded.kept[row]]] = Some(line);
                    }
                }
                Err(error) => {
                    for &row in &decoded.kept {
                        rejected.push((events[row], format!("envelope as JSON: {error}")));
                    }
                }
            }
        }
        let keys = documents
            .keys
            .as_ref()
            .map(|keys| decoded_keys(keys, records))
            .unwrap_or_default();
        let mut origin = Vec::new();
        let mut flat = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let payload = match (&json[index], record.payload.is_empty()) {
                (Some(line), _) => line.clone(),
                (None, true) => record.payload.clone(), // a tombstone: skipped below
                (None, false) => continue,              // rejected above
            };
            let key = keys.get(&index).cloned().or_else(|| record.key.clone());
            origin.push(index);
            flat.push(Record {
                payload,
                key,
                ..record.clone()
            });
        }
        documents
            .decoder
            .decode(&flat)
            .onto(&origin, rejected, Vec::new())
    }

    /// The rows of `batch` that become table rows, and the others with why.
    fn check(&self, batch: &RecordBatch) -> (Vec<u32>, Vec<(usize, String)>) {
        let ops = text_column(batch, "op");
        let after = batch.column_by_name("after").map(|c| c.as_struct());
        let before = batch.column_by_name("before").map(|c| c.as_struct());
        let (mut rows, mut refused) = (Vec::new(), Vec::new());
        for row in 0..batch.num_rows() {
            let op = ops
                .as_ref()
                .filter(|o| o.is_valid(row))
                .map(|o| o.value(row))
                .filter(|o| !o.is_empty());
            let Some(op) = op else {
                refused.push((row, "not a Debezium change event: no `op`".into()));
                continue;
            };
            if !matches!(op, "c" | "u" | "d" | "r") {
                refused.push((row, format!(
                    "`op` = `{op}`: only c, u, d and r change events become rows (truncate and message events do not)"
                )));
                continue;
            }
            let image = if op == "d" { before } else { after };
            if op != "d" && image.is_none_or(|i| i.is_null(row)) {
                refused.push((row, format!("`op` = `{op}` without an `after` image")));
                continue;
            }
            if let Some(shape) = &self.mirror {
                let mut present = Map::new();
                if let Some(image) = image.filter(|i| i.is_valid(row)) {
                    for (field, column) in image.fields().iter().zip(image.columns()) {
                        if column.is_valid(row) {
                            present.insert(field.name().clone(), Value::Bool(true));
                        }
                    }
                }
                if let Err(reason) = shape.check(op, &present) {
                    refused.push((row, reason));
                    continue;
                }
            }
            rows.push(row as u32);
        }
        (rows, refused)
    }

    /// The table rows of `batch`'s rows `take`.
    fn flatten(&self, batch: &RecordBatch, take: &UInt32Array) -> RecordBatch {
        let batch = arrow::compute::take_record_batch(batch, take).expect("rows in range");
        let schema = self.table_schema();
        let rows = batch.num_rows();
        let ops = text_column(&batch, "op").expect("checked");
        let source = batch.column_by_name("source").expect("checked").as_struct();
        let field = |name: &str| -> Option<StringArray> {
            let column = source.column_by_name(name)?;
            let text = arrow::compute::cast(column, &DataType::Utf8).ok()?;
            Some(text.as_string::<i32>().clone())
        };
        let fields: Vec<(&str, Option<StringArray>)> =
            SOURCE_FIELDS.iter().map(|n| (*n, field(n))).collect();
        let blocks: Vec<Value> = (0..rows)
            .map(|row| {
                let mut block = Map::new();
                for (name, values) in &fields {
                    if let Some(values) = values.as_ref().filter(|v| v.is_valid(row)) {
                        block.insert(name.to_string(), Value::String(values.value(row).into()));
                    }
                }
                Value::Object(block)
            })
            .collect();
        let text = |f: &dyn Fn(&Value) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter(blocks.iter().map(f)))
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(ops.clone())];
        let ts_ms = field("ts_ms");
        columns.push(Arc::new(
            TimestampMicrosecondArray::from_iter((0..rows).map(|row| {
                let ms = ts_ms.as_ref().filter(|t| t.is_valid(row))?.value(row);
                ms.parse::<i64>().ok().map(|ms| ms * 1000)
            }))
            .with_timezone("UTC"),
        ));
        columns.push(text(&|b| position(b).as_str().map(str::to_string)));
        columns.push(text(&|b| b.get("db")?.as_str().map(str::to_string)));
        columns.push(text(&|b| {
            b.get("table")
                .or_else(|| b.get("collection"))?
                .as_str()
                .map(str::to_string)
        }));
        let tx: ArrayRef = match batch
            .column_by_name("transaction")
            .and_then(|t| t.as_struct_opt().cloned())
            .and_then(|t| {
                let id = arrow::compute::cast(t.column_by_name("id")?, &DataType::Utf8).ok()?;
                Some(with_parent_nulls(&id, t.nulls()))
            }) {
            Some(ids) => ids,
            None => arrow::array::new_null_array(&DataType::Utf8, rows),
        };
        columns.push(tx);
        if self.mirror.is_some() {
            columns.push(text(&|b| order(b)));
        }
        let deletes = BooleanArray::from_iter((0..rows).map(|r| Some(ops.value(r) == "d")));
        let after = batch.column_by_name("after").expect("checked");
        let image = match batch.column_by_name("before") {
            Some(before) => arrow::compute::kernels::zip::zip(&deletes, before, after)
                .expect("before and after are the same record"),
            None => after.clone(),
        };
        let image = image.as_struct();
        for child in image.columns() {
            columns.push(with_parent_nulls(child, image.nulls()));
        }
        if self.before_image {
            let image_type = schema
                .field_with_name(BEFORE_COLUMN)
                .expect("declared")
                .data_type()
                .clone();
            let before = match batch.column_by_name("before") {
                Some(before) => arrow::compute::cast(before, &image_type).expect("same record"),
                None => arrow::array::new_null_array(&image_type, rows),
            };
            columns.push(before);
        }
        RecordBatch::try_new(schema, columns).expect("flattened columns match the table schema")
    }
}

/// The records whose key is registry-framed (a zero byte and a schema
/// id): their indexes, and records carrying the key as payload.
fn key_records(records: &[Record]) -> (Vec<usize>, Vec<Record>) {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, record)| {
            let key = record.key.as_ref().filter(|k| k.len() > 5 && k[0] == 0)?;
            Some((
                i,
                Record {
                    payload: key.clone(),
                    key: None,
                    ..record.clone()
                },
            ))
        })
        .unzip()
}

/// Registry-framed record keys decoded to JSON objects (`{"id": "..."}`), by record index.
fn decoded_keys(keys: &Envelope, records: &[Record]) -> std::collections::HashMap<usize, Bytes> {
    let (indexes, framed) = key_records(records);
    let decoded = keys.decode(&framed);
    let mut out = std::collections::HashMap::new();
    for (i, reason) in &decoded.rejected {
        tracing::debug!(record = indexes[*i], %reason, "a record key could not be decoded");
    }
    if let Some(lines) = decoded.batch.as_ref().and_then(|b| json_lines(b).ok()) {
        for (row, line) in lines.into_iter().enumerate() {
            out.insert(indexes[decoded.kept[row]], line);
        }
    }
    out
}

/// Each row of `batch` as one JSON object (nulls left out).
fn json_lines(batch: &RecordBatch) -> Result<Vec<Bytes>, arrow::error::ArrowError> {
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer.write(batch)?;
        writer.finish()?;
    }
    let lines: Vec<Bytes> = buffer
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(arrow::error::ArrowError::JsonError(format!(
            "{} rows written as {} lines",
            batch.num_rows(),
            lines.len()
        )));
    }
    Ok(lines)
}

/// The fields of the envelope's row image (`after`).
fn image_fields(envelope: &Schema) -> arrow::datatypes::Fields {
    match envelope.field_with_name("after").map(|f| f.data_type()) {
        Ok(DataType::Struct(fields)) => fields.clone(),
        _ => arrow::datatypes::Fields::empty(),
    }
}

/// `column` as text (strings may arrive as another string type).
fn text_column(batch: &RecordBatch, name: &str) -> Option<StringArray> {
    let column = batch.column_by_name(name)?;
    let text = arrow::compute::cast(column, &DataType::Utf8).ok()?;
    Some(text.as_string::<i32>().clone())
}

/// A struct's child with the struct's own nulls folded in (a null image
/// reads as null columns).
fn with_parent_nulls(child: &ArrayRef, parent: Option<&NullBuffer>) -> ArrayRef {
    let Some(parent) = parent else {
        return child.clone();
    };
    let nulls = NullBuffer::union(Some(parent), child.nulls());
    let data = child
        .to_data()
        .into_builder()
        .nulls(nulls)
        .build()
        .expect("same length");
    make_array(data)
}
