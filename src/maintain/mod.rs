//! Table maintenance: compaction, checkpoints with log cleanup, and vacuum.
//!
//! Every operation here commits with `dataChange=false` (or commits nothing),
//! removes only files it read, and gives way to concurrent writers: a
//! conflicting maintenance commit aborts or retries, an ingestion commit never
//! fails because of maintenance (invariant 3).

pub mod checkpoint;
pub mod compact;
pub mod files;
pub mod scheduler;
pub mod vacuum;
pub mod zorder;

use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaTable, DeltaTableError};

/// The table property naming the subject-key column, set when sluice creates a table.
pub const KEY_PROPERTY: &str = "sluice.key";

/// Errors of maintenance operations.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// A Delta operation failed.
    #[error(transparent)]
    Delta(#[from] Box<DeltaTableError>),
    /// Reading a data file failed.
    #[error("reading a data file: {0}")]
    Parquet(#[from] deltalake::parquet::errors::ParquetError),
    /// Reshaping a batch failed.
    #[error("reshaping a batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Local spill files failed.
    #[error("spilling to local disk: {0}")]
    Io(#[from] std::io::Error),
    /// The request is not valid for this table.
    #[error("{0}")]
    Invalid(String),
}

impl From<DeltaTableError> for MaintainError {
    fn from(error: DeltaTableError) -> Self {
        MaintainError::Delta(Box::new(error))
    }
}

/// The subject-key column recorded in the table's properties, if any.
pub fn table_key(table: &DeltaTable) -> Option<String> {
    table
        .snapshot()
        .ok()?
        .metadata()
        .configuration()
        .get(KEY_PROPERTY)
        .cloned()
}

/// How a rewrite commit ended.
#[derive(Debug)]
pub enum RewriteOutcome {
    /// Landed at this version.
    Committed(i64),
    /// Given up: a file it rewrote is gone, or the table kept moving.
    Aborted(String),
}

/// Attempts before a rewrite that keeps losing races gives up.
const REWRITE_ATTEMPTS: u32 = 30;

/// Commits a rewrite (`remove` of `inputs` plus new `add`s, `dataChange=false`)
/// only if every input file is still live in the version right before it.
///
/// delta-rs's conflict checker ignores concurrent removes with
/// `dataChange=false`, so two compactions racing over the same files would
/// both land and duplicate their rows. Instead, each attempt reloads the
/// table, checks that every input is live, and commits against exactly that
/// version (no delta-rs retries): if anything else commits first the attempt
/// fails and is repeated, so appends pass through and a lost race over the
/// same files aborts cleanly.
pub async fn commit_rewrite(
    table: &mut DeltaTable,
    inputs: &[String],
    actions: Vec<deltalake::kernel::Action>,
    operation: deltalake::protocol::DeltaOperation,
    info: serde_json::Value,
) -> Result<RewriteOutcome, MaintainError> {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    for attempt in 0..REWRITE_ATTEMPTS {
        table.update_state().await?;
        if let Some(gone) = crate::table::commit::first_gone(table, inputs)? {
            return Ok(RewriteOutcome::Aborted(format!(
                "{gone} was removed by a concurrent commit"
            )));
        }
        let snapshot = table.snapshot()?;
        let properties = CommitProperties::default()
            .with_metadata([("sluice".to_string(), info.clone())])
            .with_max_retries(0)
            // As for data commits: log expiry is the loop's job, not every commit's.
            .with_cleanup_expired_logs(Some(false));
        let committed = CommitBuilder::from(properties)
            .with_actions(actions.clone())
            .build(Some(snapshot), table.log_store(), operation.clone())
            .await;
        match committed {
            Ok(finalized) => return Ok(RewriteOutcome::Committed(finalized.version() as i64)),
            Err(error) if is_conflict(&error) => {
                let pause = 20 * u64::from(attempt + 1) + rand::random::<u64>() % 30;
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(RewriteOutcome::Aborted(format!(
        "the table kept moving for {REWRITE_ATTEMPTS} attempts"
    )))
}

/// True when a commit failed because a concurrent commit conflicts with it.
pub fn is_conflict(error: &DeltaTableError) -> bool {
    matches!(
        error,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_)
        } | DeltaTableError::VersionAlreadyExists(_)
    )
}

/// A spawned rewrite task that is aborted when dropped: a maintenance job
/// dropped on shutdown stops the tasks it started instead of leaving them
/// writing files nobody will commit.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
