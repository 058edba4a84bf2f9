//! Every default value of the config, in one place.

use std::time::Duration;

/// Flush a table at most this long after its first buffered record.
pub const MAX_LATENCY: Duration = Duration::from_secs(300);
/// Flush a table once this many payload bytes are buffered.
pub const MAX_BYTES: u64 = 256 << 20;
/// Flush a table once this many records are buffered.
pub const MAX_ROWS: u64 = 2_000_000;
/// Roll Parquet files at this size.
pub const TARGET_FILE_SIZE: u64 = 128 << 20;
/// Worker-wide buffered payload budget.
pub const MEMORY_BUDGET: u64 = 512 << 20;
/// Time allowed to flush and commit on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Rows decoded from JSON in one Arrow batch.
pub const DECODE_CHUNK_ROWS: usize = 8192;
/// Parquet row group size in rows.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Parquet row group size cap in bytes (bounds the writer's in-memory row group).
pub const ROW_GROUP_BYTES: usize = 64 << 20;
/// zstd level for data files.
pub const ZSTD_LEVEL: i32 = 3;
/// Files below this size count as small in `status`.
pub const SMALL_FILE_BYTES: u64 = 32 << 20;
