//! Vacuum: delete data files the table no longer references.
//!
//! Files removed from the table longer ago than the retention (default 7
//! days) are deleted, and so are orphans: files no commit ever referenced
//! (a batch dropped by fencing, a crashed writer, an aborted compaction bin),
//! once they are older than the retention, so a file another worker is
//! writing right now is never touched. A retention shorter than the table's
//! `delta.deletedFileRetentionDuration` is refused unless explicitly forced:
//! readers and lagging writers may still need those files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::DeltaTable;
use serde::Serialize;

use super::MaintainError;

/// Default retention for removed files.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How to vacuum.
#[derive(Debug, Clone)]
pub struct VacuumOptions {
    /// Keep files removed (or written) more recently than this.
    pub retention: Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// Allow a retention below the table's `deletedFileRetentionDuration`.
    pub force_short_retention: bool,
    /// Clock for "now" (tests inject one).
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            dry_run: false,
            force_short_retention: false,
            clock: None,
        }
    }
}

/// What a vacuum did (or would do, in a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VacuumReport {
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// Files deleted (or to delete).
    pub files: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Vacuums `table`, returning the reloaded table and the report.
pub async fn vacuum(
    mut table: DeltaTable,
    options: &VacuumOptions,
) -> Result<(DeltaTable, VacuumReport), MaintainError> {
    let started = Instant::now();
    table.update_state().await?;
    let minimum = table
        .snapshot()?
        .table_config()
        .deleted_file_retention_duration();
    if options.retention < minimum && !options.force_short_retention {
        return Err(MaintainError::Invalid(format!(
            "retention {} is shorter than the table's delta.deletedFileRetentionDuration ({}); \
             readers and lagging writers may still need those files (force with --force)",
            humantime::format_duration(options.retention),
            humantime::format_duration(minimum)
        )));
    }
    let mut builder = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(
            chrono::Duration::from_std(options.retention)
                .map_err(|e| MaintainError::Invalid(format!("retention out of range: {e}")))?,
        )
        .with_enforce_retention_duration(!options.force_short_retention)
        .with_dry_run(options.dry_run);
    if let Some(clock) = &options.clock {
        builder = builder.with_clock(clock.clone());
    }
    let (table, metrics) = builder.await?;
    tracing::info!(
        files = metrics.files_deleted.len(),
        dry_run = metrics.dry_run,
        "vacuum done"
    );
    Ok((
        table,
        VacuumReport {
            dry_run: metrics.dry_run,
            files: metrics.files_deleted,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}
