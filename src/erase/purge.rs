//! Physical erasure: once a deletion is older than the table's
//! `delta.deletedFileRetentionDuration` (7 days by default), the files it
//! removed are vacuumed and the transaction log is cut at a fresh checkpoint.
//!
//! The log holds a key's value in the `stats` (min/max) of the `add` actions
//! of the files that held it, in the commits that added them and in every
//! checkpoint since. A purge therefore (1) vacuums removed files past the
//! retention (and orphans), (2) writes a checkpoint of the current version,
//! which carries only live files (none holds the key) and tombstones (paths,
//! no statistics), and (3) deletes every commit and checkpoint before that
//! checkpoint, whatever the table's `delta.logRetentionDuration`: log expiry
//! for an erasure cannot wait the default 30 days, or a request filed late
//! in its month would miss its deadline. Time travel to versions before the
//! checkpoint ends with the purge.
//!
//! With the default retention a request is purged about 7 days after it is
//! applied, well inside the one-month deadline; `sluice forget status`
//! flags requests whose purge cannot happen before their deadline.

use std::sync::Arc;

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::operations::vacuum::Clock;
use deltalake::table::config::TablePropertiesExt as _;
use serde::Serialize;

use super::ledger::{EventKind, Ledger, LedgerEvent};
use super::{CrashPoint, EraseError, TableTarget};
use crate::maintain::vacuum::{vacuum, VacuumOptions};

/// What a purge of one table did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The table.
    pub table: String,
    /// Requests purged.
    pub requests: Vec<String>,
    /// Data files deleted by vacuum.
    pub files_vacuumed: u64,
    /// The checkpoint the log now starts at.
    pub checkpoint_version: i64,
    /// Log files (commits, checkpoints) deleted.
    pub log_files_deleted: u64,
}

/// A clock fixed at one instant (ms since the epoch).
#[derive(Debug)]
struct FixedClock(i64);

impl Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// Purges `target` for every request whose last deletion there is past the
/// table's retention as of `now_ms`; returns `None` when none is due.
pub async fn purge_table(
    ledger: &mut Ledger,
    target: &TableTarget,
    now_ms: i64,
    crash: Option<CrashPoint>,
) -> Result<Option<PurgeReport>, EraseError> {
    let mut table = target.open().await?;
    let retention = table
        .snapshot()?
        .table_config()
        .deleted_file_retention_duration();
    let retention_ms = retention.as_millis() as i64;
    let due: Vec<String> = ledger
        .requests()
        .await?
        .into_iter()
        .filter_map(|r| {
            let progress = r.tables.get(&target.name)?;
            let last = progress.deletions.last()?;
            (progress.purged.is_none() && last.at_ms + retention_ms <= now_ms).then_some(r.id)
        })
        .collect();
    if due.is_empty() {
        return Ok(None);
    }
    let options = VacuumOptions {
        retention,
        dry_run: false,
        force_short_retention: false,
        clock: Some(Arc::new(FixedClock(now_ms))),
    };
    let (vacuumed, vacuum_report) = vacuum(table, &options).await?;
    table = vacuumed;
    super::crash_if(crash, CrashPoint::AfterVacuum)?;
    table.update_state().await?;
    create_checkpoint(&table, None).await?;
    let version = table.version().unwrap_or(0);
    let deleted =
        cleanup_expired_logs_for(version, table.log_store().as_ref(), now_ms, None).await?;
    let report = PurgeReport {
        table: target.name.clone(),
        requests: due.clone(),
        files_vacuumed: vacuum_report.files.len() as u64,
        checkpoint_version: version as i64,
        log_files_deleted: deleted as u64,
    };
    let detail = serde_json::json!({
        "files_vacuumed": report.files_vacuumed,
        "checkpoint_version": report.checkpoint_version,
        "log_files_deleted": report.log_files_deleted,
        "retention_seconds": retention.as_secs(),
    })
    .to_string();
    let events: Vec<LedgerEvent> = due
        .iter()
        .map(|id| {
            let mut e = LedgerEvent::new(id, EventKind::Purged, now_ms);
            e.table = Some(target.name.clone());
            e.version = Some(version as i64);
            e.detail = Some(detail.clone());
            e
        })
        .collect();
    ledger.append(&events).await?;
    tracing::info!(table = %target.name, requests = due.len(), files = report.files_vacuumed,
        log_files = report.log_files_deleted, checkpoint = version, "erasure purged");
    Ok(Some(report))
}
