//! Suppression at ingest: records for a key under an erasure request are
//! dropped (and counted) before they reach a table, so replays, backfills
//! and late events cannot bring erased data back.
//!
//! Each pipeline holds a [`Suppressor`] with the key sets of its table, read
//! from the ledger before ingestion starts consuming (it waits until the
//! ledger has been read once) and again every `erasure.suppression_refresh`;
//! a failed refresh keeps the last keys read, with a warning and a metric.
//! Records that land in the short window before a refresh are deleted by
//! the next erasure run (see `apply`).
//!
//! Records that fail to decode are matched too, before they become dead
//! letters: a raw payload holding a key of a request on the table's
//! dead-letter table (as a JSON token, the rule erasure uses for dead
//! letters) is dropped and counted as suppressed. That holds whether or not
//! the dead-letter table existed when the request was applied.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::collections::HashSet;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use tokio_util::sync::CancellationToken;

use super::hashing::{KeyHash, KeyHasher};
use super::keys::{KeyKind, KeySet, KeyValue};
use super::ledger::{Ledger, Request};
use super::EraseError;

/// The keys one table suppresses: clear values, and keyed hashes of the
/// requests filed with `erasure.key_hash_secret` (per key column).
#[derive(Debug, Default)]
struct Keys {
    clear: Vec<KeySet>,
    hashed: BTreeMap<String, HashSet<KeyHash>>,
}

impl Keys {
    fn len(&self) -> usize {
        self.clear.iter().map(KeySet::len).sum::<usize>()
            + self.hashed.values().map(HashSet::len).sum::<usize>()
    }
}

/// The keys one table suppresses.
#[derive(Debug)]
pub struct Suppressor {
    table: String,
    schema: SchemaRef,
    hasher: Option<KeyHasher>,
    rows: RwLock<Arc<Keys>>,
    payloads: RwLock<Arc<Keys>>,
}

impl Suppressor {
    /// No keys yet, for `table` with the rows' `schema`; `hasher` compares
    /// the keys the ledger keeps only as hashes.
    pub fn new(table: &str, schema: SchemaRef, hasher: Option<KeyHasher>) -> Arc<Self> {
        Arc::new(Self {
            table: table.to_string(),
            schema,
            hasher,
            rows: RwLock::new(Arc::default()),
            payloads: RwLock::new(Arc::default()),
        })
    }

    /// The ledger name of this table's dead-letter table.
    fn dead_letter_table(&self) -> String {
        format!("{}.dead_letters", self.table)
    }

    /// Replaces the keys with those of every request targeting this table
    /// (and, for raw payloads, its dead-letter table).
    pub fn update(&self, requests: &[Request]) {
        let rows = self.keys(requests, &self.table);
        let payloads = self.keys(requests, &self.dead_letter_table());
        *self.rows.write().expect("suppressor lock") = Arc::new(rows);
        *self.payloads.write().expect("suppressor lock") = Arc::new(payloads);
    }

    fn keys(&self, requests: &[Request], table: &str) -> Keys {
        let mut clear: BTreeMap<String, KeySet> = BTreeMap::new();
        let mut hashed: BTreeMap<String, HashSet<KeyHash>> = BTreeMap::new();
        for request in requests.iter().filter(|r| r.tables.contains_key(table)) {
            let Some(kind) =
                crate::table::schema::field_at(self.schema.fields(), &request.key_column)
                    .and_then(|f| KeyKind::of(f.data_type()))
            else {
                continue;
            };
            if let (Some(hash), true) = (request.key_hash, request.key_value.is_empty()) {
                if self.hasher.is_none() {
                    tracing::warn!(table, request = %request.id,
                        "request keeps only a keyed hash but erasure.key_hash_secret is not set: its key cannot be suppressed");
                    continue;
                }
                hashed
                    .entry(request.key_column.clone())
                    .or_default()
                    .insert(hash);
                continue;
            }
            let Ok(value) = KeyValue::parse(&request.key_value, kind) else {
                continue;
            };
            clear
                .entry(request.key_column.clone())
                .or_insert_with(|| KeySet::new(&request.key_column, kind))
                .insert(value);
        }
        Keys {
            clear: clear.into_values().collect(),
            hashed,
        }
    }

    /// Number of keys suppressed.
    pub fn len(&self) -> usize {
        self.rows.read().expect("suppressor lock").len()
    }

    /// No keys suppressed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A mask of the rows of `batch` that hold a suppressed key (`None`: none do).
    pub fn mask(
        &self,
        batch: &RecordBatch,
    ) -> Result<Option<BooleanArray>, arrow::error::ArrowError> {
        let keys = self.rows.read().expect("suppressor lock").clone();
        let mut mask: Option<BooleanArray> = None;
        let mut add = |hits: BooleanArray| -> Result<(), arrow::error::ArrowError> {
            mask = Some(match mask.take() {
                None => hits,
                Some(previous) => arrow::compute::or(&previous, &hits)?,
            });
            Ok(())
        };
        for set in keys.clear.iter() {
            if let Some(column) = crate::table::schema::column_at(batch, set.column()) {
                add(set.matches(column.as_ref())?)?;
            }
        }
        if let Some(hasher) = &self.hasher {
            for (name, hashes) in &keys.hashed {
                let Some(column) = crate::table::schema::column_at(batch, name) else {
                    continue;
                };
                let text = arrow::compute::cast(&column, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                add(text
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| hashes.contains(&hasher.hash(name, v)))))
                    .collect())?;
            }
        }
        Ok(mask.filter(|m| m.true_count() > 0))
    }

    /// Whether a record that did not decode holds a suppressed key in its
    /// raw payload (and so must not become a dead letter).
    pub fn holds_payload(&self, payload: &[u8]) -> bool {
        let keys = self.payloads.read().expect("suppressor lock").clone();
        if keys.len() == 0 {
            return false;
        }
        let text = String::from_utf8_lossy(payload);
        if keys
            .clear
            .iter()
            .any(|set| set.payload_match(&text).is_some())
        {
            return true;
        }
        match &self.hasher {
            Some(hasher) if !keys.hashed.is_empty() => {
                keys.hashed.iter().any(|(column, hashes)| {
                    super::hashing::values_after(&text, column)
                        .iter()
                        .any(|t| hashes.contains(&hasher.hash(column, t)))
                })
            }
            _ => false,
        }
    }
}

/// Reads the ledger (opening it if `ledger` holds none yet) and updates
/// every suppressor; no ledger means no keys.
pub async fn refresh(
    lake_root: &str,
    storage_options: &BTreeMap<String, String>,
    ledger: &mut Option<Ledger>,
    suppressors: &[Arc<Suppressor>],
) -> Result<(), EraseError> {
    if ledger.is_none() {
        *ledger = Ledger::open(lake_root, storage_options).await?;
    }
    let requests = match ledger {
        Some(ledger) => ledger.requests().await?,
        None => Vec::new(),
    };
    for suppressor in suppressors {
        suppressor.update(&requests);
    }
    crate::telemetry::metrics::LEDGER_READ_MS.store(
        chrono::Utc::now().timestamp_millis(),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(())
}

/// Reads the ledger into `suppressors` before ingestion consumes anything:
/// retries with backoff (up to 10 s apart) until a read succeeds; `false`
/// if `stop` fired first. Records must not be consumed while the keys to
/// drop are unknown.
pub async fn first_refresh(
    lake_root: &str,
    storage_options: &BTreeMap<String, String>,
    suppressors: &[Arc<Suppressor>],
    stop: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match refresh(lake_root, storage_options, &mut None, suppressors).await {
            Ok(()) => return true,
            Err(error) => {
                crate::telemetry::metrics::ledger_read_failed();
                tracing::warn!(%error, retry_in = ?delay,
                    "cannot read the erasure ledger; ingestion waits until the keys to suppress are known");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The suppressors of a worker's tables; tables made from templates join
/// it as they appear.
pub type SuppressorSet = Arc<std::sync::Mutex<Vec<Arc<Suppressor>>>>;

/// Refreshes `suppressors` every `every` until `stop`.
pub fn spawn_refresher(
    lake_root: String,
    storage_options: BTreeMap<String, String>,
    suppressors: SuppressorSet,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ledger = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let current = suppressors.lock().expect("suppressors lock").clone();
            if let Err(error) = refresh(&lake_root, &storage_options, &mut ledger, &current).await {
                crate::telemetry::metrics::ledger_read_failed();
                tracing::warn!(%error, "could not refresh erasure keys; keeping the previous ones");
                // Open it afresh next time (it may have been replaced or repaired).
                ledger = None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erase::ledger::{fold, EventKind, LedgerEvent};
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn masks_rows_of_requested_keys_for_this_table_only() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Utf8,
            true,
        )]));
        let request = |id: &str, table: &str, value: &str| {
            let mut e = LedgerEvent::new(id, EventKind::Requested, 1);
            e.table = Some(table.into());
            e.key_column = Some("user_id".into());
            e.key_value = Some(value.into());
            e
        };
        let requests = fold(&[request("a", "rides", "u-1"), request("b", "other", "u-2")]);
        let suppressor = Suppressor::new("rides", schema.clone(), None);
        suppressor.update(&requests);
        assert_eq!(suppressor.len(), 1);
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                "u-1", "u-2", "u-3", "u-1",
            ]))],
        )
        .unwrap();
        let mask = suppressor.mask(&batch).unwrap().unwrap();
        assert_eq!(mask.true_count(), 2);
        assert!(mask.value(0) && mask.value(3));
    }
}
