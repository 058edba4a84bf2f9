//! GDPR erasure by subject key: a request ledger, batched ACID deletes,
//! suppression of late records, physical purge and verification.
//!
//! The life of a request (`sluice forget ...`):
//!
//! 1. **request**: keys are checked against every target table's schema
//!    (column exists, value has its type) and recorded in the [`ledger`]
//!    with a deadline (`erasure.deadline`, one month by default). Filing the
//!    same key for the same tables again returns the existing request.
//! 2. **apply** ([`apply`]): per table, all pending keys in one pass and one
//!    commit; only files that really hold a key are rewritten. Ingestion
//!    suppresses known keys from then on ([`suppress`]), and later runs
//!    delete any late record that slipped in before it knew.
//! 3. **purge** ([`purge`]): after the table's deleted-file retention the
//!    removed files are vacuumed and the log is cut at a fresh checkpoint,
//!    so neither data files nor log statistics hold the key any more.
//!    Time travel to versions before that checkpoint ends there.
//! 4. **verify** ([`verify`]): no live row and no object under the table
//!    root holds the key; the result is recorded and a receipt
//!    ([`receipt`]) can be printed for auditors.
//!
//! The ingest process runs steps 2 and 3 in the background every
//! `erasure.interval` (one worker of a fleet at a time, under a lease).

pub mod apply;
pub mod find;
pub mod hashing;
pub mod keys;
pub mod ledger;
pub mod purge;
pub mod receipt;
pub mod suppress;
pub mod verify;

use std::collections::BTreeMap;

use serde::Serialize;
use url::Url;

use crate::config::{Config, TableConfig};
use crate::table::{self, TableError};
use keys::{KeyKind, KeyValue, SubjectKey};
use ledger::{EventKind, Ledger, LedgerEvent};

/// Errors of erasure.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The request or its input is not valid; nothing was recorded.
    #[error("{0}")]
    Invalid(String),
    /// A table could not be opened.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A Delta operation failed.
    #[error(transparent)]
    Delta(#[from] Box<deltalake::DeltaTableError>),
    /// A rewrite, vacuum or checkpoint failed.
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    /// Reading a Parquet file failed.
    #[error("reading a data file: {0}")]
    Parquet(#[from] deltalake::parquet::errors::ParquetError),
    /// Reshaping rows failed.
    #[error("reshaping rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Listing or reading objects failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Another erasure run holds the lease; nothing was done.
    #[error("another erasure run is in progress (worker `{holder}`); it applies and purges pending requests too. Try again when it is done, or wait for it with --wait")]
    Busy {
        /// The worker holding the lease.
        holder: String,
    },
    /// The run's lease was lost midway; the run stopped (the next run resumes it).
    #[error(transparent)]
    LeaseLost(#[from] crate::fleet::lease::LeaseLost),
    /// The lease store failed.
    #[error(transparent)]
    Lease(#[from] crate::fleet::lease::LeaseError),
    /// A test stopped the work at a crash point.
    #[error("stopped at crash point {0:?}")]
    Crashed(CrashPoint),
}

impl From<deltalake::DeltaTableError> for EraseError {
    fn from(error: deltalake::DeltaTableError) -> Self {
        EraseError::Delta(Box::new(error))
    }
}

/// Places where tests stop erasure as if the process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the ledger records `applying`, before the table commit.
    AfterIntent,
    /// After the table commit, before the ledger records `deleted`.
    AfterCommit,
    /// After vacuum, before the checkpoint, log expiry and `purged`.
    AfterVacuum,
}

fn crash_if(configured: Option<CrashPoint>, here: CrashPoint) -> Result<(), EraseError> {
    if configured == Some(here) {
        return Err(EraseError::Crashed(here));
    }
    Ok(())
}

/// A table erasure can target: a configured table, or its dead-letter table
/// (named `<table>.dead_letters`), whose rows are matched by raw payload.
#[derive(Debug, Clone)]
pub struct TableTarget {
    /// Its name in the ledger: the configured name, or `<name>.dead_letters`.
    pub name: String,
    /// Where a row's key is read from.
    pub source: keys::MatchSource,
    /// Its location.
    pub url: Url,
    /// Object-store options.
    pub storage_options: BTreeMap<String, String>,
    /// The configured table (its declared columns type the keys, before any table exists).
    pub config: TableConfig,
    /// The data table's location (dead-letter targets take key types from it).
    pub data_url: Url,
}

impl TableTarget {
    /// Opens the table (it must exist).
    pub async fn open(&self) -> Result<deltalake::DeltaTable, EraseError> {
        if let Ok(path) = self.url.to_file_path() {
            if !path.join("_delta_log").is_dir() {
                return Err(TableError::NotATable(self.url.to_string()).into());
            }
        }
        Ok(table::open(&self.url, &self.storage_options).await?)
    }

    /// The kind of `column` in the table's declared schema, or, for a table
    /// typed by its source's schema (no declared columns), in the data
    /// table's schema (it must exist then).
    pub async fn key_kind(&self, column: &str) -> Result<KeyKind, String> {
        let schema = if self.config.columns.is_empty() {
            let data = crate::table::open(&self.data_url, &self.storage_options)
                .await
                .map_err(|e| match e {
                    TableError::NotATable(_) => format!(
                        "table `{}` takes its columns from its source's schema and has not been created yet",
                        self.config.name
                    ),
                    other => other.to_string(),
                })?;
            let snapshot = data.snapshot().map_err(|e| e.to_string())?;
            snapshot.snapshot().arrow_schema()
        } else {
            let decoder =
                crate::decode::JsonDecoder::new(&self.config).map_err(|e| e.to_string())?;
            decoder.table_schema()
        };
        let field = crate::table::schema::field_at(schema.fields(), column)
            .ok_or_else(|| format!("table `{}` has no column `{column}`", self.name))?;
        KeyKind::of(field.data_type()).ok_or_else(|| {
            format!(
                "column `{column}` of table `{}` is {}; keys must be string or integer columns",
                self.name,
                field.data_type()
            )
        })
    }
}

/// Every table of `config` and its dead-letter table, as erasure targets,
/// and the tables templates made under the lake root (`sluice.kind =
/// data`, keyed by their `sluice.key`) with theirs.
pub async fn targets(config: &Config) -> Result<Vec<TableTarget>, EraseError> {
    let mut tables = config.tables.clone();
    for (name, url) in table::list_tables(&config.lake.root, &config.lake.storage_options).await? {
        if tables.iter().any(|t| t.name == name) {
            continue;
        }
        let Ok(found) = table::open(&url, &config.lake.storage_options).await else {
            continue;
        };
        let Ok(snapshot) = found.snapshot() else {
            continue;
        };
        let properties = snapshot.metadata().configuration();
        if properties.get(table::about::KIND).map(String::as_str) != Some("data") {
            continue;
        }
        if let Some(key) = properties.get(crate::maintain::KEY_PROPERTY) {
            tables.push(TableConfig::discovered(&name, key));
        }
    }
    let mut all = Vec::new();
    for t in &tables {
        let (data, dead) = crate::ingest::table_locations(config, t);
        let (url, dead_url) = (table::location_url(&data)?, table::location_url(&dead)?);
        let data_url = url.clone();
        for (name, url, source) in [
            (t.name.clone(), url, keys::MatchSource::Column),
            (
                format!("{}.dead_letters", t.name),
                dead_url,
                keys::MatchSource::Payload,
            ),
        ] {
            all.push(TableTarget {
                name,
                source,
                url,
                storage_options: config.lake.storage_options.clone(),
                config: t.clone(),
                data_url: data_url.clone(),
            });
        }
    }
    Ok(all)
}

/// Which tables a request targets.
#[derive(Debug, Clone)]
pub enum TableChoice {
    /// These, by name.
    Named(Vec<String>),
    /// Every configured table that has the key's column.
    All,
}

/// A request as filed.
#[derive(Debug, Clone, Serialize)]
pub struct Filed {
    /// The request id.
    pub id: String,
    /// The key.
    pub key: String,
    /// Its tables.
    pub tables: Vec<String>,
    /// False when the same key was already requested for the same tables.
    pub new: bool,
}

/// Checks and records erasure requests, one per key; see the module docs.
/// Any invalid key or table fails the whole call before anything is recorded.
pub async fn file_requests(
    config: &Config,
    keys: &[SubjectKey],
    tables: &TableChoice,
    reason: &str,
    now_ms: i64,
) -> Result<Vec<Filed>, EraseError> {
    if reason.trim().is_empty() {
        return Err(EraseError::Invalid(
            "--reason must say why (e.g. a ticket id)".into(),
        ));
    }
    if keys.is_empty() {
        return Err(EraseError::Invalid(
            "no keys given (--key or --keys-file)".into(),
        ));
    }
    let all = targets(config).await?;
    if let TableChoice::Named(names) = tables {
        if names.is_empty() {
            return Err(EraseError::Invalid("--tables names no table".into()));
        }
        for name in names {
            if !all.iter().any(|t| &t.config.name == name) {
                let known: Vec<&str> = config.tables.iter().map(|t| t.name.as_str()).collect();
                return Err(EraseError::Invalid(format!(
                    "unknown table `{name}` (configured tables: {})",
                    known.join(", ")
                )));
            }
        }
    }
    let mut planned: Vec<(SubjectKey, Vec<String>)> = Vec::new();
    for key in keys {
        let mut chosen = Vec::new();
        let mut canonical: Option<String> = None;
        for target in &all {
            // A table's dead-letter table goes with it.
            let named = match tables {
                TableChoice::Named(names) => names.contains(&target.config.name),
                TableChoice::All => true,
            };
            if !named {
                continue;
            }
            match target.key_kind(&key.column).await {
                Ok(kind) => {
                    let value = KeyValue::parse(&key.value, kind).map_err(|e| {
                        EraseError::Invalid(format!(
                            "key {key}: column `{}` of table `{}` is {kind:?}: {e}",
                            key.column, target.name
                        ))
                    })?;
                    // The value as ingestion sees it (`007` is the integer 7),
                    // so a keyed hash of it matches the rows' values.
                    canonical.get_or_insert_with(|| value.text());
                    chosen.push(target.name.clone());
                }
                Err(problem) if matches!(tables, TableChoice::Named(_)) => {
                    return Err(EraseError::Invalid(format!("key {key}: {problem}")))
                }
                Err(_) => {}
            }
        }
        if chosen.is_empty() {
            return Err(EraseError::Invalid(format!(
                "key {key}: no configured table has a column `{}`",
                key.column
            )));
        }
        let key = SubjectKey {
            column: key.column.clone(),
            value: canonical.unwrap_or_else(|| key.value.clone()),
        };
        planned.push((key, chosen));
    }

    let hasher = config.erasure.key_hasher();
    let mut ledger =
        Ledger::open_or_create(&config.lake.root, &config.lake.storage_options).await?;
    let existing = ledger.requests().await?;
    let same_key = |r: &ledger::Request, key: &SubjectKey| {
        r.key_column == key.column
            && match (&r.key_hash, &hasher) {
                (Some(hash), Some(hasher)) => *hash == hasher.hash(&key.column, &key.value),
                (Some(_), None) => false,
                (None, _) => r.key_value == key.value,
            }
    };
    let deadline_ms = now_ms + config.erasure.deadline.0.as_millis() as i64;
    let mut filed = Vec::new();
    let mut events = Vec::new();
    for (key, chosen) in planned {
        let same = existing.iter().find(|r| {
            same_key(r, &key) && r.tables.keys().cloned().collect::<Vec<_>>() == sorted(&chosen)
        });
        if let Some(request) = same {
            filed.push(Filed {
                id: request.id.clone(),
                key: key.to_string(),
                tables: chosen,
                new: false,
            });
            continue;
        }
        if let Some(twin) = filed
            .iter()
            .find(|f| f.key == key.to_string() && f.tables == chosen)
        {
            let twin = twin.clone();
            filed.push(Filed { new: false, ..twin });
            continue;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let recorded_value = match &hasher {
            // The clear value is kept (until verified) before the request exists.
            Some(hasher) => {
                ledger.vault().put(&id, &key.value).await?;
                hasher.marker(&key.column, &key.value)
            }
            None => key.value.clone(),
        };
        for table in &chosen {
            let mut event = LedgerEvent::new(&id, EventKind::Requested, now_ms);
            event.table = Some(table.clone());
            event.key_column = Some(key.column.clone());
            event.key_value = Some(recorded_value.clone());
            event.reason = Some(reason.to_string());
            event.deadline_ms = Some(deadline_ms);
            if matches!(tables, TableChoice::All) {
                event.detail = Some(ALL_TABLES_DETAIL.to_string());
            }
            events.push(event);
        }
        filed.push(Filed {
            id,
            key: key.to_string(),
            tables: chosen,
            new: true,
        });
    }
    ledger.append(&events).await?;
    Ok(filed)
}

/// The `detail` of a `requested` event filed for every table.
const ALL_TABLES_DETAIL: &str = r#"{"scope":"all"}"#;

/// Joins a table that just appeared (made from a template) to every
/// request filed for all tables whose key column it has, with its
/// dead-letter table, before it takes any record: its suppressor then
/// holds those keys back, and apply, purge and verify cover it like any
/// table. Returns the requests joined.
pub async fn join_new_table(
    config: &Config,
    table: &str,
    schema: &arrow::datatypes::Schema,
    now_ms: i64,
) -> Result<Vec<String>, EraseError> {
    let Some(mut ledger) = Ledger::open(&config.lake.root, &config.lake.storage_options).await?
    else {
        return Ok(Vec::new());
    };
    let mut joined = Vec::new();
    let mut events = Vec::new();
    for request in ledger.requests().await? {
        if !request.all_tables
            || request.tables.contains_key(table)
            || crate::table::schema::field_at(schema.fields(), &request.key_column).is_none()
        {
            continue;
        }
        let recorded_value = match &request.key_hash {
            Some(hash) => format!("{}{}", hashing::MARKER, hex::encode(hash)),
            None => request.key_value.clone(),
        };
        for name in [table.to_string(), format!("{table}.dead_letters")] {
            let mut event = LedgerEvent::new(&request.id, EventKind::Requested, now_ms);
            event.table = Some(name);
            event.key_column = Some(request.key_column.clone());
            event.key_value = Some(recorded_value.clone());
            event.reason = Some(request.reason.clone());
            event.deadline_ms = Some(request.deadline_ms);
            event.detail = Some(ALL_TABLES_DETAIL.to_string());
            events.push(event);
        }
        joined.push(request.id.clone());
    }
    if !events.is_empty() {
        ledger.append(&events).await?;
    }
    Ok(joined)
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names
}

/// What one `apply` run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyRun {
    /// Deletes, per table.
    pub applied: Vec<apply::TableApplyReport>,
    /// Purges, per table where one was due.
    pub purged: Vec<purge::PurgeReport>,
}

/// Applies pending requests and purges due ones, table by table, as of `now_ms`.
pub async fn apply_all(
    config: &Config,
    now_ms: i64,
    crash: Option<CrashPoint>,
) -> Result<ApplyRun, EraseError> {
    apply_all_until(config, now_ms, crash, None).await
}

/// [`apply_all`], stopping before the next table once `stop` is cancelled.
/// A table already begun is finished, so its deletion commit and the
/// ledger's record of it are never parted by a shutdown.
async fn apply_all_until(
    config: &Config,
    now_ms: i64,
    crash: Option<CrashPoint>,
    stop: Option<&tokio_util::sync::CancellationToken>,
) -> Result<ApplyRun, EraseError> {
    let mut run = ApplyRun::default();
    let Some(mut ledger) = Ledger::open(&config.lake.root, &config.lake.storage_options).await?
    else {
        return Ok(run);
    };
    let requests = ledger.requests().await?;
    forget_verified_keys(&ledger, &requests).await?;
    for target in targets(config).await? {
        let involved = requests.iter().any(|r| r.tables.contains_key(&target.name));
        if !involved {
            continue;
        }
        if stop.is_some_and(|s| s.is_cancelled()) {
            tracing::info!(table = %target.name, "stopping: the erasure run resumes at this table next time");
            break;
        }
        match target.open().await {
            Ok(_) => {}
            Err(EraseError::Table(TableError::NotATable(_))) => {
                run.applied
                    .push(apply::record_absent(&mut ledger, &target, now_ms).await?);
                continue;
            }
            Err(e) => return Err(e),
        }
        run.applied
            .push(apply::apply_table(&mut ledger, &target, now_ms, crash).await?);
        if let Some(purged) = purge::purge_table(&mut ledger, &target, now_ms, crash).await? {
            run.purged.push(purged);
        }
    }
    Ok(run)
}

/// Deletes clear keys the vault still holds for verified requests (a
/// verification whose own deletion failed).
async fn forget_verified_keys(
    ledger: &Ledger,
    requests: &[ledger::Request],
) -> Result<(), EraseError> {
    let vault = ledger.vault();
    let now = chrono::Utc::now();
    for (id, written) in vault.ids().await? {
        let request = requests.iter().find(|r| r.id == id);
        let verified = request.is_some_and(|r| r.state() == ledger::State::Verified);
        // Kept for a filing that never reached the ledger (it failed or
        // died between the two writes): gone after a grace period.
        let orphan = request.is_none() && now - written > chrono::Duration::hours(1);
        if verified || orphan {
            vault.delete(&id).await?;
        }
    }
    Ok(())
}

/// The result of verifying a request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestVerification {
    /// The request.
    pub request_id: String,
    /// Per table.
    pub tables: Vec<verify::TableVerification>,
    /// Every table passed.
    pub passed: bool,
}

/// Verifies request `id` on each of its tables and records the result.
pub async fn verify_request(
    config: &Config,
    id: &str,
    full: bool,
    now_ms: i64,
) -> Result<RequestVerification, EraseError> {
    verify_request_with_key(config, id, full, now_ms, None).await
}

/// [`verify_request`], given the key when the ledger keeps only its hash
/// and the request was verified before (its clear value is gone): `key`
/// must hash to the recorded hash.
pub async fn verify_request_with_key(
    config: &Config,
    id: &str,
    full: bool,
    now_ms: i64,
    key: Option<&SubjectKey>,
) -> Result<RequestVerification, EraseError> {
    let mut ledger = open_ledger(config).await?;
    let requests = ledger.requests().await?;
    let mut request = find_request(&requests, id)?.clone();
    if let Some(hash) = request.key_hash {
        let hasher = config.erasure.key_hasher().ok_or_else(|| {
            EraseError::Invalid(format!(
                "request {} keeps only a keyed hash of its key; set erasure.key_hash_secret to verify it",
                request.id
            ))
        })?;
        request.key_value = match (key, ledger.vault().get(&request.id).await?) {
            (Some(given), _) => {
                let canonical = given
                    .value
                    .parse::<i64>()
                    .map_or_else(|_| given.value.clone(), |n| n.to_string());
                if given.column != request.key_column
                    || (hasher.hash(&given.column, &given.value) != hash
                        && hasher.hash(&given.column, &canonical) != hash)
                {
                    return Err(EraseError::Invalid(format!(
                        "--key {given} is not the key of request {}",
                        request.id
                    )));
                }
                given.value.clone()
            }
            (None, Some(kept)) => kept,
            (None, None) => {
                return Err(EraseError::Invalid(format!(
                    "request {} was verified before and its key is kept only as a keyed hash; give the key with --key {}=...",
                    request.id, request.key_column
                )))
            }
        };
    }
    let request = &request;
    let all = targets(config).await?;
    let mut tables = Vec::new();
    for name in request.tables.keys() {
        let target = all.iter().find(|t| &t.name == name).ok_or_else(|| {
            EraseError::Invalid(format!(
                "request {id} targets table `{name}`, which the config no longer has"
            ))
        })?;
        tables.push(
            verify::verify_table(target, &request.key_column, &request.key_value, full).await?,
        );
    }
    let passed = tables.iter().all(|t| t.passed);
    let kind = if passed {
        EventKind::Verified
    } else {
        EventKind::VerifyFailed
    };
    let mut event = LedgerEvent::new(&request.id, kind, now_ms);
    let summary: Vec<serde_json::Value> = tables
        .iter()
        .map(|t| {
            serde_json::json!({
                "table": t.table,
                "full": full,
                "live_files_checked": t.live_files_checked,
                "live_rows_found": t.live_rows_found,
                "objects_scanned": t.objects_scanned,
                "bytes_scanned": t.bytes_scanned,
                "hits": t.hits.iter().map(|h| format!("{}: {}", h.object, h.found)).collect::<Vec<_>>(),
            })
        })
        .collect();
    event.detail = Some(serde_json::Value::Array(summary).to_string());
    ledger.append(&[event]).await?;
    if passed && request.key_hash.is_some() && request.state() >= ledger::State::Purged {
        // Verified after the purge: from now on only the hash is kept.
        ledger.vault().delete(&request.id).await?;
    }
    Ok(RequestVerification {
        request_id: request.id.clone(),
        tables,
        passed,
    })
}

/// Opens the lake's ledger; an error if no request was ever filed.
pub async fn open_ledger(config: &Config) -> Result<Ledger, EraseError> {
    Ledger::open(&config.lake.root, &config.lake.storage_options)
        .await?
        .ok_or_else(|| {
            EraseError::Invalid(format!(
                "no erasure ledger under {} (no request has been filed)",
                config.lake.root
            ))
        })
}

/// The request with id `id` (or a unique prefix of it).
pub fn find_request<'a>(
    requests: &'a [ledger::Request],
    id: &str,
) -> Result<&'a ledger::Request, EraseError> {
    let matching: Vec<&ledger::Request> =
        requests.iter().filter(|r| r.id.starts_with(id)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(EraseError::Invalid(format!(
            "no erasure request with id `{id}`"
        ))),
        _ => Err(EraseError::Invalid(format!(
            "id prefix `{id}` matches {} requests; give more of it",
            matching.len()
        ))),
    }
}

/// The lease every erasure run holds (in the ledger's directory), so that
/// the service's loop and `sluice forget apply` never run at once.
pub const APPLY_LEASE: &str = "apply";

/// Runs [`apply_all`] under the fleet-wide erasure lease, as `worker`.
///
/// If another run holds the lease, waits for it up to `wait`, then fails
/// with [`EraseError::Busy`] naming the holder. If the lease is lost
/// midway the run stops ([`EraseError::LeaseLost`]); every step is
/// crash-safe, so the next run resumes it. The lease is released at the end.
pub async fn apply_under_lease(
    config: &Config,
    worker: &str,
    wait: std::time::Duration,
) -> Result<ApplyRun, EraseError> {
    apply_under_lease_until(config, worker, wait, None).await
}

/// [`apply_under_lease`], stopping between tables once `stop` is cancelled
/// (see [`apply_all_until`]).
async fn apply_under_lease_until(
    config: &Config,
    worker: &str,
    wait: std::time::Duration,
    stop: Option<&tokio_util::sync::CancellationToken>,
) -> Result<ApplyRun, EraseError> {
    use crate::fleet::lease::{system_clock, Leases};
    let Some(ledger) = Ledger::open(&config.lake.root, &config.lake.storage_options).await? else {
        return Ok(ApplyRun::default());
    };
    let leases = Leases::new(
        ledger.object_store(),
        object_store::path::Path::from("_sluice_leases"),
        config.maintenance.lease_ttl.0,
        worker,
        system_clock(),
    );
    let give_up = tokio::time::Instant::now() + wait;
    let lease = loop {
        if let Some(lease) = leases.try_acquire(APPLY_LEASE).await? {
            break lease;
        }
        let holder = leases
            .holder(APPLY_LEASE)
            .await?
            .unwrap_or_else(|| "unknown".into());
        if tokio::time::Instant::now() >= give_up {
            return Err(EraseError::Busy { holder });
        }
        tracing::info!(%holder, "waiting for another erasure run to finish");
        tokio::time::sleep(std::time::Duration::from_secs(1).min(wait)).await;
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let result = leases
        .hold_while(lease.clone(), apply_all_until(config, now_ms, None, stop))
        .await;
    if let Err(error) = leases.release(&lease).await {
        tracing::warn!(%error, "could not release the erasure lease; it expires by itself");
    }
    result?
}

/// Runs [`apply_under_lease`] every `erasure.interval` until `stop`, on one
/// worker of the fleet at a time. A run under way when `stop` comes
/// finishes the table it is on and leaves the others for the next start.
pub fn spawn_loop(
    config: Config,
    worker: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use crate::telemetry::metrics;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(config.erasure.interval.0) => {}
            }
            let started = std::time::Instant::now();
            // Not dropped on stop: the run finishes the table it is on
            // (its commit and the ledger's record) and skips the rest.
            let work =
                apply_under_lease_until(&config, &worker, std::time::Duration::ZERO, Some(&stop));
            match work.await {
                Ok(run) => {
                    metrics::record_run("erasure", "*", true, started.elapsed());
                    let rows: u64 = run.applied.iter().map(|a| a.rows_deleted).sum();
                    metrics::ROWS_ERASED.fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        tables = run.applied.len(),
                        rows_deleted = rows,
                        purged = run.purged.len(),
                        "erasure run done"
                    )
                }
                Err(EraseError::Busy { holder }) => {
                    tracing::debug!(%holder, "erasure run skipped: another worker holds the lease")
                }
                Err(error) => {
                    metrics::record_run("erasure", "*", false, started.elapsed());
                    tracing::warn!(%error, "erasure run failed; retrying next interval")
                }
            }
        }
    })
}
