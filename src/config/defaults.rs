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
/// A batch written in one go with fewer rows than this is compressed with
/// Snappy rather than zstd (cheaper to open per column; compaction
/// re-encodes small files with zstd).
pub const SMALL_BATCH_ROWS: usize = 4096;
/// Keys the bloom filter of such a batch's files is sized for (room for a
/// batch that grows after its first write).
pub const SMALL_BATCH_KEYS: usize = 4 * SMALL_BATCH_ROWS;
/// zstd level for data files.
pub const ZSTD_LEVEL: i32 = 3;
/// Zstandard level of the files a mirror table's merge writes (fast:
/// maintenance re-encodes them at [`ZSTD_LEVEL`]).
pub const MERGE_ZSTD_LEVEL: i32 = 1;
/// Rows of a writer's first chunk sampled to find columns that go without a
/// Parquet dictionary.
pub const DICTIONARY_SAMPLE_ROWS: usize = 8192;
/// Fewest non-null values in that sample to judge a column by.
pub const DICTIONARY_SAMPLE_MIN: usize = 1024;
/// A column whose sample holds more than this share of values that occur in
/// it once goes without one (a column of 5,000 distinct values sampled 5,000
/// times has about 37% such values; ids, coordinates and event times nearly
/// 100%).
pub const DICTIONARY_MAX_UNIQUE_SHARE: f64 = 0.8;
/// Files below this size count as small in `status`.
pub const SMALL_FILE_BYTES: u64 = 32 << 20;
/// How often the maintenance loop looks at each table.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(300);
/// Compact a partition once it has this many small files.
pub const COMPACT_MIN_SMALL_FILES: usize = 16;
/// Compaction and Z-order output size.
pub const COMPACT_TARGET_SIZE: u64 = 512 << 20;
/// Z-order a partition once no file arrived for this long.
pub const ZORDER_IDLE: Duration = Duration::from_secs(3600);
/// ... or once it holds this many unordered bytes.
pub const ZORDER_UNORDERED_BYTES: u64 = 1 << 30;
/// Memory for a Z-order sort.
pub const ZORDER_MEMORY_BUDGET: u64 = 1 << 30;
/// Vacuum files removed longer ago than this.
pub const VACUUM_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Vacuum this often.
pub const VACUUM_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Maintenance lease duration.
pub const LEASE_TTL: Duration = Duration::from_secs(600);
/// How often the ingest process applies pending erasure requests.
pub const ERASURE_INTERVAL: Duration = Duration::from_secs(600);
/// Time from an erasure request to its deadline (one month).
pub const ERASURE_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often ingestion re-reads the erasure ledger for keys to suppress.
pub const SUPPRESSION_REFRESH: Duration = Duration::from_secs(30);
/// False-positive rate of the bloom filter on the key column: low enough that
/// an erasure batch of a hundred keys still rules out most files unread.
pub const KEY_BLOOM_FPP: f64 = 0.001;
/// Where `sluice serve` answers /metrics, /healthz and /readyz.
pub const SERVICE_LISTEN: &str = "0.0.0.0:9464";
/// How long `/readyz` reports a drain before the pipelines stop fetching.
pub const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// Kinesis shard lease duration: a crashed worker's shards move to the
/// others after at most twice this.
pub const SHARD_LEASE_TTL: Duration = Duration::from_secs(10);

/// How often a pattern source (`topic_pattern`) looks for new topics.
pub const PATTERN_METADATA_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);
