//! sluice streams Kafka topics, Kinesis streams and NDJSON files into Delta
//! Lake tables, exactly once.
//!
//! # Layout
//!
//! - [`config`]: typed TOML config and its validation.
//! - [`source`]: Kafka (consumer group on a thread), Kinesis (shards leased
//!   across the fleet) and NDJSON files; each resumes from the positions its
//!   table records.
//! - [`decode`]: JSON to Arrow in the table's schema; bad records are split off.
//! - [`ingest`]: the memory budget, the open batch and the per-table pipeline.
//! - [`table`]: Delta tables: creation, Parquet writing, fenced commits with
//!   source positions, the dead-letter table, lineage.
//! - [`maintain`]: compaction, Z-order, checkpoints and log cleanup,
//!   vacuum, and the background loop that runs them.
//! - [`status`]: what a table holds and whether its committed ranges add up.
//! - [`check`]: whether BigQuery and Spark can read a Delta table.
//! - [`demo`]: an in-process Kafka broker and a ride-hailing event generator.
//! - [`fleet`]: object-store leases shared by the workers of a fleet.
//! - [`telemetry`]: logs and counters.
//! - [`cli`]: one module per subcommand.

#![warn(missing_docs)]

pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod erase;
pub mod fleet;
pub mod ingest;
pub mod maintain;
pub mod serve;
pub mod source;
pub mod status;
pub mod table;
pub mod telemetry;
