//! How a source's records are encoded, and where their schemas come from.

use serde::{Deserialize, Serialize};

/// A source's record encoding.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON document per record (files: per line); the table declares its columns.
    #[default]
    Json,
    /// Avro binary (Kafka sources): the schema registry wire format (magic
    /// byte 0, 4-byte schema id, body) with `[sources.registry]`, or plain
    /// bodies with `schema_file`.
    Avro,
    /// Protobuf (Kafka sources): messages of a type from a compiled
    /// descriptor set, fixed (`message`) or named by the topic (`topic_convention`).
    Protobuf,
    /// Debezium change events (JSON envelope, with or without the
    /// `schema`/`payload` wrapper): one row per mutation, the table
    /// declaring the row image's columns (see `decode::debezium`).
    Debezium,
}

impl Format {
    /// Whether records carry their schema, so a table may leave its
    /// columns to it (Avro, Protobuf); JSON and Debezium tables declare them.
    pub fn carries_schema(self) -> bool {
        matches!(self, Format::Avro | Format::Protobuf)
    }

    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
            Format::Debezium => "debezium",
        }
    }
}

/// A schema registry speaking Confluent Schema Registry's REST API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `https://registry.internal:8081` (TLS via the system roots).
    pub url: String,
    /// Basic-auth user (`${ENV}`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (`${ENV}`).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

/// The format settings of one source, borrowed from its config section.
#[derive(Debug, Clone, Copy)]
pub struct FormatSpec<'a> {
    /// The source's name.
    pub source: &'a str,
    /// The encoding.
    pub format: Format,
    /// The registry, for the registry wire format.
    pub registry: Option<&'a RegistryConfig>,
    /// An Avro schema file (`.avsc`) for plain Avro bodies.
    pub schema_file: Option<&'a str>,
    /// The registry subject whose latest schema types the table (default:
    /// `<topic>-value` of the source's only topic).
    pub subject: Option<&'a str>,
    /// The topics (Kafka), to name the default subject.
    pub topics: &'a [String],
    /// A compiled descriptor set (Protobuf).
    pub descriptor_set: Option<&'a str>,
    /// The message type, fixed (Protobuf).
    pub message: Option<&'a str>,
    /// A regex with a `message` group (and optionally `package`, `file`)
    /// that names each topic's message type (Protobuf).
    pub topic_convention: Option<&'a str>,
}

impl FormatSpec<'_> {
    /// Whether the records carry their schema, so the table's columns come
    /// from it (Avro, Protobuf, and Debezium envelopes through a registry).
    pub fn carries_schema(&self) -> bool {
        self.format.carries_schema() || (self.format == Format::Debezium && self.registry.is_some())
    }

    /// The subject that types the table, if any.
    pub fn table_subject(&self) -> Option<String> {
        match (self.subject, self.topics) {
            (Some(subject), _) => Some(subject.to_string()),
            (None, [topic]) => Some(format!("{topic}-value")),
            _ => None,
        }
    }
}
