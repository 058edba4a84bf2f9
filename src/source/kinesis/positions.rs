//! Immutable sidecars that translate a shard's ordinals into Kinesis
//! sequence numbers, under the data table's root:
//!
//! ```text
//! _sluice_positions/<app id, `/` as `~`>/00000000000000000000   seq of ordinal 0 (the anchor)
//! _sluice_positions/<app id, `/` as `~`>/00000000000000004711   seq of ordinal 4711
//! _sluice_positions/<app id, `/` as `~`>/end                   last ordinal of a closed shard
//! ```
//!
//! (Object paths store `~` percent-encoded, as `%7E`.)
//!
//! Every object is created with a conditional put (`PutMode::Create`) and
//! never changes. Writing one that exists is fine when the content is the
//! same (a replay reading the same immutable shard) and a [`PositionError::Conflict`]
//! otherwise, which the writer must treat as "do not commit".
//! Directories starting with `_` are invisible to Delta readers and to
//! Delta's vacuum; sluice's vacuum deletes the sidecars of ordinals below a
//! shard's recorded position, which no reader needs again (a reader resumes
//! after the recorded ordinal, and re-seeks only ever go to it).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// The directory of all sidecars, under the table root.
pub const POSITIONS_DIR: &str = "_sluice_positions";

/// Errors reading or writing sidecars.
#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    /// The object store failed.
    #[error("position sidecar {path}: {source}")]
    Store {
        /// The sidecar.
        path: String,
        /// The store error.
        source: object_store::Error,
    },
    /// A sidecar already names a different sequence number for this ordinal.
    #[error("position sidecar {path} holds `{existing}`, not `{wanted}`: the shard's records changed under it (trimmed by retention?)")]
    Conflict {
        /// The sidecar.
        path: String,
        /// What it holds.
        existing: String,
        /// What was to be written.
        wanted: String,
    },
}

/// The sidecars of one shard.
#[derive(Clone)]
pub struct ShardPositions {
    store: Arc<dyn ObjectStore>,
    dir: String,
}

impl ShardPositions {
    /// The sidecars of the shard recorded as `app_id` in the table at `store`'s root.
    pub fn new(store: Arc<dyn ObjectStore>, app_id: &str) -> Self {
        Self {
            store,
            dir: format!("{POSITIONS_DIR}/{}", app_id.replace('/', "~")),
        }
    }

    fn ordinal_path(&self, ordinal: i64) -> Path {
        Path::from(format!("{}/{ordinal:020}", self.dir))
    }

    fn end_path(&self) -> Path {
        Path::from(format!("{}/end", self.dir))
    }

    async fn read(&self, path: &Path) -> Result<Option<String>, PositionError> {
        let error = |source| PositionError::Store {
            path: path.to_string(),
            source,
        };
        match self.store.get(path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(error)?;
                Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    async fn create(&self, path: &Path, content: &str) -> Result<(), PositionError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let body = Bytes::from(content.to_string());
        match self.store.put_opts(path, body.into(), options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.read(path).await?.unwrap_or_default();
                if existing == content {
                    Ok(())
                } else {
                    Err(PositionError::Conflict {
                        path: path.to_string(),
                        existing,
                        wanted: content.to_string(),
                    })
                }
            }
            Err(source) => Err(PositionError::Store {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// The sequence number of `ordinal`, if recorded.
    pub async fn sequence(&self, ordinal: i64) -> Result<Option<String>, PositionError> {
        self.read(&self.ordinal_path(ordinal)).await
    }

    /// Records that `ordinal` is the record with sequence number `sequence`.
    pub async fn record(&self, ordinal: i64, sequence: &str) -> Result<(), PositionError> {
        self.create(&self.ordinal_path(ordinal), sequence).await
    }

    /// Deletes the sidecars of ordinals from `first` on: written for records
    /// that a renumbering (after a retention gap) gives other ordinals, by
    /// a worker that died between a sidecar and its commit.
    pub async fn forget_from(&self, first: i64) -> Result<usize, PositionError> {
        use futures::TryStreamExt;
        let dir = Path::from(self.dir.as_str());
        let error = |source| PositionError::Store {
            path: dir.to_string(),
            source,
        };
        let objects: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(error)?;
        let mut deleted = 0;
        for meta in objects {
            let ordinal = meta
                .location
                .filename()
                .and_then(|name| name.parse::<i64>().ok());
            if ordinal.is_some_and(|o| o >= first) {
                self.store.delete(&meta.location).await.map_err(error)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The last ordinal of the closed shard (-1: it had none), once read to its end.
    pub async fn end(&self) -> Result<Option<i64>, PositionError> {
        Ok(self
            .read(&self.end_path())
            .await?
            .and_then(|s| s.parse().ok()))
    }

    /// Records that the shard is closed and `last` is its last ordinal.
    pub async fn record_end(&self, last: i64) -> Result<(), PositionError> {
        self.create(&self.end_path(), &last.to_string()).await
    }
}

/// The ordinal sidecars under a table root, as (app id, ordinal, path).
pub async fn list_ordinals(
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<(String, i64, Path)>, object_store::Error> {
    use futures::TryStreamExt;
    let objects: Vec<_> = store
        .list(Some(&Path::from(POSITIONS_DIR)))
        .try_collect()
        .await?;
    Ok(objects
        .into_iter()
        .filter_map(|meta| {
            let parts: Vec<_> = meta.location.parts().collect();
            let [_, dir, name] = parts.as_slice() else {
                return None;
            };
            let ordinal = name.as_ref().parse::<i64>().ok()?;
            // `~` is stored percent-encoded in object paths.
            let app_id = dir.as_ref().replace("%7E", "/").replace('~', "/");
            Some((app_id, ordinal, meta.location))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sidecars_are_immutable_and_replays_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let positions = ShardPositions::new(store, "sluice/k/orders/shardId-000000000001");
        assert_eq!(positions.sequence(0).await.unwrap(), None);
        positions.record(0, "4960").await.unwrap();
        positions.record(0, "4960").await.unwrap();
        assert!(matches!(
            positions.record(0, "4961").await,
            Err(PositionError::Conflict { .. })
        ));
        assert_eq!(
            positions.sequence(0).await.unwrap().as_deref(),
            Some("4960")
        );
        assert_eq!(positions.end().await.unwrap(), None);
        positions.record_end(41).await.unwrap();
        positions.record_end(41).await.unwrap();
        assert!(positions.record_end(40).await.is_err());
        assert_eq!(positions.end().await.unwrap(), Some(41));
        let shards: Vec<_> = std::fs::read_dir(dir.path().join(POSITIONS_DIR))
            .unwrap()
            .collect();
        assert_eq!(
            shards.len(),
            1,
            "one directory per shard under {POSITIONS_DIR}"
        );
    }
}
