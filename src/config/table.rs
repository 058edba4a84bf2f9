//! Table sections of the config: declared columns, derived partition columns,
//! source metadata columns and the subject-key column.

use serde::{Deserialize, Serialize};

/// A destination Delta table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name; also its directory under the lake root unless `uri` is set.
    pub name: String,
    /// The source or sources feeding this table: `source = "clicks"`, or
    /// `source = ["clicks", "orders_stream"]` to merge several into one table.
    #[serde(deserialize_with = "one_or_many")]
    pub source: Vec<String>,
    /// Explicit table location (path or URL); default `<lake.root>/<name>`.
    #[serde(default)]
    pub uri: Option<String>,
    /// The subject-key column (e.g. `user_id`) used by erasure and Z-order.
    pub key: String,
    /// Columns decoded from each JSON record. With a schema-carrying format
    /// (`avro`) they may be omitted: the table's columns come from the schema.
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// Partition columns: declared or derived column names.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Columns computed from other columns (e.g. `date` from `event_time`).
    #[serde(default)]
    pub derived: Vec<DerivedColumn>,
    /// Source coordinates stored with each row.
    #[serde(default)]
    pub metadata_columns: Vec<MetadataColumn>,
    /// Columns the maintenance loop Z-orders idle partitions by (e.g. `["user_id"]`).
    #[serde(default)]
    pub zorder_by: Vec<String>,
    /// Dead-letter table location; default `<lake.root>/<name>_dead_letters`.
    #[serde(default)]
    pub dead_letter_uri: Option<String>,
    /// What a JSON table does with fields it does not declare: `none` (the
    /// default: counted per name, not stored) or `add_columns` (added as
    /// nullable columns of the inferred type, in the commit of the first
    /// rows that carry them).
    #[serde(default)]
    pub evolve: Evolve,
    /// Delta table properties set when the table and its dead-letter table
    /// are created (e.g. `"delta.deletedFileRetentionDuration" = "interval 2 days"`);
    /// they override sluice's defaults and do not change existing tables.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// What the table holds, for the people who read it (the Delta
    /// `metaData.description`; at most 4,000 characters).
    #[serde(default)]
    pub description: Option<String>,
    /// Who to ask about it (the `sluice.owner` table property).
    #[serde(default)]
    pub owner: Option<String>,
    /// Free tags (the `sluice.tags` table property).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Change-event tables (`format = "debezium"`): keep each mutation's
    /// `before` image too, as the struct column `cdc_before`.
    #[serde(default)]
    pub before_image: bool,
    /// Change-event tables: `append` (the default) keeps every mutation as
    /// a row; `mirror` keeps one row per `primary_key`, the latest image.
    #[serde(default)]
    pub mode: TableMode,
    /// Mirror tables: the columns that identify a row of the source table.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Mirror tables: mark the rows a merge replaces in deletion vectors
    /// instead of rewriting the files that hold them (default `true`; a
    /// new table is created with Delta's `deletionVectors` feature, reader
    /// version 3). `false` creates tables without the feature, for readers
    /// that cannot apply deletion vectors, and makes every merge
    /// copy-on-write.
    #[serde(default)]
    pub deletion_vectors: Option<bool>,
}

impl TableConfig {
    /// A table found under the lake root rather than configured (made
    /// from a template): its name and key, nothing declared.
    pub fn discovered(name: &str, key: &str) -> Self {
        Self {
            name: name.to_string(),
            source: Vec::new(),
            uri: None,
            key: key.to_string(),
            columns: Vec::new(),
            partition_by: Vec::new(),
            derived: Vec::new(),
            metadata_columns: Vec::new(),
            zorder_by: Vec::new(),
            dead_letter_uri: None,
            evolve: Evolve::None,
            properties: Default::default(),
            description: None,
            owner: None,
            tags: Vec::new(),
            before_image: false,
            mode: TableMode::Append,
            primary_key: Vec::new(),
            deletion_vectors: None,
        }
    }

    /// Whether the table is created with deletion vectors (see `deletion_vectors`).
    pub fn uses_deletion_vectors(&self) -> bool {
        self.deletion_vectors
            .unwrap_or(self.mode == TableMode::Mirror)
    }

    /// The columns the maintenance loop Z-orders by: `zorder_by`, or for a
    /// mirror table that names none, its primary key (a merge's keys then
    /// sit in few files, so a merge rewrites few).
    pub fn zorder_columns(&self) -> Vec<String> {
        if self.zorder_by.is_empty() && self.mode == TableMode::Mirror {
            self.primary_key.clone()
        } else {
            self.zorder_by.clone()
        }
    }
}

/// What a table of change events keeps.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// One row per mutation (a mutation-log table).
    #[default]
    Append,
    /// One row per primary key: the source table's current state.
    Mirror,
}

/// One declared column.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name; also the records' field name unless `field` is set.
    pub name: String,
    /// The records' field name when it differs from the column name (a
    /// field such as `@timestamp` or `user-id`, whose name Spark and
    /// BigQuery do not take as a column name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Spark/Delta SQL type: `string`, `long`, `double`, `timestamp`, `array<..>`, ...
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether records may omit it; a missing non-nullable field dead-letters the record.
    #[serde(default = "yes")]
    pub nullable: bool,
    /// For `timestamp` columns: the unit of numeric epoch values.
    #[serde(default)]
    pub epoch_unit: EpochUnit,
}

impl ColumnConfig {
    /// The records' field this column is read from.
    pub fn field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.name)
    }
}

/// What a JSON table does with fields it does not declare.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Evolve {
    /// Count them per field name; store nothing.
    #[default]
    None,
    /// Add them as nullable columns (string, long, double, boolean, or struct of those).
    AddColumns,
}

/// Reads a string or a list of strings as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(name)) => Ok(vec![name]),
        Ok(OneOrMany::Many(names)) => Ok(names),
        Err(_) => Err(serde::de::Error::custom(
            "expected a source name or a list of source names",
        )),
    }
}

fn yes() -> bool {
    true
}

/// How numeric values of a `timestamp` column are read. Strings are always RFC 3339.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EpochUnit {
    /// Seconds, milliseconds or microseconds, told apart by magnitude
    /// (below 1e11: seconds; below 1e14: milliseconds; else microseconds).
    #[default]
    Auto,
    /// Seconds since the epoch (fractions allowed).
    Seconds,
    /// Milliseconds since the epoch.
    Millis,
    /// Microseconds since the epoch.
    Micros,
}

/// A column computed from another column.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedColumn {
    /// Name of the new column.
    pub name: String,
    /// A declared `timestamp` column.
    pub from: String,
    /// What to compute.
    pub transform: Transform,
}

/// Transforms for derived columns.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// The UTC calendar date (`date` type).
    Date,
    /// The UTC hour of day, 0-23 (`int` type).
    Hour,
}

/// Source coordinates that can be stored as columns.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MetadataColumn {
    /// `_source_stream` (string): Kafka topic or file set.
    SourceStream,
    /// `_source_partition` (string): Kafka partition number or file path.
    SourcePartition,
    /// `_source_position` (long): Kafka offset or line number.
    SourcePosition,
    /// `_source_time` (timestamp): Kafka message timestamp, if any.
    SourceTime,
    /// `_ingest_time` (timestamp): when sluice decoded the record.
    IngestTime,
}

impl MetadataColumn {
    /// The column name in the table.
    pub fn column_name(self) -> &'static str {
        match self {
            MetadataColumn::SourceStream => "_source_stream",
            MetadataColumn::SourcePartition => "_source_partition",
            MetadataColumn::SourcePosition => "_source_position",
            MetadataColumn::SourceTime => "_source_time",
            MetadataColumn::IngestTime => "_ingest_time",
        }
    }
}
