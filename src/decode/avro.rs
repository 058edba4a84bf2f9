//! Avro records to Arrow batches in the table's schema, with `arrow-avro`
//! (arrow-rs's Avro reader: binary straight into Arrow builders, batch at a
//! time, no intermediate values per record).
//!
//! # Schemas
//! The table is typed from one Avro record schema, its **reader schema**:
//! the latest version of the source's registry subject (`<topic>-value` by
//! default) or its `schema_file`, read when ingestion starts. Every record's
//! **writer schema** (the registry schema its id names, cached by id) is
//! resolved against it by Avro's rules: fields the writer lacks read as
//! their default or null, fields the reader lacks are skipped.
//!
//! # Types
//! Avro types become types Spark and BigQuery read (see the README's table):
//! `timestamp-millis`/`-micros` (and `local-` ones) become `timestamp` in
//! microseconds UTC, `date` stays a date, `decimal` becomes `decimal(p,s)`,
//! enums their symbols as strings, a nullable union (`["null", T]`) a
//! nullable `T`, any other union a struct with one nullable field per
//! member, `fixed` (and `uuid`) binary, `time-*` a long in microseconds,
//! maps and arrays themselves. `duration` has no Delta type and is refused
//! at start, naming the field. Field `doc`s become column comments.
//!
//! # Bad records
//! A record that is shorter than the registry header, starts with another
//! magic byte, names a schema id the registry does not know, is truncated or
//! has bytes left over is rejected (dead letter) with the reason; records
//! are decoded in groups and a failing group is split in halves until each
//! failing record stands alone, as for JSON. A registry that does not answer
//! is not bad input: [`AvroDecoder::prepare`] waits for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, MapArray, NullArray, RecordBatch, StructArray,
    TimestampMicrosecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use tokio_util::sync::CancellationToken;

use super::columns::Extras;
use super::registry::{Registry, RegistryError};
use super::Decoded;
use crate::config::TableConfig;
use crate::source::Record;
use crate::table::schema::timestamp_type;

/// Records decoded together before falling back to halves.
const GROUP_RECORDS: usize = 512;
/// The registry wire format's header: magic byte 0 and a 4-byte schema id.
const HEADER: usize = 5;
/// The schema id plain bodies are decoded under.
const PLAIN_ID: u32 = 0;
/// Field metadata key of a column's comment in the Delta schema.
pub const COMMENT: &str = "comment";

/// Reads and checks an Avro schema file; returns its text.
pub fn read_schema_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    TableSchema::from_avro(&text).map_err(|e| format!("`{path}`: {e}"))?;
    Ok(text)
}

/// A table's Avro reader schema and the Arrow schemas it gives.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The Avro schema (JSON).
    pub avro: Arc<String>,
    /// What `arrow-avro` decodes it to.
    raw: SchemaRef,
    /// The table's data columns: `raw` in Delta-readable types, with comments.
    pub fields: Vec<Field>,
}

impl TableSchema {
    /// Parses an Avro record schema and maps it to table columns.
    pub fn from_avro(text: &str) -> Result<Self, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not an Avro schema (JSON): {e}"))?;
        if json["type"] != "record" {
            return Err("the top-level Avro schema must be a record".into());
        }
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store
            .set(Fingerprint::Id(PLAIN_ID), AvroSchema::new(text.to_string()))
            .map_err(|e| e.to_string())?;
        let raw = ReaderBuilder::new()
            .with_writer_schema_store(store)
            .build_decoder()
            .map_err(|e| format!("not a usable Avro schema: {e}"))?
            .schema();
        let mut named = HashMap::new();
        collect_records(&json, None, &mut named);
        let DataType::Struct(columns) = documented(
            DataType::Struct(
                raw.fields()
                    .iter()
                    .map(|f| delta_field(f, f.name()))
                    .collect::<Result<Fields, String>>()?,
            ),
            &json,
            &named,
        ) else {
            unreachable!("a record stays a struct")
        };
        let fields = columns.iter().map(|f| f.as_ref().clone()).collect();
        Ok(Self {
            avro: Arc::new(text.to_string()),
            raw,
            fields,
        })
    }
}

/// Every record type of a schema by its name and full name (namespaces are
/// inherited from the enclosing record, as Avro defines).
fn collect_records<'s>(
    schema: &'s serde_json::Value,
    namespace: Option<&str>,
    out: &mut HashMap<String, &'s serde_json::Value>,
) {
    match schema {
        serde_json::Value::Array(branches) => branches
            .iter()
            .for_each(|b| collect_records(b, namespace, out)),
        serde_json::Value::Object(o) => {
            let space = o.get("namespace").and_then(|n| n.as_str()).or(namespace);
            if o.get("type").and_then(|t| t.as_str()) == Some("record") {
                if let Some(name) = o.get("name").and_then(|n| n.as_str()) {
                    let (full, short) = match (name.rsplit_once('.'), space) {
                        (Some((_, short)), _) => (name.to_string(), short),
                        (None, Some(space)) if !space.is_empty() => {
                            (format!("{space}.{name}"), name)
                        }
                        (None, _) => (name.to_string(), name),
                    };
                    out.insert(full, schema);
                    out.entry(short.to_string()).or_insert(schema);
                }
            }
            for field in o
                .get("fields")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
            {
                collect_records(&field["type"], space, out);
            }
            for key in ["items", "values", "type"] {
                if let Some(inner @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) =
                    o.get(key)
                {
                    collect_records(inner, space, out);
                }
            }
        }
        _ => {}
    }
}

/// `ty` (the Delta type of Avro type `avro`) with each record field's `doc`
/// as its column comment, at any depth: inside nullable unions, arrays and
/// map values too.
fn documented(
    ty: DataType,
    avro: &serde_json::Value,
    named: &HashMap<String, &serde_json::Value>,
) -> DataType {
    use serde_json::Value;
    let avro = match avro {
        Value::String(name) => match named.get(name.as_str()) {
            Some(record) => *record,
            None => return ty,
        },
        Value::Array(branches) => {
            let mut kept = branches.iter().filter(|b| b.as_str() != Some("null"));
            return match (kept.next(), kept.next()) {
                (Some(only), None) => documented(ty, only, named),
                _ => ty,
            };
        }
        other => other,
    };
    match (ty, avro["type"].as_str()) {
        (DataType::Struct(fields), Some("record")) => {
            let avro_fields = avro["fields"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            DataType::Struct(
                fields
                    .iter()
                    .map(|field| {
                        let Some(spec) = avro_fields
                            .iter()
                            .find(|f| f["name"] == field.name().as_str())
                        else {
                            return field.as_ref().clone();
                        };
                        let mut out = field.as_ref().clone().with_data_type(documented(
                            field.data_type().clone(),
                            &spec["type"],
                            named,
                        ));
                        if let Some(doc) = spec["doc"].as_str() {
                            out = out
                                .with_metadata(HashMap::from([(COMMENT.into(), doc.to_string())]));
                        }
                        out
                    })
                    .collect::<Fields>(),
            )
        }
        (DataType::List(item), Some("array")) => {
            DataType::List(Arc::new(item.as_ref().clone().with_data_type(documented(
                item.data_type().clone(),
                &avro["items"],
                named,
            ))))
        }
        (DataType::Map(entries, sorted), Some("map")) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return DataType::Map(entries, sorted);
            };
            let value = kv[1].as_ref().clone();
            let value = value.clone().with_data_type(documented(
                value.data_type().clone(),
                &avro["values"],
                named,
            ));
            DataType::Map(
                Arc::new(
                    entries
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Struct(Fields::from(vec![
                            kv[0].as_ref().clone(),
                            value,
                        ]))),
                ),
                sorted,
            )
        }
        (ty, _) => ty,
    }
}

/// The Delta-readable field for an `arrow-avro` field; `path` names it in errors.
fn delta_field(field: &Field, path: &str) -> Result<Field, String> {
    let ty = delta_type(field.data_type(), path)?;
    let nullable = field.is_nullable() || matches!(field.data_type(), DataType::Union(..));
    Ok(Field::new(field.name(), ty, nullable))
}

fn delta_type(ty: &DataType, path: &str) -> Result<DataType, String> {
    Ok(match ty {
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32 => ty.clone(),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s)
            if *p <= 38 =>
        {
            DataType::Decimal128(*p, *s)
        }
        DataType::Timestamp(..) => timestamp_type(),
        DataType::Time32(_) | DataType::Time64(_) => DataType::Int64,
        DataType::Dictionary(_, value) if value.as_ref() == &DataType::Utf8 => DataType::Utf8,
        DataType::List(item) | DataType::LargeList(item) => DataType::List(Arc::new(
            delta_field(item, &format!("{path}[]"))?
                .with_name("element")
                .with_nullable(true),
        )),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| delta_field(f, &format!("{path}.{}", f.name())))
                .collect::<Result<Fields, _>>()?,
        ),
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(format!("field `{path}`: a map without key and value"));
            };
            let key = Field::new("key", DataType::Utf8, false);
            let value = delta_field(&kv[1], &format!("{path}{{}}"))?
                .with_name("value")
                .with_nullable(true);
            DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(Fields::from(vec![key, value])),
                    false,
                )),
                false,
            )
        }
        DataType::Union(members, _) => DataType::Struct(
            members
                .iter()
                .filter(|(_, f)| f.data_type() != &DataType::Null)
                .map(|(_, f)| {
                    Ok(delta_field(f, &format!("{path}.{}", f.name()))?.with_nullable(true))
                })
                .collect::<Result<Fields, String>>()?,
        ),
        other => {
            return Err(format!(
                "field `{path}` has Avro type mapped to {other}, which Delta readers cannot read"
            ))
        }
    })
}

/// Converts an `arrow-avro` array to its Delta-readable type (see [`delta_type`]).
fn conform(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, arrow::error::ArrowError> {
    use arrow::compute::cast;
    Ok(match (array.data_type(), target) {
        (source, target) if source == target => array.clone(),
        (DataType::Union(members, _), DataType::Struct(fields)) => {
            let union = array.as_union();
            let mut children = Vec::with_capacity(fields.len());
            let kept: Vec<(i8, &FieldRef)> = members
                .iter()
                .filter(|(_, f)| f.data_type() != &DataType::Null)
                .collect();
            for ((type_id, _), field) in kept.iter().zip(fields.iter()) {
                // Each row's value from its member, null where another member is set.
                let child = union.child(*type_id);
                let indices: arrow::array::UInt32Array = (0..union.len())
                    .map(|row| {
                        (union.type_id(row) == *type_id).then(|| union.value_offset(row) as u32)
                    })
                    .collect();
                let taken = arrow::compute::take(child.as_ref(), &indices, None)?;
                children.push(conform(&taken, field.data_type())?);
            }
            if children.is_empty() {
                return Ok(Arc::new(NullArray::new(array.len())));
            }
            Arc::new(StructArray::try_new(fields.clone(), children, None)?)
        }
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let source = array.as_struct();
            let children = source
                .columns()
                .iter()
                .zip(fields.iter())
                .map(|(c, f)| conform(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                source.nulls().cloned(),
            )?)
        }
        (DataType::List(_), DataType::List(item)) => {
            let list = array.as_list::<i32>();
            let values = conform(list.values(), item.data_type())?;
            Arc::new(arrow::array::ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?)
        }
        (DataType::Map(..), DataType::Map(entries, sorted)) => {
            let map = array.as_map();
            let DataType::Struct(kv) = entries.data_type() else {
                unreachable!("maps are built with struct entries")
            };
            let keys = cast(map.keys(), &DataType::Utf8)?;
            let values = conform(map.values(), kv[1].data_type())?;
            let entry_struct = StructArray::try_new(kv.clone(), vec![keys, values], None)?;
            Arc::new(MapArray::try_new(
                entries.clone(),
                map.offsets().clone(),
                entry_struct,
                map.nulls().cloned(),
                *sorted,
            )?)
        }
        (DataType::Time32(unit), DataType::Int64) | (DataType::Time64(unit), DataType::Int64) => {
            let values = cast(array, &DataType::Int64)?;
            let factor = match unit {
                TimeUnit::Second => 1_000_000,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1,
                TimeUnit::Nanosecond => 0,
            };
            let values = values.as_primitive::<arrow::datatypes::Int64Type>();
            Arc::new(if factor == 0 {
                values.unary::<_, arrow::datatypes::Int64Type>(|v| v / 1_000)
            } else {
                values.unary::<_, arrow::datatypes::Int64Type>(|v| v * factor)
            }) as ArrayRef
        }
        (DataType::Timestamp(_, None), DataType::Timestamp(..)) => {
            // Local timestamps: the wall-clock value, read as UTC.
            let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let micros = micros.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            Arc::new(
                TimestampMicrosecondArray::new(micros.values().clone(), micros.nulls().cloned())
                    .with_timezone("UTC"),
            )
        }
        _ => cast(array, target)?,
    })
}

/// How record bytes are framed.
#[derive(Debug, Clone)]
enum Framing {
    /// Magic byte 0, a 4-byte big-endian schema id, the body.
    Registry(Registry),
    /// The body alone, written with the table's schema.
    Plain,
}

/// The table's current schemas (they grow with additive evolution).
#[derive(Debug)]
struct Current {
    schema: TableSchema,
    table_schema: SchemaRef,
}

/// Decodes Avro records for one table and source.
#[derive(Debug, Clone)]
pub struct AvroDecoder {
    table: TableConfig,
    current: Arc<RwLock<Arc<Current>>>,
    extras: Extras,
    framing: Framing,
    /// Whether new writer schemas may add columns (a table typed by the
    /// whole schema and read through the registry).
    evolves: bool,
    /// Schema ids whose records cannot be taken, with the reason: unknown
    /// to the registry, or changing the table's schema incompatibly.
    unknown: Arc<Mutex<HashMap<u32, String>>>,
}

impl AvroDecoder {
    /// A decoder of registry-framed records, typed by `schema`.
    pub fn registry(
        table: &TableConfig,
        schema: TableSchema,
        registry: Registry,
    ) -> Result<Self, String> {
        Self::new(table, schema, Framing::Registry(registry))
    }

    /// A decoder of plain Avro bodies written with `schema`.
    pub fn plain(table: &TableConfig, schema: TableSchema) -> Result<Self, String> {
        Self::new(table, schema, Framing::Plain)
    }

    fn new(table: &TableConfig, schema: TableSchema, framing: Framing) -> Result<Self, String> {
        let evolves = table.columns.is_empty() && matches!(framing, Framing::Registry(_));
        let schema = project(table, schema)?;
        let (extras, current) = current(table, schema)?;
        Ok(Self {
            table: table.clone(),
            current: Arc::new(RwLock::new(Arc::new(current))),
            extras,
            framing,
            evolves,
            unknown: Arc::default(),
        })
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current.read().expect("schema lock").clone()
    }

    /// The table's Arrow schema: data, derived, then metadata columns. It
    /// grows when a writer schema adds fields (see [`super::evolve`]).
    pub fn table_schema(&self) -> SchemaRef {
        self.snapshot().table_schema.clone()
    }

    /// Takes a writer schema fetched for the first time: the table grows by
    /// the fields it adds; a schema that changes a field's type is refused
    /// (its records become dead letters with the reason).
    fn consider(&self, id: u32, writer: &str) {
        if !self.evolves {
            return;
        }
        let mut current = self.current.write().expect("schema lock");
        let reader = current.schema.avro.clone();
        let grown = super::evolve::evolve(&reader, writer).and_then(|grown| match grown {
            None => Ok(None),
            Some(text) => {
                let schema = TableSchema::from_avro(&text)?;
                current_of(&self.table, schema).map(Some)
            }
        });
        match grown {
            Ok(None) => {}
            Ok(Some(next)) => {
                let added = super::evolve::added_fields(&reader, writer);
                tracing::info!(table = %self.table.name, schema_id = id, added = ?added,
                    "a writer schema adds fields: the table gains them with its next commit");
                *current = Arc::new(next);
            }
            Err(reason) => {
                crate::telemetry::metrics::schema_refused(&self.table.name);
                tracing::warn!(table = %self.table.name, schema_id = id, %reason,
                    "writer schema refused: its records go to the dead-letter table");
                self.unknown.lock().expect("unknown ids lock").insert(
                    id,
                    format!("schema id {id} changes the table's schema in a way Delta readers cannot take: {reason}"),
                );
            }
        }
    }

    /// Fetches the writer schemas `records` name that are not cached yet.
    /// While the registry is unavailable it waits, retrying with backoff
    /// (consumption pauses; nothing is dead-lettered for it); `false` if
    /// `stop` fired first.
    pub async fn prepare(&self, records: &[Record], stop: &CancellationToken) -> bool {
        let Framing::Registry(registry) = &self.framing else {
            return true;
        };
        let named: HashSet<u32> = records.iter().filter_map(schema_id).collect();
        let mut wanted = named.clone();
        wanted.retain(|id| {
            registry.cached(*id).is_none()
                && !self
                    .unknown
                    .lock()
                    .expect("unknown ids lock")
                    .contains_key(id)
        });
        for id in wanted {
            let mut delay = Duration::from_millis(200);
            loop {
                match registry.schema(id).await {
                    Ok(writer) => {
                        self.consider(id, &writer);
                        break;
                    }
                    Err(RegistryError::NotFound(message)) => {
                        self.unknown
                            .lock()
                            .expect("unknown ids lock")
                            .insert(id, message);
                        break;
                    }
                    Err(error) => {
                        crate::telemetry::metrics::registry_unavailable(registry.url());
                        tracing::warn!(registry = registry.url(), schema_id = id, %error, retry_in = ?delay,
                            "schema registry unavailable; consumption waits");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
        for id in named {
            registry.label(id).await;
        }
        true
    }

    /// Decodes `records`, separating the ones that cannot be decoded.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        let current = self.snapshot();
        let mut pieces = Vec::new();
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        let mut start = 0;
        while start < records.len() {
            let end = (start + GROUP_RECORDS).min(records.len());
            let usable: Vec<usize> = (start..end)
                .filter(|&i| match self.framing_problem(&records[i]) {
                    Some(reason) => {
                        rejected.push((i, reason));
                        false
                    }
                    None => true,
                })
                .collect();
            self.decode_range(
                &current,
                records,
                &usable,
                0..usable.len(),
                &mut pieces,
                &mut kept,
                &mut rejected,
            );
            start = end;
        }
        rejected.sort_by_key(|(i, _)| *i);
        let raw = match pieces.len() {
            0 => None,
            1 => pieces.pop(),
            _ => Some(concat_batches(&current.schema.raw, &pieces).expect("same schema")),
        };
        let batch = raw.map(|raw| {
            let mut columns = Vec::with_capacity(current.table_schema.fields().len());
            for (column, field) in raw.columns().iter().zip(&current.schema.fields) {
                match conform(column, field.data_type()) {
                    Ok(c) => columns.push(c),
                    Err(e) => panic!("column `{}` converts by construction: {e}", field.name()),
                }
            }
            self.extras.append(&mut columns, records, &kept);
            RecordBatch::try_new(current.table_schema.clone(), columns)
                .expect("decoded columns match the table schema")
        });
        Decoded {
            batch,
            kept,
            rejected,
            ..Default::default()
        }
    }

    /// Where registry schema `id` is registered (`subject vN`), if known.
    pub fn schema_label(&self, id: u32) -> Option<String> {
        match &self.framing {
            Framing::Registry(registry) => registry.cached_label(id),
            Framing::Plain => None,
        }
    }

    /// The registry schema id `record` names (registry framing only).
    pub fn schema_id(&self, record: &Record) -> Option<u32> {
        match self.framing {
            Framing::Registry(_) => schema_id(record),
            Framing::Plain => None,
        }
    }

    /// Why a record cannot be decoded before looking at its body, if so.
    fn framing_problem(&self, record: &Record) -> Option<String> {
        let Framing::Registry(registry) = &self.framing else {
            return None;
        };
        let payload = &record.payload;
        if payload.len() < HEADER {
            return Some(format!(
                "{} bytes: shorter than the registry wire format's 5-byte header",
                payload.len()
            ));
        }
        if payload[0] != 0 {
            return Some(format!(
                "first byte 0x{:02x} is not the registry wire format's magic byte 0",
                payload[0]
            ));
        }
        let id = schema_id(record).expect("header checked");
        if let Some(message) = self.unknown.lock().expect("unknown ids lock").get(&id) {
            return Some(format!("unknown schema id {id}: {message}"));
        }
        registry
            .cached(id)
            .is_none()
            .then(|| format!("schema id {id} could not be fetched"))
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_range(
        &self,
        current: &Current,
        records: &[Record],
        usable: &[usize],
        range: Range<usize>,
        pieces: &mut Vec<RecordBatch>,
        kept: &mut Vec<usize>,
        rejected: &mut Vec<(usize, String)>,
    ) {
        let indices = &usable[range.clone()];
        if indices.is_empty() {
            return;
        }
        match self.try_decode(current, records, indices) {
            Ok(batches) => {
                pieces.extend(batches);
                kept.extend_from_slice(indices);
            }
            Err(reason) if indices.len() == 1 => rejected.push((indices[0], reason)),
            Err(_) => {
                let mid = range.start + range.len() / 2;
                self.decode_range(
                    current,
                    records,
                    usable,
                    range.start..mid,
                    pieces,
                    kept,
                    rejected,
                );
                self.decode_range(
                    current,
                    records,
                    usable,
                    mid..range.end,
                    pieces,
                    kept,
                    rejected,
                );
            }
        }
    }

    /// Decodes records that must yield exactly one row each, in order.
    fn try_decode(
        &self,
        current: &Current,
        records: &[Record],
        indices: &[usize],
    ) -> Result<Vec<RecordBatch>, String> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        let mut ids = BTreeMap::new();
        match &self.framing {
            Framing::Plain => {
                ids.insert(PLAIN_ID, current.schema.avro.clone());
            }
            Framing::Registry(registry) => {
                for &i in indices {
                    let id = schema_id(&records[i]).expect("framing checked");
                    if let std::collections::btree_map::Entry::Vacant(entry) = ids.entry(id) {
                        entry.insert(registry.cached(id).expect("framing checked"));
                    }
                }
            }
        }
        for (id, schema) in &ids {
            store
                .set(Fingerprint::Id(*id), AvroSchema::new(schema.to_string()))
                .map_err(|e| e.to_string())?;
        }
        let mut decoder = ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_reader_schema(AvroSchema::new(current.schema.avro.to_string()))
            .with_batch_size(indices.len())
            .build_decoder()
            .map_err(|e| format!("writer schema does not resolve against the table's: {e}"))?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut framed = Vec::new();
        for (n, &i) in indices.iter().enumerate() {
            let payload: &[u8] = match self.framing {
                Framing::Registry(_) => &records[i].payload,
                Framing::Plain => {
                    framed.clear();
                    framed.push(0);
                    framed.extend_from_slice(&PLAIN_ID.to_be_bytes());
                    framed.extend_from_slice(&records[i].payload);
                    &framed
                }
            };
            let mut rest = payload;
            while !rest.is_empty() {
                let used = decoder.decode(rest).map_err(|e| e.to_string())?;
                if used == 0 {
                    // A new writer schema starts after the rows buffered so far.
                    match decoder.flush().map_err(|e| e.to_string())? {
                        Some(batch) => {
                            rows += batch.num_rows();
                            batches.push(batch);
                        }
                        None => return Err("truncated Avro record: the body ends early".into()),
                    }
                    continue;
                }
                rest = &rest[used..];
            }
            let buffered = decoder.batch_size() - decoder.capacity();
            match (rows + buffered).cmp(&(n + 1)) {
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Less => return Err("truncated Avro record".into()),
                std::cmp::Ordering::Greater => {
                    return Err("bytes left over after the Avro record".into())
                }
            }
        }
        if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
            batches.push(batch);
        }
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if total != indices.len() {
            return Err("truncated Avro record".into());
        }
        Ok(batches)
    }
}

/// The extras and current schemas of `table` typed by `schema`.
fn current(table: &TableConfig, schema: TableSchema) -> Result<(Extras, Current), String> {
    let (extras, extra_fields) = Extras::new(table, &schema.fields)?;
    let mut fields = schema.fields.clone();
    fields.extend(extra_fields);
    Ok((
        extras,
        Current {
            schema,
            table_schema: Arc::new(Schema::new(fields)),
        },
    ))
}

/// The current schemas of `table` grown to `schema`.
fn current_of(table: &TableConfig, schema: TableSchema) -> Result<Current, String> {
    current(table, schema).map(|(_, current)| current)
}

/// The schema id of a registry-framed record.
fn schema_id(record: &Record) -> Option<u32> {
    let header = record.payload.get(..HEADER)?;
    (header[0] == 0).then(|| u32::from_be_bytes(header[1..].try_into().expect("4 bytes")))
}

/// Keeps the declared columns of a table that lists them (a projection of
/// the schema, checked against it); all of them otherwise.
fn project(table: &TableConfig, schema: TableSchema) -> Result<TableSchema, String> {
    if table.columns.is_empty() {
        return Ok(schema);
    }
    let mut fields = Vec::new();
    let mut keep = Vec::new();
    for column in &table.columns {
        let index = schema
            .fields
            .iter()
            .position(|f| f.name() == &column.name)
            .ok_or_else(|| {
                format!(
                    "column `{}` is not in the Avro schema (fields: {})",
                    column.name,
                    schema
                        .fields
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let declared = crate::table::schema::parse_type(&column.type_name)?;
        let actual = schema.fields[index].data_type();
        if &declared != actual {
            return Err(format!(
                "column `{}` is declared {} but the Avro schema gives {actual}",
                column.name, column.type_name
            ));
        }
        fields.push(schema.fields[index].clone());
        keep.push(index);
    }
    let avro = project_avro(
        &schema.avro,
        &table
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
    )?;
    let raw = Arc::new(Schema::new(
        keep.iter()
            .map(|&i| schema.raw.field(i).clone())
            .collect::<Vec<_>>(),
    ));
    Ok(TableSchema {
        avro: Arc::new(avro),
        raw,
        fields,
    })
}

/// The Avro record schema `text` keeping only the top-level fields `names`.
fn project_avro(text: &str, names: &[&str]) -> Result<String, String> {
    let mut json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let fields = json["fields"]
        .as_array()
        .ok_or("the Avro record has no fields")?
        .iter()
        .filter(|f| f["name"].as_str().is_some_and(|n| names.contains(&n)))
        .cloned()
        .collect();
    json["fields"] = serde_json::Value::Array(fields);
    Ok(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"Ride","fields":[
        {"name":"id","type":"string","doc":"the ride"},
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"city","type":{"type":"enum","name":"City","symbols":["LON","PAR"]}},
        {"name":"fare","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
        {"name":"tip","type":["null","double"],"default":null},
        {"name":"pay","type":["string","long"]},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"attrs","type":{"type":"map","values":"long"}}
    ]}"#;

    #[test]
    fn avro_types_map_to_delta_readable_ones() {
        let schema = TableSchema::from_avro(SCHEMA).unwrap();
        let types: Vec<(String, DataType)> = schema
            .fields
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(types[0], ("id".into(), DataType::Utf8));
        assert_eq!(types[1].1, timestamp_type());
        assert_eq!(types[2].1, DataType::Utf8, "enums are strings");
        assert_eq!(types[3].1, DataType::Decimal128(10, 2));
        assert_eq!(types[4].1, DataType::Float64);
        assert!(schema.fields[4].is_nullable());
        let DataType::Struct(members) = &types[5].1 else {
            panic!("a non-null union is a struct: {:?}", types[5]);
        };
        assert_eq!(members.len(), 2);
        assert!(matches!(types[6].1, DataType::List(_)));
        assert!(matches!(types[7].1, DataType::Map(_, false)));
        assert_eq!(schema.fields[0].metadata()[COMMENT], "the ride");
    }

    #[test]
    fn docs_of_nested_fields_become_their_comments() {
        let schema = TableSchema::from_avro(
            r#"{"type":"record","name":"Ride","namespace":"demo","fields":[
                {"name":"pickup","type":["null",{"type":"record","name":"Point","fields":[
                    {"name":"lat","type":"double","doc":"Latitude"}]}]},
                {"name":"dropoff","type":"demo.Point"},
                {"name":"stops","type":{"type":"array","items":"Point"}},
                {"name":"legs","type":{"type":"map","values":{"type":"record","name":"Leg",
                    "fields":[{"name":"km","type":"double","doc":"Length"}]}}}
            ]}"#,
        )
        .unwrap();
        let comment = |ty: &DataType| -> String {
            let DataType::Struct(fields) = ty else {
                panic!("a struct: {ty:?}")
            };
            fields[0].metadata()[COMMENT].clone()
        };
        assert_eq!(comment(schema.fields[0].data_type()), "Latitude");
        assert_eq!(
            comment(schema.fields[1].data_type()),
            "Latitude",
            "by full name"
        );
        let DataType::List(item) = schema.fields[2].data_type() else {
            panic!("a list")
        };
        assert_eq!(
            comment(item.data_type()),
            "Latitude",
            "by short name, in an array"
        );
        let DataType::Map(entries, _) = schema.fields[3].data_type() else {
            panic!("a map")
        };
        let DataType::Struct(kv) = entries.data_type() else {
            panic!("entries")
        };
        assert_eq!(comment(kv[1].data_type()), "Length", "in map values");
    }

    #[test]
    fn durations_and_non_records_are_refused_naming_the_field() {
        let duration = r#"{"type":"record","name":"R","fields":[{"name":"wait","type":{"type":"fixed","name":"D","size":12,"logicalType":"duration"}}]}"#;
        let error = TableSchema::from_avro(duration).unwrap_err();
        assert!(error.contains("wait"), "{error}");
        assert!(TableSchema::from_avro(r#""string""#)
            .unwrap_err()
            .contains("record"));
    }
}
