//! Vacuum: delete data files the table no longer references.
//!
//! Files removed from the table longer ago than the retention (default 7
//! days) are deleted, and so are orphans: files no commit ever referenced
//! (a batch dropped by fencing, a crashed writer, an aborted compaction bin),
//! once they are older than the retention, so a file another worker is
//! writing right now is never touched. A retention shorter than the table's
//! `delta.deletedFileRetentionDuration` is refused unless explicitly forced:
//! readers and lagging writers may still need those files. Kinesis position
//! sidecars below their shard's recorded position are deleted too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::DeltaTable;
use serde::Serialize;

use super::MaintainError;
use crate::source::kinesis::positions;
use object_store::ObjectStoreExt as _;

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
    /// Kinesis position sidecars deleted (or to delete): ordinals below
    /// their shard's recorded position.
    pub position_sidecars: usize,
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
    let position_sidecars = prune_position_sidecars(&table, options.dry_run).await?;
    tracing::info!(
        files = metrics.files_deleted.len(),
        position_sidecars,
        dry_run = metrics.dry_run,
        "vacuum done"
    );
    Ok((
        table,
        VacuumReport {
            dry_run: metrics.dry_run,
            files: metrics.files_deleted,
            position_sidecars,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// Deletes the Kinesis position sidecars below each shard's recorded
/// position (see `source::kinesis::positions`); returns how many.
async fn prune_position_sidecars(
    table: &DeltaTable,
    dry_run: bool,
) -> Result<usize, MaintainError> {
    use futures::StreamExt;
    let store = table.object_store();
    let sidecars = positions::list_ordinals(&store)
        .await
        .map_err(|e| MaintainError::Invalid(format!("listing position sidecars: {e}")))?;
    let mut app_ids: Vec<String> = sidecars
        .iter()
        .map(|(app_id, _, _)| app_id.clone())
        .collect();
    app_ids.sort();
    app_ids.dedup();
    let recorded = crate::table::recorded_positions(table, &app_ids).await?;
    let stale: Vec<_> = sidecars
        .into_iter()
        .filter(|(app_id, ordinal, _)| recorded.get(app_id).is_some_and(|at| ordinal < at))
        .map(|(_, _, path)| path)
        .collect();
    if dry_run {
        return Ok(stale.len());
    }
    let mut deletes = futures::stream::iter(stale)
        .map(|path| {
            let store = store.clone();
            async move { store.delete(&path).await }
        })
        .buffer_unordered(16);
    let mut deleted = 0;
    while let Some(result) = deletes.next().await {
        match result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => {
                return Err(MaintainError::Invalid(format!(
                    "deleting position sidecars: {e}"
                )))
            }
        }
    }
    Ok(deleted)
}
