//! Applying erasure requests to a table: find the files that hold a key,
//! rewrite only those, and commit once per table.
//!
//! Per table, every pending key is batched. A file is a candidate when its
//! min/max statistics on the key column admit one of the keys; when the
//! column is the table's key (bloom-filtered by the writer), the candidate
//! is then confirmed against each row group's bloom filter without reading
//! any data, and then by reading the key column alone. Only files where a
//! row really holds a key are read whole and rewritten without those rows;
//! a bloom false positive costs one column read. Every affected file is
//! rewritten exactly once, whatever the number of keys.
//!
//! The commit removes the rewritten files and adds their replacements (both
//! `dataChange=true`) under the `DELETE` operation; its `commitInfo.sluice`
//! names the delete batch, the request ids and the counts, never the keys.
//! It is landed by [`commit_rewrite`]: appends that commit first are let
//! through and the commit retried on top of them; if a concurrent compaction
//! removed a file being rewritten, the whole table is planned again.
//!
//! Crash safety: the ledger records `applying` (batch id, version read)
//! before the table commit and `deleted` after it. A batch left open by a
//! crash is resolved on the next run by looking for its id in the table's
//! commits since the version read: found, its counts are recorded as
//! `deleted`; not found, it is `abandoned` and its requests are applied
//! again. Nothing is applied twice and no request is lost.
//!
//! Late records: ingestion suppresses keys it knows of, but records that
//! arrive between a request and the ingest process's next ledger refresh can
//! still land. So a request stays pending on a table until it is purged:
//! every run re-checks the files added to the table after the version its
//! last deletion was planned on (by table version, never by file time, so
//! a slow commit or a worker's skewed clock cannot hide a straggler), and
//! deletes stragglers in a further commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use deltalake::kernel::{Action, Add};
#[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use super::find::{confirm, stat_at, Candidate};
use super::keys::{KeySet, KeyValue, MatchSource};
use super::ledger::{open_batches, EventKind, Ledger, LedgerEvent, Request};
use super::{CrashPoint, EraseError, TableTarget};
use crate::maintain::files::{live_files_by_partition, with_partition_columns, LiveFile};
use crate::maintain::{commit_rewrite, table_key, RewriteOutcome};
use crate::table::deletion_vectors::LiveRows;
use crate::table::writer::writer_properties;

/// Files rewritten at once (one Parquet encoder per core).
const PARALLEL_FILES: usize = 2;
/// Candidate files confirmed at once (bloom filter and key column reads: mostly I/O).
const PARALLEL_CONFIRMS: usize = 8;
/// Times a table is planned again after a concurrent rewrite removed a candidate.
const REPLANS: u32 = 5;
/// Output file size for rewritten files (one input file gives one output file).
const REWRITE_TARGET_SIZE: u64 = 1 << 30;

/// What applying did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableApplyReport {
    /// The table.
    pub table: String,
    /// Requests whose keys were looked for.
    pub requests: usize,
    /// Keys looked for.
    pub keys: usize,
    /// Live files in the table.
    pub files_total: u64,
    /// Files whose statistics admitted a key.
    pub files_in_range: u64,
    /// Files a bloom filter still admitted, whose key column was read.
    pub files_read: u64,
    /// Files rewritten.
    pub files_rewritten: u64,
    /// Bytes of the files rewritten.
    pub bytes_rewritten: u64,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// The delete commit, if one was needed.
    pub version: Option<i64>,
    /// Open batches resolved from an earlier crash.
    pub recovered_batches: usize,
    /// Paths of the files rewritten.
    pub rewritten: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// One delete scope: keys to look for in files added after table version
/// `since` (`None`: in every file).
struct Scope {
    since: Option<i64>,
    sets: Vec<KeySet>,
}

/// A rewritten file.
struct Rewritten {
    file: LiveFile,
    adds: Vec<Add>,
    per_key: HashMap<(String, KeyValue), u64>,
}

/// Records the pending requests of a table that does not exist (a
/// dead-letter table no record was ever rejected into): nothing to delete
/// now, and purged once the retention a table would have had has passed
/// since, like any other table. Until then the table may still appear (a
/// record rejected before ingestion knew of the request) and is then
/// applied and purged as usual.
pub async fn record_absent(
    ledger: &mut Ledger,
    target: &TableTarget,
    now_ms: i64,
) -> Result<TableApplyReport, EraseError> {
    let retention_ms = target
        .config
        .properties
        .get("delta.deletedFileRetentionDuration")
        .and_then(|v| crate::table::parse_interval(v))
        .unwrap_or(crate::maintain::vacuum::DEFAULT_RETENTION)
        .as_millis() as i64;
    let mut events = Vec::new();
    for request in ledger.requests().await? {
        let Some(progress) = request.tables.get(&target.name) else {
            continue;
        };
        let deleted_at = match progress.deletions.last() {
            Some(last) => last.at_ms,
            None => {
                events.push(deleted_event(
                    &request.id,
                    &target.name,
                    None,
                    now_ms,
                    None,
                    0,
                    0,
                ));
                now_ms
            }
        };
        if progress.purged.is_none() && deleted_at + retention_ms <= now_ms {
            let mut purged = LedgerEvent::new(&request.id, EventKind::Purged, now_ms);
            purged.table = Some(target.name.clone());
            purged.detail = Some(r#"{"table_absent":true}"#.into());
            events.push(purged);
        }
    }
    let requests = events.len();
    ledger.append(&events).await?;
    Ok(TableApplyReport {
        table: target.name.clone(),
        requests,
        ..Default::default()
    })
}

/// Applies every pending request that targets `target`; see the module docs.
pub async fn apply_table(
    ledger: &mut Ledger,
    target: &TableTarget,
    now_ms: i64,
    crash: Option<CrashPoint>,
) -> Result<TableApplyReport, EraseError> {
    let started = Instant::now();
    let mut report = TableApplyReport {
        table: target.name.clone(),
        ..Default::default()
    };
    let mut table = target.open().await?;
    report.recovered_batches = recover(ledger, &table, &target.name, now_ms).await?;
    for _ in 0..REPLANS {
        let requests: Vec<Request> = ledger
            .requests_with_keys()
            .await?
            .into_iter()
            .filter(|r| {
                r.tables
                    .get(&target.name)
                    .is_some_and(|p| p.purged.is_none())
            })
            .collect();
        if requests.is_empty() {
            break;
        }
        table.update_state().await?;
        match delete_once(
            ledger,
            &mut table,
            target,
            &requests,
            now_ms,
            crash,
            &mut report,
        )
        .await?
        {
            Some(done) => {
                report = done;
                break;
            }
            None => continue,
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One planning round; `None` when a concurrent commit removed a candidate.
async fn delete_once(
    ledger: &mut Ledger,
    table: &mut DeltaTable,
    target: &TableTarget,
    requests: &[Request],
    now_ms: i64,
    crash: Option<CrashPoint>,
    report: &mut TableApplyReport,
) -> Result<Option<TableApplyReport>, EraseError> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let key_column = table_key(table);
    let mut scopes: Vec<Scope> = Vec::new();
    let mut owners: HashMap<(String, KeyValue), Vec<String>> = HashMap::new();
    let mut fresh: Vec<&Request> = Vec::new();
    for request in requests {
        let progress = &request.tables[&target.name];
        let Ok(kind) = target.key_kind(&request.key_column).await else {
            tracing::warn!(table = %target.name, request = %request.id, column = %request.key_column,
                "the table has no usable column for this key; skipped");
            continue;
        };
        let value = KeyValue::parse(&request.key_value, kind)
            .map_err(|e| EraseError::Invalid(format!("request {}: {e}", request.id)))?;
        let since = match progress.deletions.last() {
            None => {
                fresh.push(request);
                None
            }
            Some(last) => last.read_version,
        };
        owners
            .entry((request.key_column.clone(), value.clone()))
            .or_default()
            .push(request.id.clone());
        let scope = match scopes.iter_mut().find(|s| s.since == since) {
            Some(scope) => scope,
            None => {
                scopes.push(Scope {
                    since,
                    sets: Vec::new(),
                });
                scopes.last_mut().expect("just pushed")
            }
        };
        match scope
            .sets
            .iter_mut()
            .find(|s| s.column() == request.key_column)
        {
            Some(set) => set.insert(value),
            None => {
                let mut set = KeySet::new(&request.key_column, kind);
                set.insert(value);
                scope.sets.push(set);
            }
        }
    }
    report.requests = requests.len();
    report.keys = owners.len();

    let files: Vec<LiveFile> = live_files_by_partition(table, &[])?
        .into_values()
        .flatten()
        .collect();
    report.files_total = files.len() as u64;
    let mut added: HashMap<i64, Option<HashSet<String>>> = HashMap::new();
    for version in scopes.iter().filter_map(|s| s.since) {
        if let std::collections::hash_map::Entry::Vacant(entry) = added.entry(version) {
            entry.insert(added_since(table, version).await);
        }
    }
    let in_range: Vec<Candidate> = files
        .into_iter()
        .filter_map(|file| candidate(file, &scopes, &added, target.source))
        .collect();
    report.files_in_range = in_range.len() as u64;

    let store = table.object_store();
    let mut confirms = futures::stream::iter(in_range.into_iter().map(|c| {
        let (store, key, source) = (store.clone(), key_column.clone(), target.source);
        tokio::spawn(async move { confirm(store, c, key.as_deref(), source).await })
    }))
    .buffer_unordered(PARALLEL_CONFIRMS);
    let mut confirmed: Vec<Candidate> = Vec::new();
    while let Some(joined) = confirms.next().await {
        let (read, result) =
            joined.map_err(|e| EraseError::Invalid(format!("confirm task failed: {e}")))??;
        report.files_read += u64::from(read);
        confirmed.extend(result);
    }
    drop(confirms);

    let reader_table = table.clone();
    let key_for_writer = key_column.clone();
    let mut rewrites = futures::stream::iter(confirmed.into_iter().map(|c| {
        let (store, table, schema, key) = (
            store.clone(),
            reader_table.clone(),
            schema.clone(),
            key_for_writer.clone(),
        );
        let source = target.source;
        tokio::spawn(async move { rewrite(store, &table, schema, key.as_deref(), c, source).await })
    }))
    .buffer_unordered(PARALLEL_FILES);
    let mut rewritten: Vec<Rewritten> = Vec::new();
    while let Some(joined) = rewrites.next().await {
        let result =
            joined.map_err(|e| EraseError::Invalid(format!("rewrite task failed: {e}")))??;
        rewritten.extend(result);
    }
    drop(rewrites);

    let mut per_request: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for done in &rewritten {
        let mut in_file: std::collections::HashSet<&String> = Default::default();
        for (key, rows) in &done.per_key {
            for id in owners.get(key).into_iter().flatten() {
                let entry = per_request.entry(id.clone()).or_default();
                entry.0 += rows;
                if in_file.insert(id) {
                    entry.1 += 1;
                }
            }
        }
    }
    let rows_deleted: u64 = rewritten.iter().flat_map(|r| r.per_key.values()).sum();
    let read_version = table.version().unwrap_or(0) as i64;

    if rewritten.is_empty() {
        // Nothing holds the keys: the fresh requests are done as of this version.
        let events: Vec<LedgerEvent> = fresh
            .iter()
            .map(|r| {
                let mut e =
                    deleted_event(&r.id, &target.name, Some(read_version), now_ms, None, 0, 0);
                e.detail = Some(read_detail(read_version));
                e
            })
            .collect();
        ledger.append(&events).await?;
        return Ok(Some(std::mem::take(report)));
    }

    let batch_id = uuid::Uuid::new_v4().to_string();
    let ids: Vec<String> = per_request
        .keys()
        .cloned()
        .chain(fresh.iter().map(|r| r.id.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let intents: Vec<LedgerEvent> = ids
        .iter()
        .map(|id| {
            let mut e = LedgerEvent::new(id, EventKind::Applying, now_ms);
            e.table = Some(target.name.clone());
            e.version = Some(read_version);
            e.batch_id = Some(batch_id.clone());
            e
        })
        .collect();
    ledger.append(&intents).await?;
    super::crash_if(crash, CrashPoint::AfterIntent)?;

    let counts: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .map(|id| {
            let (rows, files) = per_request.get(id).copied().unwrap_or_default();
            (
                id.clone(),
                serde_json::json!({"rows": rows, "files": files}),
            )
        })
        .collect();
    let info = serde_json::json!({
        "kind": "erase",
        "batch": batch_id,
        "requests": counts,
        "rows_deleted": rows_deleted,
        "files_rewritten": rewritten.len(),
    });
    let inputs: Vec<String> = rewritten.iter().map(|r| r.file.id()).collect();
    let bytes: u64 = rewritten.iter().map(|r| r.file.size).sum();
    let mut actions = Vec::new();
    for done in &rewritten {
        let mut remove = done.file.remove.clone();
        remove.data_change = true;
        remove.deletion_timestamp = Some(now_ms);
        actions.push(Action::Remove(remove));
        actions.extend(done.adds.iter().cloned().map(Action::Add));
    }
    let operation = DeltaOperation::Delete {
        predicate: Some(format!(
            "sluice erasure batch {batch_id} ({} request(s))",
            ids.len()
        )),
    };
    match commit_rewrite(table, &inputs, actions, operation, info).await? {
        RewriteOutcome::Committed(version) => {
            super::crash_if(crash, CrashPoint::AfterCommit)?;
            let events: Vec<LedgerEvent> = ids
                .iter()
                .map(|id| {
                    let (rows, files) = per_request.get(id).copied().unwrap_or_default();
                    let mut e = deleted_event(
                        id,
                        &target.name,
                        Some(version),
                        now_ms,
                        Some(&batch_id),
                        rows,
                        files,
                    );
                    e.detail = Some(read_detail(read_version));
                    e
                })
                .collect();
            ledger.append(&events).await?;
            report.files_rewritten = rewritten.len() as u64;
            report.bytes_rewritten = bytes;
            report.rows_deleted = rows_deleted;
            report.version = Some(version);
            report.rewritten = rewritten.iter().map(|r| r.file.path.clone()).collect();
            tracing::info!(table = %target.name, version, rows_deleted, files = rewritten.len(), "erasure committed");
            Ok(Some(std::mem::take(report)))
        }
        RewriteOutcome::Aborted(reason) => {
            tracing::warn!(table = %target.name, %reason, "erasure batch lost a race; planning again");
            let events: Vec<LedgerEvent> = ids
                .iter()
                .map(|id| {
                    let mut e = LedgerEvent::new(id, EventKind::Abandoned, now_ms);
                    e.table = Some(target.name.clone());
                    e.batch_id = Some(batch_id.clone());
                    e.detail = Some(serde_json::json!({ "reason": reason }).to_string());
                    e
                })
                .collect();
            ledger.append(&events).await?;
            Ok(None)
        }
    }
}

fn deleted_event(
    request: &str,
    table: &str,
    version: Option<i64>,
    now_ms: i64,
    batch: Option<&str>,
    rows: u64,
    files: u64,
) -> LedgerEvent {
    let mut e = LedgerEvent::new(request, EventKind::Deleted, now_ms);
    e.table = Some(table.to_string());
    e.version = version;
    e.batch_id = batch.map(str::to_string);
    e.rows_deleted = Some(rows as i64);
    e.files_rewritten = Some(files as i64);
    e
}

/// The `detail` of a `deleted` event: the version the deletion was planned on.
fn read_detail(read_version: i64) -> String {
    serde_json::json!({ "read_version": read_version }).to_string()
}

/// The live files of `table` that were not live at `version`: added since
/// (appends, and rewrites of compaction, Z-order and erasure). `None` when
/// that version can no longer be loaded (its log expired): every file
/// counts then.
async fn added_since(table: &DeltaTable, version: i64) -> Option<HashSet<String>> {
    let mut then = table.clone();
    if let Err(error) = then.load_version(version.max(0) as u64).await {
        tracing::warn!(version, %error, "cannot load the version a deletion was planned on; re-checking every file");
        return None;
    }
    let old: HashSet<String> = live_files_by_partition(&then, &[])
        .ok()?
        .into_values()
        .flatten()
        .map(|f| f.path)
        .collect();
    let now = live_files_by_partition(table, &[]).ok()?;
    Some(
        now.into_values()
            .flatten()
            .map(|f| f.path)
            .filter(|p| !old.contains(p))
            .collect(),
    )
}

/// The keys `file` may hold by its statistics, if any (raw payloads have
/// no useful statistics: every file may hold every key).
fn candidate(
    file: LiveFile,
    scopes: &[Scope],
    added: &HashMap<i64, Option<HashSet<String>>>,
    source: MatchSource,
) -> Option<Candidate> {
    let stats: serde_json::Value = file
        .stats
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut sets: Vec<KeySet> = Vec::new();
    let in_scope = |scope: &&Scope| match scope.since {
        None => true,
        Some(version) => added
            .get(&version)
            .and_then(Option::as_ref)
            .is_none_or(|paths| paths.contains(&file.path)),
    };
    for scope in scopes.iter().filter(in_scope) {
        for set in &scope.sets {
            let column = set.column();
            let found = match source {
                MatchSource::Column => set.in_range(
                    stats.get("minValues").and_then(|m| stat_at(m, column)),
                    stats.get("maxValues").and_then(|m| stat_at(m, column)),
                ),
                MatchSource::Payload => set.values(),
            };
            if found.is_empty() {
                continue;
            }
            let into = match sets.iter_mut().find(|s| s.column() == column) {
                Some(existing) => existing,
                None => {
                    sets.push(KeySet::new(column, set.kind()));
                    sets.last_mut().expect("just pushed")
                }
            };
            for value in found {
                into.insert(value);
            }
        }
    }
    (!sets.is_empty()).then_some(Candidate { file, sets })
}

/// Rewrites a confirmed file without its keys' rows.
async fn rewrite(
    store: Arc<dyn deltalake::ObjectStore>,
    table: &DeltaTable,
    schema: arrow::datatypes::SchemaRef,
    key_column: Option<&str>,
    candidate: Candidate,
    source: MatchSource,
) -> Result<Option<Rewritten>, EraseError> {
    let Candidate { file, sets } = candidate;
    // Rows a deletion vector already removed are dropped too, and a file
    // whose only matches are such rows is still rewritten: the erased
    // values must leave the bytes, not only the table.
    let mut live = LiveRows::of(&store, table.table_url(), file.deletion_vector()).await?;
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader = ParquetObjectReader::new(store, file.location.clone()).with_file_size(file.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let mut writer = RecordBatchWriter::for_table(table)?
        .with_writer_properties(writer_properties(key_column))
        .with_target_file_size(REWRITE_TARGET_SIZE);
    let mut stream = builder.with_batch_size(8192).build()?;
    let mut per_key: HashMap<(String, KeyValue), u64> = HashMap::new();
    let mut behind_vector = false;
    while let Some(batch) = stream.try_next().await? {
        let batch = with_partition_columns(batch, &schema, &file.partition)?;
        let alive = live.mask(batch.num_rows());
        let is_live = |row: usize| alive.as_ref().is_none_or(|a| a.value(row));
        let mut keep: Vec<bool> = (0..batch.num_rows()).map(is_live).collect();
        for set in &sets {
            for (row, value) in set.matching_rows(&batch, source)? {
                if !is_live(row) {
                    behind_vector = true;
                } else if std::mem::replace(&mut keep[row], false) {
                    *per_key
                        .entry((set.column().to_string(), value))
                        .or_default() += 1;
                }
            }
        }
        let keep = arrow::array::BooleanArray::from(keep);
        let kept = arrow::compute::filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            writer.write(kept).await?;
        }
    }
    if per_key.is_empty() && !behind_vector {
        writer.reset();
        return Ok(None);
    }
    let adds = writer.flush().await?;
    Ok(Some(Rewritten {
        file,
        adds,
        per_key,
    }))
}

/// Resolves `applying` batches left open by a crash; returns how many.
async fn recover(
    ledger: &mut Ledger,
    table: &DeltaTable,
    name: &str,
    now_ms: i64,
) -> Result<usize, EraseError> {
    let open = open_batches(&ledger.events().await?, name);
    let latest = table.version().unwrap_or(0) as i64;
    let store = table.object_store();
    for batch in &open {
        let mut landed: Option<(i64, serde_json::Value)> = None;
        for version in batch.read_version + 1..=latest {
            let path = deltalake::Path::from(format!("_delta_log/{version:020}.json"));
            let bytes = match store.get(&path).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .map_err(deltalake::DeltaTableError::from)?,
                Err(deltalake::ObjectStoreError::NotFound { .. }) => continue,
                Err(e) => return Err(deltalake::DeltaTableError::from(e).into()),
            };
            let info = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v.get("commitInfo").and_then(|c| c.get("sluice")).cloned());
            if let Some(info) = info.filter(|i| i["batch"] == batch.batch_id.as_str()) {
                landed = Some((version, info));
                break;
            }
        }
        let events: Vec<LedgerEvent> = match &landed {
            Some((version, info)) => batch
                .request_ids
                .iter()
                .map(|id| {
                    let counts = &info["requests"][id];
                    let mut e = deleted_event(
                        id,
                        name,
                        Some(*version),
                        now_ms,
                        Some(&batch.batch_id),
                        counts["rows"].as_u64().unwrap_or(0),
                        counts["files"].as_u64().unwrap_or(0),
                    );
                    e.detail = Some(read_detail(batch.read_version));
                    e
                })
                .collect(),
            None => batch
                .request_ids
                .iter()
                .map(|id| {
                    let mut e = LedgerEvent::new(id, EventKind::Abandoned, now_ms);
                    e.table = Some(name.to_string());
                    e.batch_id = Some(batch.batch_id.clone());
                    e.detail = Some(r#"{"reason":"no commit found after a crash"}"#.into());
                    e
                })
                .collect(),
        };
        tracing::info!(table = name, batch = %batch.batch_id, landed = landed.is_some(), "resolved an interrupted erasure batch");
        ledger.append(&events).await?;
    }
    Ok(open.len())
}
