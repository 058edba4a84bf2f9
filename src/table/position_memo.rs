//! The source positions a table records at one version, remembered from
//! one commit to the next.
//!
//! A fenced commit first reads the position every partition of its batch
//! has in the table ([`super::recorded_positions`]). delta-rs answers each
//! partition with a replay of the log since the last checkpoint: for a topic
//! of 16 partitions, 16 replays before every commit. What a version records
//! never changes, and a worker that committed version `v` on top of `v - 1`
//! knows what `v` records: what `v - 1` did, with its own positions on top.
//! So the positions read for a commit are remembered with the version they
//! were read at and carried onto the commit that lands right after it. The
//! next commit uses them only if the table it loaded is at exactly that
//! version; any other commit in between (another worker, maintenance, a
//! rebase by delta-rs) means a new version, and a new read from the log.
//!
//! Entries are keyed by the table's location and its `metaData.id`, so a
//! table deleted and created again at the same place starts afresh.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use deltalake::{DeltaTable, DeltaTableError};

use super::commit::PositionUpdate;

/// What one table recorded at one version, for the partitions asked about
/// (`None`: no position).
struct Known {
    version: u64,
    positions: HashMap<String, Option<i64>>,
}

/// Per table (location and id), the latest version whose positions are known.
static MEMO: LazyLock<Mutex<HashMap<String, Known>>> = LazyLock::new(Default::default);

/// A table's entry in the memo: its location and `metaData.id`.
pub struct TableKey(String);

impl TableKey {
    /// Notes that `updates` landed as version `to`, on top of version
    /// `from` (the version the table had loaded when its positions were
    /// read). Known positions of `from` carry over to `to` only when
    /// nothing landed in between.
    pub fn committed(&self, from: u64, to: u64, updates: &[PositionUpdate]) {
        carry(&self.0, from, to, updates);
    }
}

/// The key of `table`'s entry, and the version it has loaded.
fn key(table: &DeltaTable) -> Result<(String, u64), DeltaTableError> {
    let snapshot = table.snapshot()?;
    let metadata = serde_json::to_value(snapshot.metadata())
        .map_err(|e| DeltaTableError::Generic(format!("table metadata: {e}")))?;
    let id = metadata.get("id").and_then(|id| id.as_str()).unwrap_or("");
    Ok((format!("{} {id}", table.table_url()), snapshot.version()))
}

/// The positions `table` (at its loaded version) records for `app_ids`:
/// remembered when that version's are known, read from the log otherwise;
/// with the table's key, to note the commit made on them.
pub async fn recorded(
    table: &DeltaTable,
    app_ids: &[String],
) -> Result<(HashMap<String, i64>, TableKey), DeltaTableError> {
    let (key, version) = key(table)?;
    if let Some(found) = lookup(&key, version, app_ids) {
        return Ok((found, TableKey(key)));
    }
    let found = super::recorded_positions(table, app_ids).await?;
    remember(&key, version, app_ids, &found);
    Ok((found, TableKey(key)))
}

fn carry(key: &str, from: u64, to: u64, updates: &[PositionUpdate]) {
    let mut memo = MEMO.lock().expect("position memo lock");
    match memo.get_mut(key) {
        Some(known) if known.version == from && to == from + 1 => {
            known.version = to;
            for update in updates {
                known
                    .positions
                    .insert(update.app_id.clone(), Some(update.last));
            }
        }
        _ => {
            memo.remove(key);
        }
    }
}

fn lookup(key: &str, version: u64, app_ids: &[String]) -> Option<HashMap<String, i64>> {
    let memo = MEMO.lock().expect("position memo lock");
    let known = memo.get(key).filter(|k| k.version == version)?;
    let mut found = HashMap::new();
    for app_id in app_ids {
        if let Some(position) = known.positions.get(app_id)? {
            found.insert(app_id.clone(), *position);
        }
    }
    Some(found)
}

fn remember(key: &str, version: u64, app_ids: &[String], found: &HashMap<String, i64>) {
    let mut memo = MEMO.lock().expect("position memo lock");
    let known = memo.entry(key.to_string()).or_insert_with(|| Known {
        version,
        positions: HashMap::new(),
    });
    if known.version != version {
        // Another version's positions: keep the newer.
        if known.version > version {
            return;
        }
        known.version = version;
        known.positions.clear();
    }
    for app_id in app_ids {
        known
            .positions
            .insert(app_id.clone(), found.get(app_id).copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn update(app_id: &str, last: i64) -> PositionUpdate {
        PositionUpdate {
            app_id: app_id.into(),
            prev: None,
            last,
        }
    }

    #[test]
    fn positions_are_known_at_one_version_and_carried_only_onto_the_next() {
        let key = "memory:///memo-test table-id";
        remember(key, 3, &ids(&["a", "b"]), &HashMap::from([("a".into(), 5)]));
        let at_3 = lookup(key, 3, &ids(&["a", "b"])).expect("known at 3");
        assert_eq!(at_3, HashMap::from([("a".to_string(), 5)]), "b has none");
        assert!(lookup(key, 3, &ids(&["c"])).is_none(), "c was never read");
        assert!(lookup(key, 4, &ids(&["a"])).is_none(), "another version");

        // A read of an older version does not replace the newer one.
        remember(key, 2, &ids(&["a"]), &HashMap::from([("a".into(), 1)]));
        assert_eq!(lookup(key, 3, &ids(&["a"])).unwrap()["a"], 5);

        carry(key, 3, 4, &[update("b", 7)]);
        assert!(lookup(key, 3, &ids(&["a"])).is_none());
        let at_4 = lookup(key, 4, &ids(&["a", "b"])).expect("carried onto 4");
        assert_eq!(at_4, HashMap::from([("a".into(), 5), ("b".into(), 7)]));

        // A commit that landed after another (rebased) carries nothing.
        carry(key, 4, 6, &[update("a", 9)]);
        assert!(lookup(key, 6, &ids(&["a"])).is_none());
        assert!(lookup(key, 4, &ids(&["a"])).is_none());
    }
}
