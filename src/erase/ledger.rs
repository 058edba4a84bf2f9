//! The erasure ledger: an append-only Delta table of request events under the
//! lake root (`<root>/_sluice_erasure`), so it is ACID, readable by Spark for
//! audits, and shared by every worker.
//!
//! Each row is one event of one request: `requested` (one row per target
//! table, all in one commit), `applying` (intent to delete, with a batch id),
//! `deleted` (table version and counts), `abandoned` (an intent whose commit
//! never landed), `purged` (vacuum and log expiry done), `verified` or
//! `verify_failed`. A request's state is the fold of its events (see
//! [`Request`]). Nothing is ever updated in place: the history is the audit
//! trail.
//!
//! The ledger keeps the subject keys themselves (ingestion needs them to
//! suppress late records, and erasure needs them to find rows), or, with
//! `erasure.key_hash_secret`, only keyed hashes of them, the clear values
//! being kept until verification in a vault beside it (see
//! [`super::hashing`]). It lives outside every table root, so a table's
//! byte scan never meets it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;
use serde::Serialize;
use url::Url;

use super::keys::SubjectKey;
use super::EraseError;
use crate::maintain::files::{live_files_by_partition, read_batches};
use crate::table::schema::timestamp_type;
use crate::table::writer::TableWriter;
use crate::table::{self, TableError};

/// The ledger's directory under the lake root.
pub const LEDGER_DIR: &str = "_sluice_erasure";

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Filed, for one table.
    Requested,
    /// A delete of a batch of requests is about to be committed to a table.
    Applying,
    /// The table no longer holds the key as of a version.
    Deleted,
    /// An `applying` batch whose commit never landed.
    Abandoned,
    /// Removed files vacuumed and the log expired past the deletion.
    Purged,
    /// Verification found the key nowhere.
    Verified,
    /// Verification found the key somewhere.
    VerifyFailed,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Applying => "applying",
            EventKind::Deleted => "deleted",
            EventKind::Abandoned => "abandoned",
            EventKind::Purged => "purged",
            EventKind::Verified => "verified",
            EventKind::VerifyFailed => "verify_failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            EventKind::Requested,
            EventKind::Applying,
            EventKind::Deleted,
            EventKind::Abandoned,
            EventKind::Purged,
            EventKind::Verified,
            EventKind::VerifyFailed,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEvent {
    /// The request.
    pub request_id: String,
    /// What happened.
    pub event: EventKind,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The table it concerns, if one.
    pub table: Option<String>,
    /// The table version it concerns (`deleted`, `applying`: version read).
    pub version: Option<i64>,
    /// The key column (`requested`).
    pub key_column: Option<String>,
    /// The key value as text (`requested`).
    pub key_value: Option<String>,
    /// Why it was filed (`requested`).
    pub reason: Option<String>,
    /// The legal deadline (ms since the epoch, `requested`).
    pub deadline_ms: Option<i64>,
    /// The delete batch (`applying`, `deleted`, `abandoned`).
    pub batch_id: Option<String>,
    /// Rows deleted (`deleted`).
    pub rows_deleted: Option<i64>,
    /// Files rewritten (`deleted`).
    pub files_rewritten: Option<i64>,
    /// Anything else, as JSON text.
    pub detail: Option<String>,
}

impl LedgerEvent {
    /// An event with only the required fields set.
    pub fn new(request_id: &str, event: EventKind, at_ms: i64) -> Self {
        Self {
            request_id: request_id.to_string(),
            event,
            at_ms,
            table: None,
            version: None,
            key_column: None,
            key_value: None,
            reason: None,
            deadline_ms: None,
            batch_id: None,
            rows_deleted: None,
            files_rewritten: None,
            detail: None,
        }
    }

    /// The `detail` JSON, parsed (`Null` when absent).
    pub fn detail_json(&self) -> serde_json::Value {
        self.detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// One deletion of a request's key from a table.
#[derive(Debug, Clone, Serialize)]
pub struct Deletion {
    /// The table version that no longer holds the key.
    pub version: Option<i64>,
    /// When (ms).
    pub at_ms: i64,
    /// Rows deleted by this request's key.
    pub rows_deleted: i64,
    /// Files rewritten that held the key.
    pub files_rewritten: i64,
    /// The delete batch.
    pub batch_id: Option<String>,
    /// The version the deletion was planned on: files added after it may
    /// hold records that arrived later (`None` in ledgers written before
    /// it was recorded: every file is re-checked).
    pub read_version: Option<i64>,
}

/// A request's progress on one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableProgress {
    /// Deletions, oldest first (later ones catch late records).
    pub deletions: Vec<Deletion>,
    /// When it was purged, with what vacuum and log expiry did.
    pub purged: Option<(i64, serde_json::Value)>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Filed; some table still holds the key.
    Requested,
    /// Deleted from every table's current version.
    Deleted,
    /// Removed files vacuumed and log expired in every table.
    Purged,
    /// Verified gone from every object of every table.
    Verified,
}

/// A request, folded from its events.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Its id.
    pub id: String,
    /// The key.
    pub key_column: String,
    /// The key value as text (empty when only its hash is known here).
    pub key_value: String,
    /// The keyed hash of the key, for requests filed with a secret.
    #[serde(serialize_with = "hash_hex")]
    pub key_hash: Option<super::hashing::KeyHash>,
    /// Why it was filed.
    pub reason: String,
    /// When (ms).
    pub requested_ms: i64,
    /// The legal deadline (ms).
    pub deadline_ms: i64,
    /// Progress per target table.
    pub tables: BTreeMap<String, TableProgress>,
    /// The latest verification: when, whether it passed, what it found.
    pub verification: Option<(i64, bool, serde_json::Value)>,
    /// Filed for every table (`--all`): tables that appear later (made
    /// from a template) join it.
    pub all_tables: bool,
}

fn hash_hex<S: serde::Serializer>(
    hash: &Option<super::hashing::KeyHash>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match hash {
        Some(hash) => serializer.serialize_some(&hex::encode(hash)),
        None => serializer.serialize_none(),
    }
}

impl Request {
    /// The key as filed (for hashed requests whose value is not at hand,
    /// the hash in its ledger form).
    pub fn key(&self) -> SubjectKey {
        let value = match &self.key_hash {
            Some(hash) if self.key_value.is_empty() => {
                format!("{}{}", super::hashing::MARKER, hex::encode(hash))
            }
            _ => self.key_value.clone(),
        };
        SubjectKey {
            column: self.key_column.clone(),
            value,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        let all = |f: &dyn Fn(&TableProgress) -> bool| self.tables.values().all(f);
        if !all(&|t| !t.deletions.is_empty()) {
            State::Requested
        } else if !all(&|t| t.purged.is_some()) {
            State::Deleted
        } else if self.verification.as_ref().is_some_and(|(_, ok, _)| *ok) {
            State::Verified
        } else {
            State::Purged
        }
    }
}

/// An `applying` intent with no outcome yet.
#[derive(Debug, Clone)]
pub struct OpenBatch {
    /// The batch id.
    pub batch_id: String,
    /// The table.
    pub table: String,
    /// The table version the batch was planned on.
    pub read_version: i64,
    /// The requests in it.
    pub request_ids: Vec<String>,
}

/// Folds events into requests (in filing order).
pub fn fold(events: &[LedgerEvent]) -> Vec<Request> {
    let mut order: Vec<String> = Vec::new();
    let mut requests: BTreeMap<String, Request> = BTreeMap::new();
    // Events of one instant (an injected clock, one CLI call) fold in
    // lifecycle order, whatever order their files were read in.
    let mut sorted: Vec<&LedgerEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.at_ms, e.event as u8));
    for event in sorted {
        if event.event == EventKind::Requested {
            let request = requests.entry(event.request_id.clone()).or_insert_with(|| {
                order.push(event.request_id.clone());
                let value = event.key_value.clone().unwrap_or_default();
                let key_hash = super::hashing::parse_marker(&value);
                Request {
                    id: event.request_id.clone(),
                    key_column: event.key_column.clone().unwrap_or_default(),
                    key_value: if key_hash.is_some() {
                        String::new()
                    } else {
                        value
                    },
                    key_hash,
                    reason: event.reason.clone().unwrap_or_default(),
                    requested_ms: event.at_ms,
                    deadline_ms: event.deadline_ms.unwrap_or(event.at_ms),
                    tables: BTreeMap::new(),
                    verification: None,
                    all_tables: false,
                }
            });
            if event.detail_json()["scope"] == "all" {
                request.all_tables = true;
            }
            if let Some(table) = &event.table {
                request.tables.entry(table.clone()).or_default();
            }
            continue;
        }
        let Some(request) = requests.get_mut(&event.request_id) else {
            continue;
        };
        let progress = event.table.as_ref().and_then(|t| request.tables.get_mut(t));
        match (event.event, progress) {
            (EventKind::Deleted, Some(progress)) => progress.deletions.push(Deletion {
                version: event.version,
                at_ms: event.at_ms,
                rows_deleted: event.rows_deleted.unwrap_or(0),
                files_rewritten: event.files_rewritten.unwrap_or(0),
                batch_id: event.batch_id.clone(),
                read_version: event.detail_json()["read_version"].as_i64(),
            }),
            (EventKind::Purged, Some(progress)) => {
                progress.purged = Some((event.at_ms, event.detail_json()))
            }
            (EventKind::Verified, _) => {
                request.verification = Some((event.at_ms, true, event.detail_json()))
            }
            (EventKind::VerifyFailed, _) => {
                request.verification = Some((event.at_ms, false, event.detail_json()))
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| requests.remove(&id))
        .collect()
}

/// `applying` batches of `table` with neither `deleted` nor `abandoned` after them.
pub fn open_batches(events: &[LedgerEvent], table: &str) -> Vec<OpenBatch> {
    let mut open: BTreeMap<String, OpenBatch> = BTreeMap::new();
    let mut closed = std::collections::HashSet::new();
    for event in events.iter().filter(|e| e.table.as_deref() == Some(table)) {
        let Some(batch) = &event.batch_id else {
            continue;
        };
        match event.event {
            EventKind::Applying => {
                let entry = open.entry(batch.clone()).or_insert_with(|| OpenBatch {
                    batch_id: batch.clone(),
                    table: table.to_string(),
                    read_version: event.version.unwrap_or(0),
                    request_ids: Vec::new(),
                });
                entry.request_ids.push(event.request_id.clone());
            }
            EventKind::Deleted | EventKind::Abandoned => {
                closed.insert(batch.clone());
            }
            _ => {}
        }
    }
    open.into_values()
        .filter(|b| !closed.contains(&b.batch_id))
        .collect()
}

/// The ledger table, with its events cached per version.
pub struct Ledger {
    table: DeltaTable,
    cache: Option<(u64, Vec<LedgerEvent>)>,
    /// Clear keys read from the vault, by request id.
    keys: std::collections::HashMap<String, String>,
}

/// Compact the ledger once it holds this many files (one per append).
const COMPACT_AT_FILES: usize = 64;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("at", timestamp_type(), false),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("version", DataType::Int64, true),
        Field::new("key_column", DataType::Utf8, true),
        Field::new("key_value", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("deadline", timestamp_type(), true),
        Field::new("batch_id", DataType::Utf8, true),
        Field::new("rows_deleted", DataType::Int64, true),
        Field::new("files_rewritten", DataType::Int64, true),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

/// The ledger's URL under a lake root.
pub fn ledger_url(lake_root: &str) -> Result<Url, TableError> {
    table::resolve_location(&table::child_location(lake_root, LEDGER_DIR))
}

impl Ledger {
    /// Opens the ledger, creating it if this lake has none yet.
    pub async fn open_or_create(
        lake_root: &str,
        storage_options: &BTreeMap<String, String>,
    ) -> Result<Self, EraseError> {
        let url = ledger_url(lake_root)?;
        let table = table::open_or_create(
            &url,
            storage_options,
            "sluice_erasure_ledger",
            &schema(),
            &[],
            &[
                table::default_properties(None),
                vec![(table::about::KIND.to_string(), "erasure_ledger".to_string())],
            ]
            .concat(),
            Some("sluice's erasure ledger: requests to erase a subject's rows, and their progress"),
        )
        .await?;
        Ok(Self {
            table,
            cache: None,
            keys: Default::default(),
        })
    }

    /// Opens the ledger if it exists.
    pub async fn open(
        lake_root: &str,
        storage_options: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, EraseError> {
        let location = table::child_location(lake_root, LEDGER_DIR);
        let url = match table::resolve_existing(&location) {
            Ok(url) => url,
            Err(TableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table::open(&url, storage_options).await {
            Ok(table) => Ok(Some(Self {
                table,
                cache: None,
                keys: Default::default(),
            })),
            Err(TableError::NotATable(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object store rooted at the ledger (for its leases).
    pub fn object_store(&self) -> Arc<dyn deltalake::ObjectStore> {
        self.table.object_store()
    }

    /// Every event, as of the latest version (read again only when it moved).
    pub async fn events(&mut self) -> Result<Vec<LedgerEvent>, EraseError> {
        self.table.update_state().await?;
        let version = self.table.version().unwrap_or(0);
        if let Some((cached, events)) = &self.cache {
            if *cached == version {
                return Ok(events.clone());
            }
        }
        let files: Vec<_> = live_files_by_partition(&self.table, &[])?
            .into_values()
            .flatten()
            .collect();
        if files.len() >= COMPACT_AT_FILES {
            self.compact().await;
        }
        let mut batches = read_batches(&self.table, files, schema());
        let mut events = Vec::new();
        while let Some(batch) = batches.recv().await {
            events.extend(from_batch(&batch?)?);
        }
        events.sort_by_key(|e| (e.at_ms, e.event as u8));
        self.cache = Some((version, events.clone()));
        Ok(events)
    }

    /// Packs the ledger's small files (best effort: a failure only costs speed).
    async fn compact(&mut self) {
        let options = crate::maintain::compact::CompactOptions {
            target_size: 64 << 20,
            min_file_size: 16 << 20,
            ..Default::default()
        };
        match crate::maintain::compact::compact(&mut self.table, &options, &|_| {}).await {
            Ok(metrics) => {
                tracing::info!(files_in = metrics.files_in, "compacted the erasure ledger")
            }
            Err(error) => tracing::warn!(%error, "could not compact the erasure ledger"),
        }
    }

    /// Every request, folded (hashed keys as hashes only).
    pub async fn requests(&mut self) -> Result<Vec<Request>, EraseError> {
        Ok(fold(&self.events().await?))
    }

    /// The vault of clear keys of hashed requests not verified yet.
    pub fn vault(&self) -> super::hashing::KeyVault {
        super::hashing::KeyVault::new(self.object_store())
    }

    /// Every request not verified yet with its clear key, as erasure needs
    /// them: hashed requests get their value from the vault; one whose
    /// value is gone from it is left out, with a warning.
    pub async fn requests_with_keys(&mut self) -> Result<Vec<Request>, EraseError> {
        let vault = self.vault();
        let mut out = Vec::new();
        for mut request in self.requests().await? {
            if request.key_hash.is_some() && request.key_value.is_empty() {
                if request.state() == State::Verified {
                    continue;
                }
                let kept = match self.keys.get(&request.id) {
                    Some(value) => Some(value.clone()),
                    None => vault.get(&request.id).await?,
                };
                match kept {
                    Some(value) => {
                        self.keys.insert(request.id.clone(), value.clone());
                        request.key_value = value;
                    }
                    None => {
                        tracing::warn!(request = %request.id, "the key of a hashed request is no longer in the vault; it can only be suppressed");
                        continue;
                    }
                }
            }
            out.push(request);
        }
        Ok(out)
    }

    /// Appends `events` in one commit; returns the ledger version.
    pub async fn append(&mut self, events: &[LedgerEvent]) -> Result<i64, EraseError> {
        if events.is_empty() {
            return Ok(self.table.version().unwrap_or(0) as i64);
        }
        let mut writer = TableWriter::new(&self.table, None, 64 << 20)?;
        writer.write(to_batch(events)?).await?;
        let adds = writer.finish().await?;
        let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        let properties = CommitProperties::default().with_metadata([(
            "sluice".to_string(),
            serde_json::json!({"kind": "erasure_ledger", "events": kinds}),
        )]);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        self.table.update_state().await?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(
                Some(self.table.snapshot()?),
                self.table.log_store(),
                operation,
            )
            .await?;
        let version = finalized.version() as i64;
        self.table.update_state().await?;
        Ok(version)
    }
}

fn to_batch(events: &[LedgerEvent]) -> Result<RecordBatch, EraseError> {
    let text = |f: &dyn Fn(&LedgerEvent) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let long = |f: &dyn Fn(&LedgerEvent) -> Option<i64>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<Int64Array>())
    };
    let time = |f: &dyn Fn(&LedgerEvent) -> Option<i64>| -> ArrayRef {
        Arc::new(
            events
                .iter()
                .map(|e| f(e).map(|ms| ms * 1000))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let columns = vec![
        text(&|e| Some(e.request_id.clone())),
        text(&|e| Some(e.event.as_str().to_string())),
        time(&|e| Some(e.at_ms)),
        text(&|e| e.table.clone()),
        long(&|e| e.version),
        text(&|e| e.key_column.clone()),
        text(&|e| e.key_value.clone()),
        text(&|e| e.reason.clone()),
        time(&|e| e.deadline_ms),
        text(&|e| e.batch_id.clone()),
        long(&|e| e.rows_deleted),
        long(&|e| e.files_rewritten),
        text(&|e| e.detail.clone()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn from_batch(batch: &RecordBatch) -> Result<Vec<LedgerEvent>, EraseError> {
    let column = |name: &str| -> Result<&ArrayRef, EraseError> {
        batch
            .column_by_name(name)
            .ok_or_else(|| EraseError::Invalid(format!("the ledger has no column `{name}`")))
    };
    let text = |name: &str| -> Result<StringArray, EraseError> {
        let cast = arrow::compute::cast(column(name)?, &DataType::Utf8)?;
        Ok(cast
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("Utf8")
            .clone())
    };
    let long = |name: &str| -> Result<Int64Array, EraseError> {
        let cast = arrow::compute::cast(column(name)?, &DataType::Int64)?;
        Ok(cast
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("Int64")
            .clone())
    };
    let (ids, kinds, at) = (text("request_id")?, text("event")?, long("at")?);
    let (tables, versions) = (text("table_name")?, long("version")?);
    let (columns, values, reasons) = (text("key_column")?, text("key_value")?, text("reason")?);
    let (deadlines, batches) = (long("deadline")?, text("batch_id")?);
    let (rows, files, details) = (
        long("rows_deleted")?,
        long("files_rewritten")?,
        text("detail")?,
    );
    let opt_text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let opt_long = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let mut events = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let Some(event) = EventKind::parse(kinds.value(i)) else {
            return Err(EraseError::Invalid(format!(
                "the ledger holds an unknown event `{}`",
                kinds.value(i)
            )));
        };
        events.push(LedgerEvent {
            request_id: ids.value(i).to_string(),
            event,
            at_ms: at.value(i) / 1000,
            table: opt_text(&tables, i),
            version: opt_long(&versions, i),
            key_column: opt_text(&columns, i),
            key_value: opt_text(&values, i),
            reason: opt_text(&reasons, i),
            deadline_ms: opt_long(&deadlines, i).map(|us| us / 1000),
            batch_id: opt_text(&batches, i),
            rows_deleted: opt_long(&rows, i),
            files_rewritten: opt_long(&files, i),
            detail: opt_text(&details, i),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(id: &str, table: &str, at: i64) -> LedgerEvent {
        let mut e = LedgerEvent::new(id, EventKind::Requested, at);
        e.table = Some(table.into());
        e.key_column = Some("user_id".into());
        e.key_value = Some("u-1".into());
        e.deadline_ms = Some(at + 1000);
        e
    }

    #[test]
    fn state_needs_every_table() {
        let mut deleted = LedgerEvent::new("r1", EventKind::Deleted, 5);
        deleted.table = Some("a".into());
        deleted.version = Some(3);
        let events = vec![requested("r1", "a", 1), requested("r1", "b", 1), deleted];
        let requests = fold(&events);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].state(), State::Requested);
        let mut more = events.clone();
        let mut deleted_b = LedgerEvent::new("r1", EventKind::Deleted, 6);
        deleted_b.table = Some("b".into());
        more.push(deleted_b);
        assert_eq!(fold(&more)[0].state(), State::Deleted);
    }

    #[test]
    fn batches_close_on_outcome() {
        let mut applying = LedgerEvent::new("r1", EventKind::Applying, 2);
        applying.table = Some("a".into());
        applying.batch_id = Some("b1".into());
        applying.version = Some(7);
        let events = vec![requested("r1", "a", 1), applying.clone()];
        let open = open_batches(&events, "a");
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].read_version, 7);
        let mut abandoned = applying;
        abandoned.event = EventKind::Abandoned;
        let closed = [events, vec![abandoned]].concat();
        assert!(open_batches(&closed, "a").is_empty());
    }

    #[test]
    fn rows_round_trip_through_arrow() {
        let mut event = requested("r9", "rides", 1_700_000_000_123);
        event.detail = Some("{\"x\":1}".into());
        let batch = to_batch(std::slice::from_ref(&event)).unwrap();
        assert_eq!(from_batch(&batch).unwrap(), vec![event]);
    }
}
