//! Fenced, exactly-once commits of data files with their source positions.
//!
//! A commit holds the `add` actions of a batch and one `txn` action per source
//! partition it covers (`appId` = partition, `version` = last position). Before
//! it is attempted, the table's recorded position for every partition must
//! still be the one the batch started from (`prev`): a worker that lost a
//! partition to another worker sees a newer position and is refused with
//! [`CommitError::Stale`] (invariant 2). If another writer commits between
//! that check and ours, delta-rs's conflict checker fails our attempt when the
//! winner touched one of our app ids; we reload and check again, so the race
//! ends in `Stale` too. Conflicts that do not touch our partitions (another
//! table writer, maintenance) are retried with backoff.
//!
//! A mirror table's merge also removes the files it rewrote
//! ([`commit_merge`]): it lands only while each of them is still live. A
//! compaction, Z-order or erasure that removed one first ends the attempt
//! in [`CommitError::Moved`] (the merge is planned again on the new
//! version); one that tries to remove one after is refused by its own
//! check. The check is made on the snapshot the merge is built on, and the
//! merge is not rebased by delta-rs when another commit takes that version
//! first (delta-rs's conflict check does not see a compaction's removes,
//! whose `dataChange` is false): it is checked again on the new version.

use std::collections::HashMap;
use std::time::Duration;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, DeltaTableError};

use super::lineage::{CommitLineage, COMMIT_INFO_KEY};

/// Attempts before a commit that keeps failing for other reasons gives up.
const MAX_ATTEMPTS: u32 = 10;

/// The position a commit moves one partition to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionUpdate {
    /// The partition's `txn` app id.
    pub app_id: String,
    /// Position the table must still record (`None`: no position yet).
    pub prev: Option<i64>,
    /// Position recorded by this commit.
    pub last: i64,
}

/// Why a commit did not land.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another worker moved the partition on: this batch is stale.
    #[error("stale position for {app_id}: table records {table_position:?}, batch started after {ours:?}")]
    Stale {
        /// The partition.
        app_id: String,
        /// What the table records now.
        table_position: Option<i64>,
        /// What this batch expected.
        ours: Option<i64>,
        /// Every partition's current recorded position, for re-seeking.
        recorded: HashMap<String, i64>,
    },
    /// The batch's files have a column whose type differs from the table's
    /// (two workers added the same field with different types).
    #[error("schema conflict: column {0}; the batch cannot be committed")]
    SchemaConflict(String),
    /// A file the commit removes was removed by a concurrent commit (a
    /// compaction, Z-order or erasure): a merge must be planned again.
    #[error("{0} was removed by a concurrent commit")]
    Moved(String),
    /// The commit kept failing.
    #[error("commit failed after {attempts} attempts: {source}")]
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: Box<DeltaTableError>,
    },
}

/// Commits `actions` with the positions in `updates`, fenced as described above.
/// Returns the committed table version.
pub async fn commit_with_positions(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    updates: &[PositionUpdate],
    lineage: &CommitLineage,
    query_id: &str,
    epoch: i64,
) -> Result<i64, CommitError> {
    commit_with_schema(table, actions, None, updates, lineage, query_id, epoch).await
}

/// [`commit_with_positions`], growing the table's schema to `grown` in the
/// same commit (schema evolution: the first rows that need new columns
/// land with them). Each attempt merges `grown` with the schema the table
/// has then, so two workers that evolve the table at once converge on the
/// union of their columns and neither loses its batch.
pub async fn commit_with_schema(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    grown: Option<&arrow::datatypes::SchemaRef>,
    updates: &[PositionUpdate],
    lineage: &CommitLineage,
    query_id: &str,
    epoch: i64,
) -> Result<i64, CommitError> {
    let commit = Fenced {
        grown,
        inputs: &[],
        updates,
        lineage,
        query_id,
        epoch,
    };
    commit_fenced(table, actions, &commit).await
}

/// [`commit_with_schema`] for a merge into a mirror table: `actions` also
/// remove `inputs`, and the commit lands only while every one of them is
/// still live ([`CommitError::Moved`] otherwise).
#[allow(clippy::too_many_arguments)]
pub async fn commit_merge(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    grown: Option<&arrow::datatypes::SchemaRef>,
    inputs: &[String],
    updates: &[PositionUpdate],
    lineage: &CommitLineage,
    query_id: &str,
    epoch: i64,
) -> Result<i64, CommitError> {
    let commit = Fenced {
        grown,
        inputs,
        updates,
        lineage,
        query_id,
        epoch,
    };
    commit_fenced(table, actions, &commit).await
}

/// What a fenced commit carries besides its actions.
struct Fenced<'a> {
    grown: Option<&'a arrow::datatypes::SchemaRef>,
    inputs: &'a [String],
    updates: &'a [PositionUpdate],
    lineage: &'a CommitLineage,
    query_id: &'a str,
    epoch: i64,
}

async fn commit_fenced(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    commit: &Fenced<'_>,
) -> Result<i64, CommitError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = try_commit(table, &actions, commit).await;
        let error = match result {
            Ok(version) => return Ok(version),
            Err(Attempt::Stale(stale)) => return Err(stale),
            Err(Attempt::Moved(path)) => return Err(CommitError::Moved(path)),
            Err(Attempt::Conflict(column)) => return Err(CommitError::SchemaConflict(column)),
            Err(Attempt::Retry(error)) => error,
        };
        if attempt >= MAX_ATTEMPTS {
            return Err(CommitError::Failed {
                attempts: attempt,
                source: Box::new(error),
            });
        }
        let backoff = Duration::from_millis(50 * 2u64.pow(attempt.min(6)))
            + Duration::from_millis(rand::random::<u64>() % 50);
        crate::telemetry::metrics::COMMIT_RETRIES
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(attempt, error = %error, "commit conflict; retrying");
        tokio::time::sleep(backoff).await;
    }
}

enum Attempt {
    Stale(CommitError),
    Moved(String),
    Conflict(String),
    Retry(DeltaTableError),
}

async fn try_commit(
    table: &mut DeltaTable,
    actions: &[Action],
    commit: &Fenced<'_>,
) -> Result<i64, Attempt> {
    let Fenced {
        grown,
        inputs,
        updates,
        lineage,
        query_id,
        epoch,
    } = *commit;
    table.update_state().await.map_err(Attempt::Retry)?;
    let app_ids: Vec<String> = updates.iter().map(|u| u.app_id.clone()).collect();
    let (recorded, memo) = super::position_memo::recorded(table, &app_ids)
        .await
        .map_err(Attempt::Retry)?;
    for update in updates {
        let table_position = recorded.get(&update.app_id).copied();
        if table_position != update.prev {
            return Err(Attempt::Stale(CommitError::Stale {
                app_id: update.app_id.clone(),
                table_position,
                ours: update.prev,
                recorded,
            }));
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    let txns = updates
        .iter()
        .map(|u| Transaction::new_with_last_update(&u.app_id, u.last, Some(now)))
        .collect();
    let lineage = serde_json::to_value(lineage).expect("lineage serializes");
    let properties = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([(COMMIT_INFO_KEY.to_string(), lineage)])
        // A merge is checked against the version it commits on: delta-rs
        // must not rebase it over a commit it did not check (its conflict
        // check ignores a compaction's removes, which have dataChange=false).
        .with_max_retries(if inputs.is_empty() { 3 } else { 0 })
        // delta-rs would otherwise list the whole log after every commit to
        // expire old entries, a cost that grows with history; the
        // maintenance loop and `sluice checkpoint` expire the log instead.
        .with_cleanup_expired_logs(Some(false));
    // Checked on the snapshot the commit is built on, which it lands right
    // after or not at all (no rebase below).
    if let Some(gone) = first_gone(table, inputs).map_err(Attempt::Retry)? {
        return Err(Attempt::Moved(gone));
    }
    let operation = DeltaOperation::StreamingUpdate {
        // A merge replaces rows; a batch of events only appends them.
        output_mode: if inputs.is_empty() {
            OutputMode::Append
        } else {
            OutputMode::Update
        },
        query_id: query_id.to_string(),
        epoch_id: epoch,
    };
    let snapshot = table.snapshot().map_err(Attempt::Retry)?;
    let read_version = snapshot.version();
    let mut all = Vec::with_capacity(actions.len() + 1);
    if let Some(grown) = grown {
        match grown_metadata(table, grown).map_err(Attempt::Retry)? {
            Grown::Same => {}
            Grown::Metadata(metadata) => all.push(*metadata),
            Grown::Conflict(column) => return Err(Attempt::Conflict(column)),
        }
    }
    all.extend_from_slice(actions);
    let snapshot = table.snapshot().map_err(Attempt::Retry)?;
    let checkpoint_interval = snapshot.table_config().checkpoint_interval().get();
    let committed = CommitBuilder::from(properties)
        .with_actions(all)
        .build(Some(snapshot), table.log_store(), operation)
        .into_prepared_commit_future()
        .await
        .map_err(Attempt::Retry)?
        .await
        .map_err(Attempt::Retry)?;
    let version = committed.version;
    memo.committed(read_version, version, updates);
    if version > read_version + 1 {
        crate::telemetry::metrics::COMMIT_REBASES
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // The commit is in the log. delta-rs's post-commit hook loads the new
    // version (replaying every live file's statistics) and checkpoints when
    // one is due; the next commit loads the table anyway, so the hook runs
    // only for the checkpoint. A failed checkpoint does not undo the
    // commit: the maintenance loop writes the next one.
    if (version + 1).is_multiple_of(checkpoint_interval) {
        if let Err(error) = committed.await {
            tracing::warn!(version, %error, "checkpoint after commit failed");
        }
    }
    Ok(version as i64)
}

/// A live file's identity for the rewrite-safety rule: its path, and its
/// deletion vector if it has one (a commit that changes the vector makes
/// the file read before it gone, as a rewrite would).
pub fn file_id(path: &str, dv: Option<&deltalake::kernel::DeletionVectorDescriptor>) -> String {
    match dv {
        None => path.to_string(),
        Some(dv) => format!(
            "{path} (deletion vector {}{}@{})",
            dv.storage_type,
            dv.path_or_inline_dv,
            dv.offset.unwrap_or(0)
        ),
    }
}

/// The first of `inputs` (file ids, see [`file_id`]) that is no longer
/// live in `table`'s loaded snapshot, if any.
pub fn first_gone(
    table: &DeltaTable,
    inputs: &[String],
) -> Result<Option<String>, DeltaTableError> {
    if inputs.is_empty() {
        return Ok(None);
    }
    let live: std::collections::HashSet<String> = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| file_id(&f.path(), f.deletion_vector_descriptor().as_ref()))
        .collect();
    Ok(inputs.iter().find(|p| !live.contains(*p)).cloned())
}

/// What a grown schema means for the table.
enum Grown {
    /// The table has every field already.
    Same,
    /// This `metaData` action adds the missing ones.
    Metadata(Box<Action>),
    /// A field the table has, with a type of another kind.
    Conflict(String),
}

/// The `metaData` action that grows `table`'s schema by the fields of
/// `grown` it lacks.
fn grown_metadata(
    table: &DeltaTable,
    grown: &arrow::datatypes::SchemaRef,
) -> Result<Grown, DeltaTableError> {
    use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow as _, TryIntoKernel as _};
    use deltalake::kernel::MetadataExt as _;
    let metadata = table.snapshot()?.metadata().clone();
    let current: arrow::datatypes::Schema = (&metadata.parse_schema()?).try_into_arrow()?;
    if let Some(column) = super::schema::type_conflict(current.fields(), grown.fields()) {
        return Ok(Grown::Conflict(column));
    }
    let merged = super::schema::merge_fields(current.fields(), grown.fields());
    if &merged == current.fields() {
        return Ok(Grown::Same);
    }
    let schema = arrow::datatypes::Schema::new(merged);
    let kernel: deltalake::kernel::StructType = (&schema).try_into_kernel()?;
    let action = Action::Metadata(metadata.with_schema(&kernel)?);
    Ok(Grown::Metadata(Box::new(action)))
}
