//! Typed TOML configuration: the lake, batching policy, sources and tables.
//!
//! Every struct denies unknown keys, defaults live in [`defaults`], and
//! [`Config::validate`] checks the rules that span several keys, reporting
//! every problem with the key it concerns before anything is written.
//! Any string may reference an environment variable as `${NAME}` (secrets,
//! endpoints); an unset variable is an error naming it.
//!
//! ```toml
//! [lake]
//! root = "./lake"
//!
//! [batching]
//! max_latency = "5m"
//!
//! [[sources]]
//! kind = "kafka"
//! name = "rides"
//! brokers = "${KAFKA_BROKERS}"
//! topics = ["rides"]
//! group_id = "sluice-rides"
//!
//! [[tables]]
//! name = "rides"
//! source = "rides"
//! key = "user_id"
//! partition_by = ["date"]
//! columns = [
//!   { name = "user_id", type = "string", nullable = false },
//!   { name = "event_time", type = "timestamp" },
//! ]
//! derived = [{ name = "date", from = "event_time", transform = "date" }]
//! ```

pub mod defaults;
mod env;
pub mod format;
mod table;
pub mod template;
pub mod units;
mod validate;
mod validate_format;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use format::{Format, FormatSpec, RegistryConfig};
pub use table::{
    ColumnConfig, DerivedColumn, EpochUnit, Evolve, MetadataColumn, TableConfig, TableMode,
    Transform,
};
pub use template::TableTemplate;
pub use units::{ByteSize, Span};

/// Errors from reading, parsing or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the expected shape.
    #[error("config {path}: {message}")]
    Parse {
        /// The config path (or `<inline>`).
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// The config parsed but breaks one or more rules.
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One rule a config breaks: the key it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `tables[0].key`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where tables live.
    pub lake: LakeConfig,
    /// Flush policy and memory budget, shared by all tables.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Event sources.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Destination tables, each fed by one or more sources.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Tables made for the topics pattern sources find.
    #[serde(default)]
    pub table_templates: Vec<TableTemplate>,
    /// The background maintenance loop.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// GDPR erasure: deadline, background apply, suppression at ingest.
    #[serde(default)]
    pub erasure: ErasureConfig,
    /// `sluice serve`: the HTTP endpoints.
    #[serde(default)]
    pub service: ServiceConfig,
}

/// The worker's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: String,
    /// On SIGTERM, how long `/readyz` reports the drain before the pipelines
    /// stop fetching (lets load balancers and rollouts notice first).
    pub drain_delay: Span,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: defaults::SERVICE_LISTEN.to_string(),
            drain_delay: Span(defaults::DRAIN_DELAY),
        }
    }
}

/// How erasure requests are applied and enforced.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErasureConfig {
    /// Apply pending requests (and purge due ones) from the ingest process.
    pub enabled: bool,
    /// How often the ingest process looks at the ledger to apply and purge.
    pub interval: Span,
    /// Time from a request to its legal deadline.
    pub deadline: Span,
    /// How often ingestion re-reads the ledger for keys to suppress.
    pub suppression_refresh: Span,
    /// Secret for keyed hashing: the ledger then keeps HMAC-SHA-256 hashes
    /// of erased keys, not the keys (see `erase::hashing`). Give it as
    /// `"${NAME}"`; it is never written back out.
    #[serde(skip_serializing)]
    pub key_hash_secret: Option<String>,
}

impl ErasureConfig {
    /// The key hasher, when a secret is configured.
    pub fn key_hasher(&self) -> Option<crate::erase::hashing::KeyHasher> {
        self.key_hash_secret
            .as_deref()
            .map(crate::erase::hashing::KeyHasher::new)
    }
}

impl Default for ErasureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Span(defaults::ERASURE_INTERVAL),
            deadline: Span(defaults::ERASURE_DEADLINE),
            suppression_refresh: Span(defaults::SUPPRESSION_REFRESH),
            key_hash_secret: None,
        }
    }
}

/// When the ingest process compacts, Z-orders and vacuums its tables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run the loop at all.
    pub enabled: bool,
    /// How often each table is looked at.
    pub interval: Span,
    /// Compact a partition once it has this many small files.
    pub compact_min_small_files: usize,
    /// Files below this size are small.
    pub small_file_size: ByteSize,
    /// Compaction and Z-order output file size.
    pub compact_target_size: ByteSize,
    /// Z-order a partition (of a table with `zorder_by`) once no file has arrived for this long.
    pub zorder_idle: Span,
    /// ... or once it has this many unordered bytes.
    pub zorder_unordered_bytes: ByteSize,
    /// Memory for a Z-order sort; the rest spills to local disk.
    pub zorder_memory_budget: ByteSize,
    /// Vacuum removed and orphaned files older than this.
    pub vacuum_retention: Span,
    /// How often to vacuum (and expire old log files).
    pub vacuum_interval: Span,
    /// How long a maintenance lease lasts without renewal.
    pub lease_ttl: Span,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Span(defaults::MAINTENANCE_INTERVAL),
            compact_min_small_files: defaults::COMPACT_MIN_SMALL_FILES,
            small_file_size: ByteSize(defaults::SMALL_FILE_BYTES),
            compact_target_size: ByteSize(defaults::COMPACT_TARGET_SIZE),
            zorder_idle: Span(defaults::ZORDER_IDLE),
            zorder_unordered_bytes: ByteSize(defaults::ZORDER_UNORDERED_BYTES),
            zorder_memory_budget: ByteSize(defaults::ZORDER_MEMORY_BUDGET),
            vacuum_retention: Span(defaults::VACUUM_RETENTION),
            vacuum_interval: Span(defaults::VACUUM_INTERVAL),
            lease_ttl: Span(defaults::LEASE_TTL),
        }
    }
}

/// The lake root and how to reach it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// A local directory or an object-store URL (`file:///...`, `s3://bucket/prefix`,
    /// `az://container/prefix`, `abfss://...`, `gs://bucket/prefix`).
    pub root: String,
    /// Options passed to the object store (credentials, endpoint, region).
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
}

/// When a table's buffer is flushed into a commit, and how much may be buffered.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Flush at most this long after the first buffered record.
    pub max_latency: Span,
    /// Flush once this many payload bytes are buffered for a table.
    pub max_bytes: ByteSize,
    /// Flush once this many records are buffered for a table.
    pub max_rows: u64,
    /// Roll to a new Parquet file once the current one reaches this size.
    pub target_file_size: ByteSize,
    /// Worker-wide cap on buffered payload bytes; sources pause when it is reached.
    pub memory_budget: ByteSize,
    /// On shutdown, how long to spend flushing and committing what is buffered.
    pub shutdown_grace: Span,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_latency: Span(defaults::MAX_LATENCY),
            max_bytes: ByteSize(defaults::MAX_BYTES),
            max_rows: defaults::MAX_ROWS,
            target_file_size: ByteSize(defaults::TARGET_FILE_SIZE),
            memory_budget: ByteSize(defaults::MEMORY_BUDGET),
            shutdown_grace: Span(defaults::SHUTDOWN_GRACE),
        }
    }
}

/// An event source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// A config holds a handful of sources, read once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum SourceConfig {
    /// Kafka topics read by a consumer group.
    Kafka(KafkaSourceConfig),
    /// NDJSON files (plain or `.gz`): a file, a directory or a glob.
    File(FileSourceConfig),
    /// A Kinesis data stream whose shards the fleet shares through leases.
    Kinesis(KinesisSourceConfig),
}

impl SourceConfig {
    /// The source's format settings.
    pub fn format_spec(&self) -> FormatSpec<'_> {
        let mut spec = FormatSpec {
            source: self.name(),
            format: Format::Json,
            registry: None,
            schema_file: None,
            subject: None,
            topics: &[],
            descriptor_set: None,
            message: None,
            topic_convention: None,
        };
        match self {
            SourceConfig::Kafka(k) => {
                spec.format = k.format;
                spec.registry = k.registry.as_ref();
                spec.schema_file = k.schema_file.as_deref();
                spec.subject = k.subject.as_deref();
                spec.topics = &k.topics;
                spec.descriptor_set = k.descriptor_set.as_deref();
                spec.message = k.message.as_deref();
                spec.topic_convention = k.topic_convention.as_deref();
            }
            SourceConfig::File(f) => {
                spec.format = f.format;
                spec.descriptor_set = f.descriptor_set.as_deref();
                spec.message = f.message.as_deref();
            }
            SourceConfig::Kinesis(_) => {}
        }
        spec
    }

    /// The source's name, referenced by tables.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Kafka(k) => &k.name,
            SourceConfig::File(f) => &f.name,
            SourceConfig::Kinesis(k) => &k.name,
        }
    }
}

/// Where a Kafka partition with no recorded position starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained offset.
    #[default]
    Earliest,
    /// Only records produced after the partition is first assigned.
    Latest,
}

/// A Kafka source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Name referenced by tables.
    pub name: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics to subscribe to.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Instead of `topics`: a regex every topic of the source matches
    /// (`^prod\..+`), topics created later included; each topic's table
    /// comes from the first matching `[[table_templates]]` entry.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// How often the topic list is refreshed (`topic.metadata.refresh.interval.ms`;
    /// default 30s with `topic_pattern`, librdkafka's 5 minutes otherwise).
    #[serde(default)]
    pub metadata_refresh: Option<Span>,
    /// Consumer group shared by every worker.
    pub group_id: String,
    /// Start of partitions the table has no position for.
    #[serde(default)]
    pub start_from: StartFrom,
    /// librdkafka properties passed through (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How records are encoded (`json`, the default, or `avro`).
    #[serde(default)]
    pub format: Format,
    /// The schema registry of the registry wire format.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// An Avro schema file for plain Avro bodies (no registry framing).
    #[serde(default)]
    pub schema_file: Option<String>,
    /// The registry subject whose latest schema types the table (default `<topic>-value`).
    #[serde(default)]
    pub subject: Option<String>,
    /// A compiled descriptor set (`protoc --include_imports --descriptor_set_out`), for Protobuf.
    #[serde(default)]
    pub descriptor_set: Option<String>,
    /// The Protobuf message type of every topic (`pkg.Msg`).
    #[serde(default)]
    pub message: Option<String>,
    /// A regex with a `message` group (and optionally `package` and `file`)
    /// naming each topic's Protobuf message, e.g.
    /// `^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$`.
    #[serde(default)]
    pub topic_convention: Option<String>,
    /// The static member id (`group.instance.id`) this process joins the
    /// group with: set from the worker id by `sluice ingest` and `serve`
    /// (see [`Config::set_worker_id`]), never read from the file.
    #[serde(skip)]
    pub instance_id: Option<String>,
}

/// A Kinesis data stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// Name referenced by tables.
    pub name: String,
    /// The stream name.
    pub stream: String,
    /// AWS region (default: `AWS_REGION` / the AWS config chain, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (a Kinesis-compatible server, a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Access key id; with `secret_access_key`, replaces the AWS credential chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key (use `${ENV}` interpolation).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Start of shards the table has no position for.
    #[serde(default)]
    pub start_from: StartFrom,
    /// How long a shard lease lasts without renewal; a crashed worker's
    /// shards move after at most twice this.
    #[serde(default = "default_shard_lease_ttl")]
    pub lease_ttl: Span,
    /// What a shard reader does when the table's recorded position has
    /// been trimmed from the stream (the worker was away longer than the
    /// stream's retention): `fail` (the default) stops the pipeline naming
    /// the shard and the lost range; `skip` resumes at the oldest retained
    /// record and records the gap in the commit lineage.
    #[serde(default)]
    pub on_trimmed: OnTrimmed,
}

/// What a Kinesis shard reader does when its recorded position is trimmed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTrimmed {
    /// Stop the pipeline with an error naming the shard and the lost range.
    #[default]
    Fail,
    /// Resume at the oldest retained record; the gap shows in the lineage.
    Skip,
}

fn default_shard_lease_ttl() -> Span {
    Span(defaults::SHARD_LEASE_TTL)
}

/// An NDJSON file source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Name referenced by tables.
    pub name: String,
    /// A file, a directory (every `*.json`, `*.ndjson`, `*.jsonl`, optionally
    /// `.gz`; for Avro every `*.avro`; for Protobuf every `*.binpb`), or a glob.
    pub path: String,
    /// `json` (NDJSON, the default), `avro` (object container files, typed by
    /// their header's schema) or `protobuf` (length-delimited messages).
    #[serde(default)]
    pub format: Format,
    /// A compiled descriptor set, for Protobuf files.
    #[serde(default)]
    pub descriptor_set: Option<String>,
    /// The Protobuf message type of the files (`pkg.Msg`).
    #[serde(default)]
    pub message: Option<String>,
}

impl Config {
    /// Makes every Kafka source of this process a static group member
    /// named after `worker` (see [`crate::fleet::identity`]), unless its
    /// properties set `group.instance.id` themselves.
    pub fn set_worker_id(&mut self, worker: &str) {
        for source in &mut self.sources {
            if let SourceConfig::Kafka(k) = source {
                if !k.properties.contains_key("group.instance.id") {
                    k.instance_id = Some(crate::fleet::identity::instance_id(worker, &k.name));
                }
            }
        }
    }

    /// Reads, interpolates `${ENV}` references, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses config text without validating it.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let interpolated =
            env::interpolate(text, |name| std::env::var(name).ok()).map_err(|message| {
                ConfigError::Parse {
                    path: origin.to_string(),
                    message,
                }
            })?;
        toml::from_str(&interpolated).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Checks the rules that span several keys; returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The sources a table reads from (unknown names are skipped; `validate` reports them).
    pub fn sources_for<'a>(
        &'a self,
        table: &'a TableConfig,
    ) -> impl Iterator<Item = &'a SourceConfig> {
        table
            .source
            .iter()
            .filter_map(|name| self.sources.iter().find(|s| s.name() == name))
    }
}
