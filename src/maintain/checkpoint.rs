//! Checkpoints and expired-log cleanup.
//!
//! A checkpoint is a classic single-file Parquet checkpoint of the current
//! version with `_last_checkpoint` updated, so readers replay at most the
//! commits since it. Tables sluice creates also checkpoint on their own every
//! `delta.checkpointInterval` commits (10) from the commit path. Log cleanup
//! deletes commit files and checkpoints older than
//! `delta.logRetentionDuration` that precede the newest checkpoint, which
//! keeps snapshot loading flat as history grows; time travel before the
//! retained log ends with it. Log cleanup runs here (from `sluice
//! checkpoint` and the maintenance loop's daily vacuum), never from the
//! commit path: delta-rs's own per-commit cleanup lists the whole log after
//! every commit, which made commits slower as history grew.

use std::time::Instant;

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::DeltaTable;
use serde::Serialize;

use super::MaintainError;

/// What a checkpoint run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointMetrics {
    /// The version checkpointed.
    pub version: i64,
    /// Expired log files deleted.
    pub log_files_deleted: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Checkpoints the latest version, then (if `cleanup`) deletes log files
/// older than the table's log retention, as of `now_ms`.
pub async fn checkpoint(
    table: &mut DeltaTable,
    cleanup: bool,
    now_ms: i64,
) -> Result<CheckpointMetrics, MaintainError> {
    let started = Instant::now();
    table.update_state().await?;
    create_checkpoint(table, None).await?;
    let snapshot = table.snapshot()?;
    let version = snapshot.version();
    let mut deleted = 0;
    if cleanup {
        let retention = snapshot.table_config().log_retention_duration();
        let cutoff = now_ms - retention.as_millis() as i64;
        deleted =
            cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None).await?;
    }
    tracing::info!(version, log_files_deleted = deleted, "checkpoint written");
    Ok(CheckpointMetrics {
        version: version as i64,
        log_files_deleted: deleted as u64,
        seconds: started.elapsed().as_secs_f64(),
    })
}
