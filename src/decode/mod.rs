//! Decoding raw records into Arrow batches in a table's schema: JSON
//! against declared columns, Avro against the table's Avro schema (from a
//! schema registry or a schema file), Protobuf against a message type,
//! Debezium change events (JSON, or Avro and Protobuf envelopes through a registry).
//! See [`Decoder`].

pub mod avro;
pub mod columns;
pub mod debezium;
mod debezium_patch;
pub mod debezium_registry;
pub mod evolve;
pub mod json;
pub mod json_evolve;
pub mod json_keys;
pub mod protobuf;
pub mod protobuf_decoder;
pub mod protobuf_registry;
pub mod registry;
pub mod timestamp;

pub use json::{Decoded, DecoderError, JsonDecoder};

use std::time::Duration;

use crate::config::{Format, SourceConfig, TableConfig};
use crate::source::Record;

/// A table's decoder for one source.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// JSON against the declared columns.
    Json(JsonDecoder),
    /// JSON whose columns grow with the fields records carry.
    JsonEvolving(json_evolve::EvolvingJson),
    /// Avro against the table's Avro schema.
    Avro(Box<avro::AvroDecoder>),
    /// Protobuf messages of one type, from a descriptor set.
    Protobuf(Box<protobuf_decoder::ProtobufDecoder>),
    /// Debezium change events as mutation-log rows.
    Debezium(Box<debezium::DebeziumDecoder>),
    /// Debezium change events written by the Avro or Protobuf converter.
    DebeziumRegistry(Box<debezium_registry::RegistryChanges>),
}

impl Decoder {
    /// The table's Arrow schema (data, derived, then metadata columns).
    pub fn table_schema(&self) -> arrow::datatypes::SchemaRef {
        match self {
            Decoder::Json(d) => d.table_schema(),
            Decoder::JsonEvolving(d) => d.table_schema(),
            Decoder::Avro(d) => d.table_schema(),
            Decoder::Protobuf(d) => d.table_schema(),
            Decoder::Debezium(d) => d.table_schema(),
            Decoder::DebeziumRegistry(d) => d.table_schema(),
        }
    }

    /// Fetches what decoding `records` needs (writer schemas from the
    /// registry), waiting with backoff while the registry is unavailable;
    /// `false` if `stop` fired first.
    pub async fn prepare(
        &self,
        records: &[Record],
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        match self {
            Decoder::Json(_) | Decoder::Debezium(_) => true,
            Decoder::Protobuf(d) => d.prepare(records, stop).await,
            Decoder::JsonEvolving(d) => {
                d.prepare(records);
                true
            }
            Decoder::Avro(d) => d.prepare(records, stop).await,
            Decoder::DebeziumRegistry(d) => d.prepare(records, stop).await,
        }
    }

    /// Decodes `records`, separating the ones that cannot be decoded.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        match self {
            Decoder::Json(d) => d.decode(records),
            Decoder::JsonEvolving(d) => d.decode(records),
            Decoder::Avro(d) => d.decode(records),
            Decoder::Protobuf(d) => d.decode(records),
            Decoder::Debezium(d) => d.decode(records),
            Decoder::DebeziumRegistry(d) => d.decode(records),
        }
    }

    /// The registry schema id a record names, if its format has them.
    pub fn schema_id(&self, record: &Record) -> Option<u32> {
        match self {
            Decoder::Avro(d) => d.schema_id(record),
            Decoder::DebeziumRegistry(d) => d.schema_id(record),
            Decoder::Protobuf(d) => d.schema_id(record),
            _ => None,
        }
    }

    /// Where registry schema `id` is registered (`subject vN`), if known.
    pub fn schema_label(&self, id: u32) -> Option<String> {
        match self {
            Decoder::Avro(d) => d.schema_label(id),
            Decoder::DebeziumRegistry(d) => d.schema_label(id),
            Decoder::Protobuf(d) => d.schema_label(id),
            _ => None,
        }
    }
}

/// The decoder of `source`'s records for `table`. For Avro it reads the
/// table's schema first: the registry subject's latest version (waiting,
/// with backoff, while the registry is unavailable; `stop` ends the wait)
/// or the schema file, and checks the table's key, partition and Z-order
/// columns against it.
/// Every column name of the table, at every depth, must be one Spark and
/// BigQuery read without column mapping ([`crate::table::names`]).
pub async fn decoder_for(
    table: &TableConfig,
    source: &SourceConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(Decoder, String), DecoderError> {
    let (decoder, schema_source) = build_decoder(table, source, stop).await?;
    crate::table::names::check(decoder.table_schema().fields()).map_err(|reason| {
        DecoderError::Schema {
            table: table.name.clone(),
            source_name: source.format_spec().source.to_string(),
            reason,
        }
    })?;
    Ok((decoder, schema_source))
}

/// The decoder, and what typed the table (`sluice.schema`).
async fn build_decoder(
    table: &TableConfig,
    source: &SourceConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(Decoder, String), DecoderError> {
    let spec = source.format_spec();
    let problem = |reason: String| DecoderError::Schema {
        table: table.name.clone(),
        source_name: spec.source.to_string(),
        reason,
    };
    let decoder = match spec.format {
        Format::Json if table.evolve == crate::config::Evolve::AddColumns => {
            return Ok((
                Decoder::JsonEvolving(json_evolve::EvolvingJson::new(table)?),
                "columns declared in the config, fields added from records".into(),
            ))
        }
        Format::Json => {
            return Ok((
                Decoder::Json(JsonDecoder::new(table)?),
                "columns declared in the config".into(),
            ))
        }
        Format::Debezium if spec.registry.is_some() => {
            let registry_config = spec.registry.expect("checked");
            let registry =
                registry::Registry::new(registry_config).map_err(|e| problem(e.to_string()))?;
            let subject = spec
                .table_subject()
                .ok_or_else(|| problem("no subject to type the table".into()))?;
            let latest = latest_schema(&registry, &subject, stop)
                .await?
                .map_err(|e| problem(e.to_string()))?;
            let described = format!(
                "subject `{subject}` version {} (id {})",
                latest.version.map(|v| v.to_string()).unwrap_or("?".into()),
                latest.id
            );
            let in_subject = |e: String| problem(format!("{described}: {e}"));
            // The envelope is decoded whole; the table's columns are its image's.
            let envelope_table = TableConfig {
                columns: Vec::new(),
                derived: Vec::new(),
                metadata_columns: Vec::new(),
                partition_by: Vec::new(),
                ..table.clone()
            };
            let (envelope, kind) = match latest.kind.as_str() {
                "AVRO" => {
                    let schema =
                        avro::TableSchema::from_avro(&latest.schema).map_err(in_subject)?;
                    let envelope =
                        avro::AvroDecoder::registry(&envelope_table, schema, registry.clone())
                            .map_err(in_subject)?;
                    (
                        debezium_registry::Envelope::Avro(Box::new(envelope)),
                        "avro",
                    )
                }
                "PROTOBUF" => {
                    let entry = latest_protobuf(&registry, &subject, stop)
                        .await?
                        .map_err(|e| in_subject(e.to_string()))?;
                    let (pool, file) = protobuf_registry::pool_of(&registry, &entry)
                        .await
                        .map_err(|e| in_subject(e.to_string()))?;
                    let message = registry_message(&spec, &pool, &file).map_err(in_subject)?;
                    let in_message =
                        |e: String| in_subject(format!("message `{}`: {e}", message.full_name()));
                    protobuf::check_message(&message).map_err(in_message)?;
                    let envelope = protobuf_decoder::ProtobufDecoder::registry(
                        &envelope_table,
                        &message,
                        registry.clone(),
                    )
                    .map_err(in_message)?;
                    (
                        debezium_registry::Envelope::Protobuf(Box::new(envelope)),
                        "protobuf",
                    )
                }
                other => {
                    return Err(in_subject(format!(
                        "a {other} schema; Debezium envelopes are read as Avro or Protobuf"
                    )))
                }
            };
            // MongoDB's envelopes name some documents only in the record key.
            let mongo = matches!(
                envelope
                    .table_schema()
                    .field_with_name("after")
                    .map(|f| f.data_type()),
                Ok(arrow::datatypes::DataType::Utf8)
            );
            let keys = match mongo {
                true => key_envelope(&registry, &subject, &envelope_table, stop)
                    .await?
                    .map_err(problem)?,
                false => None,
            };
            let decoder = debezium_registry::RegistryChanges::new(table, envelope, keys)
                .map_err(in_subject)?;
            check_columns(table, &decoder.table_schema()).map_err(in_subject)?;
            check_primary_key(table, &decoder.table_schema()).map_err(in_subject)?;
            tracing::info!(table = %table.name, %subject, schema_id = latest.id, version = ?latest.version,
                kind, "change-event table typed from the registry's envelope");
            let source = format!(
                "debezium {kind} registry subject {subject} v{}",
                latest.version.map(|v| v.to_string()).unwrap_or("?".into())
            );
            return Ok((Decoder::DebeziumRegistry(Box::new(decoder)), source));
        }
        Format::Debezium => {
            return Ok((
                Decoder::Debezium(Box::new(debezium::DebeziumDecoder::new(table)?)),
                "debezium change events, row image declared in the config".into(),
            ))
        }
        Format::Protobuf if spec.registry.is_some() => {
            let registry_config = spec.registry.expect("checked");
            let registry =
                registry::Registry::new(registry_config).map_err(|e| problem(e.to_string()))?;
            let subject = spec
                .table_subject()
                .ok_or_else(|| problem("no subject to type the table".into()))?;
            let latest = latest_protobuf(&registry, &subject, stop)
                .await?
                .map_err(|e| problem(e.to_string()))?;
            let described = format!(
                "subject `{subject}` version {} (id {})",
                latest.version.map(|v| v.to_string()).unwrap_or("?".into()),
                latest.id.map(|v| v.to_string()).unwrap_or("?".into())
            );
            let (pool, file) = protobuf_registry::pool_of(&registry, &latest)
                .await
                .map_err(|e| problem(format!("{described}: {e}")))?;
            let message = registry_message(&spec, &pool, &file)
                .map_err(|e| problem(format!("{described}: {e}")))?;
            let typed_by = |e: String| {
                let how = match (spec.message, spec.topic_convention) {
                    (None, None) => " (the file's first message; name another with `message` or `topic_convention`)",
                    _ => "",
                };
                problem(format!("message `{}`{how}: {e}", message.full_name()))
            };
            protobuf::check_message(&message).map_err(typed_by)?;
            let decoder = protobuf_decoder::ProtobufDecoder::registry(table, &message, registry)
                .map_err(typed_by)?;
            check_columns(table, &decoder.table_schema()).map_err(typed_by)?;
            tracing::info!(table = %table.name, %subject, schema_id = ?latest.id, version = ?latest.version,
                message = decoder.message(), "table typed from the registry");
            let source = format!(
                "protobuf registry subject {subject} v{}, message {}",
                latest.version.map(|v| v.to_string()).unwrap_or("?".into()),
                decoder.message()
            );
            return Ok((Decoder::Protobuf(Box::new(decoder)), source));
        }
        Format::Protobuf => {
            let message = protobuf_message(&spec).map_err(problem)?;
            let decoder =
                protobuf_decoder::ProtobufDecoder::new(table, &message).map_err(problem)?;
            check_columns(table, &decoder.table_schema()).map_err(problem)?;
            tracing::info!(table = %table.name, message = decoder.message(), "table typed from the descriptor set");
            let source = format!(
                "protobuf descriptor set {}, message {}",
                spec.descriptor_set.unwrap_or("?"),
                decoder.message()
            );
            return Ok((Decoder::Protobuf(Box::new(decoder)), source));
        }
        Format::Avro => match (spec.registry, spec.schema_file) {
            (Some(registry_config), _) => {
                let registry =
                    registry::Registry::new(registry_config).map_err(|e| problem(e.to_string()))?;
                let subject = spec
                    .table_subject()
                    .ok_or_else(|| problem("no subject to type the table".into()))?;
                let latest = latest_schema(&registry, &subject, stop)
                    .await?
                    .map_err(|e| problem(e.to_string()))?;
                if latest.kind != "AVRO" {
                    return Err(problem(format!(
                        "schema registry {}: subject `{subject}` holds a {} schema, not AVRO",
                        registry.url(),
                        latest.kind
                    )));
                }
                let schema = avro::TableSchema::from_avro(&latest.schema).map_err(|e| {
                    problem(format!(
                        "subject `{subject}` version {:?} (id {}): {e}",
                        latest.version, latest.id
                    ))
                })?;
                tracing::info!(table = %table.name, %subject, schema_id = latest.id, version = ?latest.version,
                    "table typed from the registry");
                let source = format!(
                    "avro registry subject {subject} v{}",
                    latest.version.map(|v| v.to_string()).unwrap_or("?".into())
                );
                (
                    avro::AvroDecoder::registry(table, schema, registry).map_err(problem)?,
                    source,
                )
            }
            (None, Some(file)) => {
                let text = avro::read_schema_file(file).map_err(problem)?;
                let schema = avro::TableSchema::from_avro(&text).map_err(problem)?;
                (
                    avro::AvroDecoder::plain(table, schema).map_err(problem)?,
                    format!("avro schema file {file}"),
                )
            }
            (None, None) => match source {
                SourceConfig::File(files) => {
                    let text = container_schema(files).map_err(problem)?;
                    let schema = avro::TableSchema::from_avro(&text).map_err(problem)?;
                    (
                        avro::AvroDecoder::plain(table, schema).map_err(problem)?,
                        "avro container files' own schema".to_string(),
                    )
                }
                _ => return Err(problem("no registry and no schema_file".into())),
            },
        },
    };
    check_columns(table, &decoder.0.table_schema()).map_err(problem)?;
    Ok((Decoder::Avro(Box::new(decoder.0)), decoder.1))
}

/// The Protobuf message type of a source: its `message`, or the one its
/// topics name by `topic_convention` (all must name the same one).
pub fn protobuf_message(
    spec: &crate::config::FormatSpec<'_>,
) -> Result<prost_reflect::MessageDescriptor, String> {
    let path = spec
        .descriptor_set
        .ok_or("`format = \"protobuf\"` needs `descriptor_set`")?;
    let pool = protobuf::read_descriptor_set(path)?;
    match (spec.message, spec.topic_convention) {
        (Some(name), None) => pool.get_message_by_name(name).ok_or_else(|| {
            format!("message `{name}` is not in `{path}` (give its full name, `package.Message`)")
        }),
        (None, Some(convention)) => {
            let pattern = regex::Regex::new(convention)
                .map_err(|e| format!("topic_convention is not a regex: {e}"))?;
            if !pattern.capture_names().flatten().any(|n| n == "message") {
                return Err("topic_convention needs a `(?P<message>...)` group".into());
            }
            let mut found: Option<prost_reflect::MessageDescriptor> = None;
            for topic in spec.topics {
                let message = protobuf::resolve_message(&pool, &pattern, topic)?;
                if let Some(first) = &found {
                    if first.full_name() != message.full_name() {
                        return Err(format!(
                            "topics name different messages ({} and {}); one table takes one message type",
                            first.full_name(),
                            message.full_name()
                        ));
                    }
                }
                found = Some(message);
            }
            found.ok_or_else(|| "no topics to name a message".into())
        }
        _ => Err("give either `message` or `topic_convention`".into()),
    }
}

/// The message that types a table read through the registry: `message`,
/// the one the topic names by `topic_convention`, or the schema file's
/// first message (the wire format's default).
fn registry_message(
    spec: &crate::config::FormatSpec<'_>,
    pool: &prost_reflect::DescriptorPool,
    file: &str,
) -> Result<prost_reflect::MessageDescriptor, String> {
    let in_file = |m: &prost_reflect::MessageDescriptor| m.parent_file().name() == file;
    match (spec.message, spec.topic_convention) {
        (Some(name), _) => pool
            .get_message_by_name(name)
            .filter(in_file)
            .ok_or_else(|| format!("message `{name}` is not in the schema's file `{file}`")),
        (None, Some(convention)) => {
            let pattern = regex::Regex::new(convention)
                .map_err(|e| format!("topic_convention is not a regex: {e}"))?;
            let topic = spec.topics.first().ok_or("no topic to name the message")?;
            protobuf::resolve_message(pool, &pattern, topic)
        }
        (None, None) => protobuf_registry::message_at(pool, file, &[0]),
    }
}

/// The writer schema of an Avro file source: its files' header schema,
/// which every file must share.
fn container_schema(config: &crate::config::FileSourceConfig) -> Result<String, String> {
    let files = crate::source::file::FileSet::resolve(config).map_err(|e| e.to_string())?;
    let mut first: Option<(String, serde_json::Value)> = None;
    for path in files.files() {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let container = crate::source::container::Container::open(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed: serde_json::Value = serde_json::from_str(&container.schema)
            .map_err(|e| format!("{}: the header's schema: {e}", path.display()))?;
        match &first {
            None => first = Some((container.schema.clone(), parsed)),
            Some((_, schema)) if schema == &parsed => {}
            Some(_) => {
                return Err(format!(
                    "{} was written with another schema than the source's first file; give each schema its own source",
                    path.display()
                ))
            }
        }
    }
    first
        .map(|(text, _)| text)
        .ok_or_else(|| "no Avro files".to_string())
}

/// The decoder of a change-event topic's record keys, typed by the
/// `<topic>-key` subject next to the value's `<topic>-value`; `None` when
/// the keys are not registered (the JSON or string converter writes them).
async fn key_envelope(
    registry: &registry::Registry,
    value_subject: &str,
    table: &TableConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Result<Option<debezium_registry::Envelope>, String>, DecoderError> {
    let Some(subject) = value_subject
        .strip_suffix("-value")
        .map(|topic| format!("{topic}-key"))
    else {
        return Ok(Ok(None));
    };
    let latest = match latest_schema(registry, &subject, stop).await? {
        Ok(latest) => latest,
        Err(error) => {
            tracing::info!(table = %table.name, %subject, %error, "record keys are not registry-framed; read as JSON");
            return Ok(Ok(None));
        }
    };
    let built = match latest.kind.as_str() {
        "AVRO" => avro::TableSchema::from_avro(&latest.schema)
            .and_then(|schema| avro::AvroDecoder::registry(table, schema, registry.clone()))
            .map(|d| debezium_registry::Envelope::Avro(Box::new(d))),
        "PROTOBUF" => match latest_protobuf(registry, &subject, stop).await? {
            Ok(entry) => match protobuf_registry::pool_of(registry, &entry).await {
                Ok((pool, file)) => protobuf_registry::message_at(&pool, &file, &[0])
                    .and_then(|m| {
                        protobuf_decoder::ProtobufDecoder::registry(table, &m, registry.clone())
                    })
                    .map(|d| debezium_registry::Envelope::Protobuf(Box::new(d))),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        other => Err(format!("a {other} schema")),
    };
    Ok(built
        .map(Some)
        .map_err(|reason| format!("record key subject `{subject}`: {reason}")))
}

/// The latest schema of `subject`, waiting while the registry is unavailable.
async fn latest_schema(
    registry: &registry::Registry,
    subject: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Result<registry::Registered, registry::RegistryError>, DecoderError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match registry.latest(subject).await {
            Err(registry::RegistryError::Unavailable { url, reason }) => {
                crate::telemetry::metrics::registry_unavailable(&url);
                tracing::warn!(registry = %url, %subject, %reason, retry_in = ?delay,
                    "schema registry unavailable; waiting to type the table");
            }
            other => return Ok(other),
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(DecoderError::Stopped),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The latest Protobuf schema of `subject`, waiting while the registry is
/// unavailable.
async fn latest_protobuf(
    registry: &registry::Registry,
    subject: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Result<std::sync::Arc<registry::Entry>, registry::RegistryError>, DecoderError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match registry.protobuf_version(subject, "latest").await {
            Err(registry::RegistryError::Unavailable { url, reason }) => {
                crate::telemetry::metrics::registry_unavailable(&url);
                tracing::warn!(registry = %url, %subject, %reason, retry_in = ?delay,
                    "schema registry unavailable; waiting to type the table");
            }
            other => return Ok(other),
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(DecoderError::Stopped),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The rules of config validation that need the columns, for a table typed
/// by its source's schema: the key is a string or integer column, partition
/// and Z-order columns exist.
/// A mirror table's primary key against the schema its events carry: each
/// a string or integer column.
fn check_primary_key(table: &TableConfig, schema: &arrow::datatypes::Schema) -> Result<(), String> {
    use arrow::datatypes::DataType;
    for name in &table.primary_key {
        match schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(DataType::Utf8 | DataType::Int64 | DataType::Int32 | DataType::Int16) => {}
            Ok(other) => {
                return Err(format!(
                    "primary key `{name}` has type {other}; a primary key column is a string or an integer"
                ))
            }
            Err(_) => return Err(format!("primary key `{name}` is not a field of the row image")),
        }
    }
    Ok(())
}

fn check_columns(table: &TableConfig, schema: &arrow::datatypes::Schema) -> Result<(), String> {
    use arrow::datatypes::DataType;
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match crate::table::schema::field_at(schema.fields(), &table.key).map(|f| f.data_type()) {
        Some(DataType::Utf8 | DataType::Int64 | DataType::Int32 | DataType::Int16) => {}
        Some(other) => {
            return Err(format!(
                "key `{}` has type {other}; a key must be a string or integer",
                table.key
            ))
        }
        None => {
            return Err(format!(
                "key `{}` is not a column of the schema (columns: {})",
                table.key,
                names()
            ))
        }
    }
    for column in table.partition_by.iter().chain(&table.zorder_by) {
        if schema.field_with_name(column).is_err() {
            return Err(format!(
                "`{column}` (partition_by / zorder_by) is not a column of the schema (columns: {})",
                names()
            ));
        }
    }
    Ok(())
}
