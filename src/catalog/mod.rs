//! `sluice catalog`: every table of a lake, and what it is.
//!
//! The lake root is listed for tables (directories holding `_delta_log/`);
//! tables configured elsewhere (`uri`) are added. Each table is described
//! from its own Delta log, so the catalog holds for tables sluice did not
//! create too:
//!
//! - **descriptive**: description, owner, tags (`metaData.description`,
//!   `sluice.*` properties, see [`crate::table::about`]), what typed it and
//!   the registry schemas its commits name, columns with types and comments;
//! - **structural**: sources, partition and Z-order columns and the share of
//!   bytes already Z-ordered by them, the key column, related tables (the
//!   dead-letter table of a data table, tables fed by the same topic or the
//!   same topic family);
//! - **administrative**: first and last event time (the first top-level
//!   timestamp column's file statistics) and freshness, rows, bytes, files
//!   and small files, commits in the last 24 hours, completeness per source
//!   partition (the lineage check of `sluice status`), the last compaction,
//!   Z-order, vacuum and checkpoint, and the erasure requests still open
//!   for the table with their deadlines.
//!
//! A table that cannot be read is listed with the reason; the others are
//! still described.

pub mod gather;
pub mod html;
pub mod refused;
pub mod text;

use serde::Serialize;

use crate::status::PartitionStatus;

/// Every table of a lake.
#[derive(Debug, Clone, Serialize)]
pub struct Catalog {
    /// The lake root.
    pub root: String,
    /// When the catalog was read (RFC 3339).
    pub read_at: String,
    /// The tables, by name.
    pub tables: Vec<TableEntry>,
    /// Tables that could not be read, with the reason.
    pub unreadable: Vec<Unreadable>,
    /// Topics pattern sources found but made no table for, with the reason.
    pub refused_topics: Vec<refused::RefusedTopic>,
}

/// A table that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// Its name.
    pub name: String,
    /// Its location.
    pub url: String,
    /// Why.
    pub reason: String,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct TableEntry {
    /// Its name (its directory under the root).
    pub name: String,
    /// Its location.
    pub url: String,
    /// `data`, `dead_letters` or `erasure_ledger`.
    pub kind: String,
    /// Whether the config names it (a data table or its dead-letter table).
    pub configured: bool,
    /// What, who and how it is described.
    pub descriptive: Descriptive,
    /// Where it comes from and how it is laid out.
    pub structural: Structural,
    /// How far back, how fresh, how big, how complete.
    pub administrative: Administrative,
}

/// What a table is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Descriptive {
    /// `metaData.description`.
    pub description: Option<String>,
    /// `sluice.owner`.
    pub owner: Option<String>,
    /// `sluice.tags`.
    pub tags: Vec<String>,
    /// What typed it (`sluice.schema`).
    pub schema_source: Option<String>,
    /// Registry schemas its retained commits name (`subject vN (id N)`).
    pub schema_versions: Vec<String>,
    /// Its columns, nested ones by dotted path.
    pub columns: Vec<Column>,
}

/// One column.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// Name, or dotted path of a nested field.
    pub name: String,
    /// Delta type.
    pub data_type: String,
    /// Whether it may be null.
    pub nullable: bool,
    /// Its `comment` metadata.
    pub comment: Option<String>,
}

/// Where a table comes from and how it is laid out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Structural {
    /// `kafka:topic`, `kinesis:stream`, `file:path`.
    pub sources: Vec<String>,
    /// Partition columns.
    pub partition_columns: Vec<String>,
    /// Columns maintenance Z-orders by.
    pub zorder_columns: Vec<String>,
    /// Share of the table's bytes in files Z-ordered by those columns.
    pub zordered_share: Option<f64>,
    /// The subject-key column.
    pub key: Option<String>,
    /// A mirror table's primary key (one row per key), empty otherwise.
    pub primary_key: Vec<String>,
    /// The name template of the `[[table_templates]]` entry that made it.
    pub template: Option<String>,
    /// Its topic's naming-convention fields (`service` -> `rides-service`).
    pub convention: Vec<(String, String)>,
    /// The data table of a dead-letter table.
    pub dead_letters_of: Option<String>,
    /// Related tables: a data table's dead letters, tables fed by the same
    /// source or by topics of the same family (all but the last `.` part).
    pub related: Vec<String>,
}

/// How far back, how fresh, how big and how complete a table is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Administrative {
    /// Current version.
    pub version: i64,
    /// Rows, by file statistics (less those deletion vectors hide).
    pub rows: u64,
    /// Rows deletion vectors hide, in the bytes until compaction drops them.
    pub hidden_rows: u64,
    /// Bytes of live files.
    pub bytes: u64,
    /// Live files.
    pub files: u64,
    /// Live files below the small-file size.
    pub small_files: u64,
    /// The column event times are read from.
    pub event_time_column: Option<String>,
    /// The oldest event (RFC 3339).
    pub first_event: Option<String>,
    /// The newest event (RFC 3339).
    pub last_event: Option<String>,
    /// Age of the newest event, in seconds.
    pub freshness_seconds: Option<i64>,
    /// The latest commit (RFC 3339).
    pub last_commit: Option<String>,
    /// Commits in the 24 hours before the catalog was read.
    pub commits_last_24h: u64,
    /// Every source partition's commits start where the previous ended,
    /// and their counts add up.
    pub complete: bool,
    /// Records dead-lettered, over the retained history.
    pub dead_lettered: u64,
    /// Records suppressed under erasure requests, over the retained history.
    pub suppressed: u64,
    /// Per source partition: position and lineage.
    pub partitions: Vec<PartitionStatus>,
    /// The latest compaction (RFC 3339).
    pub last_compaction: Option<String>,
    /// The latest Z-order (RFC 3339).
    pub last_zorder: Option<String>,
    /// The latest vacuum (RFC 3339).
    pub last_vacuum: Option<String>,
    /// The latest checkpoint's version.
    pub last_checkpoint: Option<i64>,
    /// Erasure requests this table has not been purged of yet.
    pub open_erasures: Vec<OpenErasure>,
}

/// An erasure request still open for a table.
#[derive(Debug, Clone, Serialize)]
pub struct OpenErasure {
    /// The request id.
    pub id: String,
    /// `requested` (the key may still be in the table) or `deleted`
    /// (deleted, files and log not yet purged).
    pub state: String,
    /// The legal deadline (RFC 3339).
    pub deadline: String,
    /// Whether the deadline has passed.
    pub overdue: bool,
}

/// RFC 3339 of milliseconds since the epoch.
pub(crate) fn time_of(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `, N more hidden by deletion vectors` when rows are, for the size line.
pub(crate) fn hidden_note(hidden_rows: u64) -> String {
    match hidden_rows {
        0 => String::new(),
        n => format!(", {n} more rows hidden by deletion vectors until compaction"),
    }
}
