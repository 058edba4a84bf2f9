//! Physical erasure: once a deletion is older than the table's
//! `delta.deletedFileRetentionDuration` (7 days by default), the files it
//! removed are vacuumed and the transaction log is cut at a fresh checkpoint.
//!
//! The log holds a key's value in the `stats` (min/max) of the `add` actions
//! of the files that held it, in the commits that added them and in every
//! checkpoint since. A purge therefore
//!
//! 1. vacuums removed files past the retention (and orphans past it),
//! 2. writes a checkpoint of the current version `V`, which carries only
//!    live files (none holds the key) and tombstones (paths, no statistics),
//! 3. deletes every commit, checkpoint and checksum file of a version below
//!    `V`, whatever its time and whatever `delta.logRetentionDuration` says
//!    (delta-rs's own log expiry keeps everything from the oldest file newer
//!    than its cut-off, so it may keep the very commits that hold the key),
//! 4. checks before recording anything: no log file below `V` is left, the
//!    log from `V` on, the live files whose statistics admit a key, and
//!    every data file the table no longer references (a tombstone within the
//!    retention, or an orphan: a fenced batch, an aborted compaction or
//!    Z-order that read pre-erasure rows) are searched for the keys.
//!
//! A request whose key is still found anywhere stays `deleted`, with a
//! warning naming where; the next erasure run vacuums and checks again
//! (orphans are vacuumed once they are older than the retention, so a file
//! another worker is still writing is never deleted under it). `purged` is
//! therefore never recorded while `sluice forget verify` would fail.
//! Time travel to versions before the checkpoint ends with the purge.
//!
//! With the default retention a request is purged about 7 days after it is
//! applied, well inside the one-month deadline; `sluice forget status`
//! flags requests whose purge cannot happen before their deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::checkpoints::create_checkpoint;
use deltalake::operations::vacuum::Clock;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, ObjectStore};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use super::keys::KeyValue;
use super::ledger::{EventKind, Ledger, LedgerEvent, Request};
use super::verify::{self, Needle, TableVerification};
use super::{CrashPoint, EraseError, TableTarget};
use crate::maintain::vacuum::{vacuum, VacuumOptions};

/// Log objects deleted at once.
const PARALLEL_DELETES: usize = 16;

/// What a purge of one table did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The table.
    pub table: String,
    /// Requests purged.
    pub requests: Vec<String>,
    /// Requests still held: a key was found after the vacuum and log cut
    /// (they stay `deleted` and the next run tries again), with where.
    pub held: BTreeMap<String, Vec<String>>,
    /// Data files deleted by vacuum.
    pub files_vacuumed: u64,
    /// The checkpoint the log now starts at.
    pub checkpoint_version: i64,
    /// Log files (commits, checkpoints, checksums) deleted.
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
    let due: Vec<Request> = ledger
        .requests_with_keys()
        .await?
        .into_iter()
        .filter(|r| {
            r.tables.get(&target.name).is_some_and(|progress| {
                progress.purged.is_none()
                    && progress
                        .deletions
                        .last()
                        .is_some_and(|last| last.at_ms + retention_ms <= now_ms)
            })
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
    let version = table.version().unwrap_or(0) as i64;
    let store = table.object_store();
    let deleted = delete_log_below(&store, version).await?;
    let mut report = PurgeReport {
        table: target.name.clone(),
        files_vacuumed: vacuum_report.files.len() as u64,
        checkpoint_version: version,
        log_files_deleted: deleted,
        ..Default::default()
    };

    let left_below: Vec<String> = log_objects(&store)
        .await?
        .into_iter()
        .filter(|(v, _)| *v < version)
        .map(|(_, meta)| meta.location.to_string())
        .collect();
    let mut held = if left_below.is_empty() {
        still_held(&table, target, &due).await?
    } else {
        BTreeMap::new()
    };
    for request in &due {
        let hits = held.entry(request.id.clone()).or_default();
        hits.extend(
            left_below
                .iter()
                .map(|p| format!("{p}: below the checkpoint")),
        );
        if hits.is_empty() {
            report.requests.push(request.id.clone());
        } else {
            tracing::warn!(table = %target.name, request = %request.id, objects = hits.len(),
                first = %hits[0], "key still found after the purge's vacuum and log cut; the request stays deleted and is purged again next run");
            crate::telemetry::metrics::purge_held(&target.name);
        }
    }
    held.retain(|_, hits| !hits.is_empty());
    report.held = held;
    let detail = serde_json::json!({
        "files_vacuumed": report.files_vacuumed,
        "checkpoint_version": report.checkpoint_version,
        "log_files_deleted": report.log_files_deleted,
        "retention_seconds": retention.as_secs(),
    })
    .to_string();
    let events: Vec<LedgerEvent> = report
        .requests
        .iter()
        .map(|id| {
            let mut e = LedgerEvent::new(id, EventKind::Purged, now_ms);
            e.table = Some(target.name.clone());
            e.version = Some(version);
            e.detail = Some(detail.clone());
            e
        })
        .collect();
    ledger.append(&events).await?;
    tracing::info!(table = %target.name, requests = report.requests.len(), held = report.held.len(),
        files = report.files_vacuumed, log_files = report.log_files_deleted, checkpoint = version,
        "erasure purged");
    Ok(Some(report))
}

/// Where each request's key is still found in `table` after the log cut:
/// the log from the checkpoint on, live files whose statistics admit it,
/// and every data file the table no longer references. Each object is read
/// once for all the keys.
async fn still_held(
    table: &DeltaTable,
    target: &TableTarget,
    requests: &[Request],
) -> Result<BTreeMap<String, Vec<String>>, EraseError> {
    let mut needles = Vec::new();
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut live = std::collections::HashSet::new();
    for request in requests {
        // A request that cannot be checked is held, not the others with it.
        let kind = match target.key_kind(&request.key_column).await {
            Ok(kind) => kind,
            Err(problem) => {
                held.entry(request.id.clone())
                    .or_default()
                    .push(format!("cannot check the key: {problem}"));
                continue;
            }
        };
        let Ok(value) = KeyValue::parse(&request.key_value, kind) else {
            held.entry(request.id.clone()).or_default().push(format!(
                "cannot check the key: `{}` is not a {kind:?}",
                request.key_value
            ));
            continue;
        };
        let needle = Needle {
            column: request.key_column.clone(),
            value,
        };
        let mut found = TableVerification::default();
        live = verify::check_live_rows(table, target.source, &needle, false, &mut found).await?;
        held.entry(request.id.clone()).or_default().extend(
            found
                .hits
                .iter()
                .map(|h| format!("{}: {}", h.object, h.found)),
        );
        needles.push((request.id.clone(), needle));
    }
    let store = table.object_store();
    let objects: Vec<_> = store.list(None).try_collect().await?;
    // Live files were checked row by row above; like `verify`, long string
    // keys are also looked for in their raw bytes (another column may hold them).
    let raw_only = |needle: &Needle| matches!(&needle.value, KeyValue::Str(text) if text.len() >= verify::RAW_MIN_LEN);
    for meta in objects {
        let path = meta.location.to_string();
        if path.starts_with(crate::source::kinesis::positions::POSITIONS_DIR) {
            continue;
        }
        let is_live = live.contains(&path);
        if is_live && !needles.iter().any(|(_, n)| raw_only(n)) {
            continue;
        }
        let bytes = match store.get(&meta.location).await {
            Ok(found) => found.bytes().await?,
            // Deleted since the listing (another worker's vacuum, a temporary file).
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        for (id, needle) in &needles {
            let hit = if is_live {
                let KeyValue::Str(text) = &needle.value else {
                    continue;
                };
                (text.len() >= verify::RAW_MIN_LEN && verify::contains(&bytes, text.as_bytes()))
                    .then(|| verify::Hit {
                        object: path.clone(),
                        found: "raw bytes".into(),
                    })
            } else {
                verify::scan_bytes(&path, bytes.clone(), needle).await?
            };
            if let Some(hit) = hit {
                held.entry(id.clone())
                    .or_default()
                    .push(format!("{}: {}", hit.object, hit.found));
            }
        }
    }
    Ok(held)
}

/// The version a log object belongs to (commits, checkpoints, checksums,
/// compacted ranges: their first version); `None` for `_last_checkpoint`
/// and anything else.
fn log_version(path: &Path) -> Option<i64> {
    let name = path.filename()?;
    let digits = name.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || name.len() == 20 {
        return None;
    }
    digits.parse().ok()
}

/// Every versioned object under `_delta_log/`.
async fn log_objects(
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<(i64, object_store::ObjectMeta)>, EraseError> {
    let listed: Vec<_> = store
        .list(Some(&Path::from("_delta_log")))
        .try_collect()
        .await?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| log_version(&meta.location).map(|v| (v, meta)))
        .collect())
}

/// Deletes every log object of a version below `checkpoint`; returns how many.
async fn delete_log_below(
    store: &Arc<dyn ObjectStore>,
    checkpoint: i64,
) -> Result<u64, EraseError> {
    let below: Vec<Path> = log_objects(store)
        .await?
        .into_iter()
        .filter(|(v, _)| *v < checkpoint)
        .map(|(_, meta)| meta.location)
        .collect();
    let mut deletes = futures::stream::iter(below)
        .map(|path| {
            let store = store.clone();
            async move { store.delete(&path).await }
        })
        .buffer_unordered(PARALLEL_DELETES);
    let mut deleted = 0;
    while let Some(result) = deletes.next().await {
        match result {
            Ok(()) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_versions_are_read_from_every_kind_of_log_file() {
        let version = |p: &str| log_version(&Path::from(p));
        assert_eq!(version("_delta_log/00000000000000000007.json"), Some(7));
        assert_eq!(
            version("_delta_log/00000000000000000010.checkpoint.parquet"),
            Some(10)
        );
        assert_eq!(
            version("_delta_log/00000000000000000010.checkpoint.0000000001.0000000002.parquet"),
            Some(10)
        );
        assert_eq!(version("_delta_log/00000000000000000003.crc"), Some(3));
        assert_eq!(
            version("_delta_log/00000000000000000004.00000000000000000009.compacted.json"),
            Some(4)
        );
        assert_eq!(version("_delta_log/_last_checkpoint"), None);
        assert_eq!(version("_delta_log/00000000000000000004"), None);
    }
}
