//! The Protobuf decoder of one table and source: plain messages of a fixed
//! type (descriptor sets), or registry-framed messages whose schema id
//! names the writer's descriptors (see [`super::protobuf_registry`]).
//!
//! With a registry the table follows its writers: a schema that adds
//! fields (top level or nested) grows the table, which commits the new
//! columns with the first rows that carry them; a schema that changes a
//! field's type, or names another message, is refused and its records go
//! to the dead-letter table with the reason. Records are decoded with their
//! writer's own plan, then widened to the table's columns (fields the
//! writer lacks read as null).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use prost_reflect::MessageDescriptor;
use tokio_util::sync::CancellationToken;

use super::columns::Extras;
use super::protobuf::{append_message, parse, plan_message, MessagePlan, StructCol};
use super::protobuf_registry::{header, message_at, pool_of};
use super::registry::{Registry, RegistryError};
use super::Decoded;
use crate::config::TableConfig;
use crate::source::Record;

/// Where a writer's message sits: schema id and message indexes.
type WriterKey = (u32, Vec<i32>);

/// A writer's plan, or why its records cannot be taken.
type Writer = Result<Arc<MessagePlan>, String>;

/// The table's current columns (they grow with additive evolution).
#[derive(Debug)]
struct Current {
    data: Fields,
    data_schema: SchemaRef,
    table_schema: SchemaRef,
}

/// Decodes Protobuf records of one message type for one table.
#[derive(Debug, Clone)]
pub struct ProtobufDecoder {
    table: String,
    message: String,
    /// The table's own message plan (plain framing decodes with it).
    plan: Arc<MessagePlan>,
    current: Arc<RwLock<Arc<Current>>>,
    extra_fields: Vec<Field>,
    extras: Extras,
    registry: Option<Registry>,
    writers: Arc<Mutex<HashMap<WriterKey, Writer>>>,
}

impl ProtobufDecoder {
    /// A decoder of plain `message` records typing `table`.
    pub fn new(table: &TableConfig, message: &MessageDescriptor) -> Result<Self, String> {
        Self::build(table, message, None)
    }

    /// A decoder of registry-framed records typing `table` by `message`
    /// (the subject's latest schema); other writer schemas come from `registry`.
    pub fn registry(
        table: &TableConfig,
        message: &MessageDescriptor,
        registry: Registry,
    ) -> Result<Self, String> {
        Self::build(table, message, Some(registry))
    }

    fn build(
        table: &TableConfig,
        message: &MessageDescriptor,
        registry: Option<Registry>,
    ) -> Result<Self, String> {
        if !table.columns.is_empty() {
            return Err(format!(
                "table `{}` declares columns; a Protobuf table takes its columns from message `{}` (omit `columns`)",
                table.name,
                message.full_name()
            ));
        }
        let mut stack = vec![message.full_name().to_string()];
        let plan = plan_message(message, message.full_name(), &mut stack)?;
        // Field comments (at every depth) are in the plan's fields.
        let data: Fields = plan.fields.clone();
        let data_vec: Vec<Field> = data.iter().map(|f| f.as_ref().clone()).collect();
        let (extras, extra_fields) = Extras::new(table, &data_vec)?;
        Ok(Self {
            table: table.name.clone(),
            message: message.full_name().to_string(),
            plan: Arc::new(plan),
            current: Arc::new(RwLock::new(Arc::new(current(data, &extra_fields)))),
            extra_fields,
            extras,
            registry,
            writers: Arc::default(),
        })
    }

    /// The message's full name.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current.read().expect("schema lock").clone()
    }

    /// The table's Arrow schema: the message's fields, derived, then
    /// metadata columns. With a registry it grows when a writer adds fields.
    pub fn table_schema(&self) -> SchemaRef {
        self.snapshot().table_schema.clone()
    }

    /// Where registry schema `id` is registered (`subject vN`), if known.
    pub fn schema_label(&self, id: u32) -> Option<String> {
        self.registry.as_ref()?.cached_label(id)
    }

    /// The registry schema id `record` names (registry framing only).
    pub fn schema_id(&self, record: &Record) -> Option<u32> {
        self.registry.as_ref()?;
        header(&record.payload).ok().map(|h| h.id)
    }

    /// Fetches the writer schemas `records` name that are not known yet.
    /// While the registry is unavailable it waits, retrying with backoff
    /// (consumption pauses; nothing is dead-lettered for it); `false` if
    /// `stop` fired first.
    pub async fn prepare(&self, records: &[Record], stop: &CancellationToken) -> bool {
        let Some(registry) = &self.registry else {
            return true;
        };
        let named: HashSet<u32> = records
            .iter()
            .filter_map(|r| header(&r.payload).ok())
            .map(|h| h.id)
            .collect();
        let wanted: HashSet<WriterKey> = {
            let writers = self.writers.lock().expect("writers lock");
            records
                .iter()
                .filter_map(|r| header(&r.payload).ok())
                .map(|h| (h.id, h.indexes))
                .filter(|key| !writers.contains_key(key))
                .collect()
        };
        for key in wanted {
            let mut delay = Duration::from_millis(200);
            let writer = loop {
                match self.resolve(registry, &key).await {
                    Ok(writer) => break writer,
                    Err(error) => {
                        crate::telemetry::metrics::registry_unavailable(registry.url());
                        tracing::warn!(registry = registry.url(), schema_id = key.0, %error, retry_in = ?delay,
                            "schema registry unavailable; consumption waits");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            };
            let writer = writer.and_then(|plan| self.consider(key.0, plan));
            if let Err(reason) = &writer {
                crate::telemetry::metrics::schema_refused(&self.table);
                tracing::warn!(table = %self.table, schema_id = key.0, %reason,
                    "writer schema refused: its records go to the dead-letter table");
            }
            self.writers
                .lock()
                .expect("writers lock")
                .insert(key, writer);
        }
        for id in named {
            registry.label(id).await;
        }
        true
    }

    /// The plan of the writer at `key`; `Err` only while the registry is
    /// unavailable (or refuses to answer), so the caller retries.
    async fn resolve(&self, registry: &Registry, key: &WriterKey) -> Result<Writer, RegistryError> {
        let (id, indexes) = key;
        let entry = match registry.protobuf_by_id(*id).await {
            Ok(entry) => entry,
            Err(RegistryError::NotFound(message)) => {
                return Ok(Err(format!("unknown schema id {id}: {message}")))
            }
            Err(error) => return Err(error),
        };
        let (pool, file) = match pool_of(registry, &entry).await {
            Ok(found) => found,
            Err(RegistryError::NotFound(message) | RegistryError::Invalid(message)) => {
                return Ok(Err(format!("schema id {id}: {message}")))
            }
            Err(error) => return Err(error),
        };
        let message = match message_at(&pool, &file, indexes) {
            Ok(message) => message,
            Err(reason) => return Ok(Err(format!("schema id {id}: {reason}"))),
        };
        if message.full_name() != self.message {
            return Ok(Err(format!(
                "schema id {id} (message indexes {indexes:?}) is message `{}`, not the table's `{}`",
                message.full_name(),
                self.message
            )));
        }
        let mut stack = vec![message.full_name().to_string()];
        Ok(plan_message(&message, message.full_name(), &mut stack)
            .map(Arc::new)
            .map_err(|reason| format!("schema id {id}: {reason}")))
    }

    /// Takes a writer's plan: the table grows by the fields it adds; a
    /// field whose type differs from the table's refuses the writer.
    fn consider(&self, id: u32, plan: Arc<MessagePlan>) -> Writer {
        let mut current = self.current.write().expect("schema lock");
        if let Some(conflict) = type_change(&current.data, &plan.fields, "") {
            return Err(format!(
                "schema id {id} changes the table's schema in a way Delta readers cannot take: {conflict}"
            ));
        }
        if crate::table::schema::adds_fields(&current.data, &plan.fields) {
            let grown = crate::table::schema::merge_fields(&current.data, &plan.fields);
            let added: Vec<&str> = plan
                .fields
                .iter()
                .filter(|f| current.data.find(f.name()).is_none())
                .map(|f| f.name().as_str())
                .collect();
            tracing::info!(table = %self.table, schema_id = id, top_level_added = ?added,
                "a writer schema adds fields: the table gains them with its next commit");
            *current = Arc::new(self::current(grown, &self.extra_fields));
        }
        Ok(plan)
    }

    /// Decodes `records`, rejecting each one that is not a valid message.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        let current = self.snapshot();
        let writers = self.writers.lock().expect("writers lock").clone();
        let mut pieces: Vec<RecordBatch> = Vec::new();
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        let mut open: Option<(Arc<MessagePlan>, StructCol)> = None;
        for (i, record) in records.iter().enumerate() {
            let (plan, body) = match self.writer_of(&writers, record) {
                Ok(found) => found,
                Err(reason) => {
                    rejected.push((i, reason));
                    continue;
                }
            };
            match parse(&plan, body) {
                Ok(parsed) => {
                    if open.as_ref().is_none_or(|(p, _)| !Arc::ptr_eq(p, &plan)) {
                        if let Some((_, mut col)) = open.take() {
                            pieces.push(widened(&mut col, &current));
                        }
                        open = Some((plan.clone(), StructCol::new(&plan.fields)));
                    }
                    let (_, col) = open.as_mut().expect("opened above");
                    append_message(&plan, &parsed, col);
                    kept.push(i);
                }
                Err(reason) => {
                    rejected.push((i, format!("not a valid `{}`: {reason}", self.message)))
                }
            }
        }
        if let Some((_, mut col)) = open.take() {
            pieces.push(widened(&mut col, &current));
        }
        let batch = (!kept.is_empty()).then(|| {
            let data = match pieces.len() {
                1 => pieces.pop().expect("one piece"),
                _ => concat_batches(&current.data_schema, &pieces).expect("one schema"),
            };
            let mut columns = data.columns().to_vec();
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

    /// The plan to decode `record` with, and its message bytes.
    fn writer_of<'r>(
        &self,
        writers: &HashMap<WriterKey, Writer>,
        record: &'r Record,
    ) -> Result<(Arc<MessagePlan>, &'r [u8]), String> {
        if self.registry.is_none() {
            return Ok((self.plan.clone(), &record.payload));
        }
        let header = header(&record.payload)?;
        match writers.get(&(header.id, header.indexes)) {
            Some(Ok(plan)) => Ok((plan.clone(), &record.payload[header.body..])),
            Some(Err(reason)) => Err(reason.clone()),
            None => Err(format!("schema id {} could not be fetched", header.id)),
        }
    }
}

/// The current columns for `data` plus the extra fields.
fn current(data: Fields, extra_fields: &[Field]) -> Current {
    let mut all: Vec<Field> = data.iter().map(|f| f.as_ref().clone()).collect();
    all.extend(extra_fields.iter().cloned());
    Current {
        data_schema: Arc::new(Schema::new(data.clone())),
        data,
        table_schema: Arc::new(Schema::new(all)),
    }
}

/// The rows built in `col`, in the table's data columns.
fn widened(col: &mut StructCol, current: &Current) -> RecordBatch {
    let array = col.finish();
    let same = array.fields().len() == current.data.len()
        && array
            .fields()
            .iter()
            .zip(current.data.iter())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same {
        return RecordBatch::try_new(current.data_schema.clone(), array.columns().to_vec())
            .expect("the table's own columns");
    }
    crate::table::schema::widen(&RecordBatch::from(array), &current.data_schema)
        .expect("a writer's columns widen to the table's (checked when the writer was taken)")
}

/// A field both have whose type differs (structs, and lists of structs,
/// compared field by field; a field only one has is not a change).
fn type_change(table: &Fields, writer: &Fields, path: &str) -> Option<String> {
    writer.iter().find_map(|field| {
        let (_, existing) = table.find(field.name())?;
        let here = format!("{path}{}", field.name());
        match (existing.data_type(), field.data_type()) {
            (DataType::Struct(a), DataType::Struct(b)) => type_change(a, b, &format!("{here}.")),
            (DataType::List(a), DataType::List(b)) => match (a.data_type(), b.data_type()) {
                (DataType::Struct(x), DataType::Struct(y)) => {
                    type_change(x, y, &format!("{here}[]."))
                }
                (x, y) if x == y => None,
                (x, y) => Some(format!(
                    "field `{here}`: list of {x} in the table, of {y} in the schema"
                )),
            },
            (a, b) if a == b => None,
            (a, b) => Some(format!(
                "field `{here}`: {a} in the table, {b} in the schema"
            )),
        }
    })
}
