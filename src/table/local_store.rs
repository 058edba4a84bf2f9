//! Local-disk object store whose offset listing touches only what it returns.
//!
//! delta-rs lists `_delta_log` from the snapshot's version on every load,
//! update and commit. object_store's `LocalFileSystem` answers such a listing
//! by walking the whole directory and stat-ing every entry (it follows
//! links), so on local disk each load and commit cost grew with the number of
//! log files kept: every commit within `delta.logRetentionDuration`, 30 days
//! by default. (S3 and the other object stores list from the offset on the
//! server.) [`LocalStore`] reads a plain directory's names, skips those at or
//! before the offset by name alone, and stats only the rest; every other call,
//! and any listing it cannot answer that way (names that `LocalFileSystem`
//! would percent-encode, symbolic links, unreadable entries), goes to
//! `LocalFileSystem` unchanged. (Unix only; the store registered for
//! `file://` keeps delta-rs's default elsewhere, and the IO runtime option
//! of delta-rs's factory does not apply to it.)

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::DeltaTableError;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use url::Url;

/// `LocalFileSystem` rooted at `/`, with a cheap offset listing.
#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<LocalFileSystem>,
}

impl LocalStore {
    /// A store for absolute local paths (as `file://` URLs name them).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore({})", self.inner)
    }
}

/// Whether `LocalFileSystem` stores `text` on disk as is (no percent-encoding,
/// no multipart staging suffix).
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// What a name-first listing of one directory found.
struct Listed {
    files: Vec<ObjectMeta>,
    /// Subdirectories that may hold objects after the offset.
    subdirs: Vec<Path>,
}

/// Lists the files of `prefix` after `offset`, stat-ing only those; `None`
/// when an entry needs `LocalFileSystem`'s own handling.
fn list_after(prefix: &Path, offset: &Path) -> std::io::Result<Option<Listed>> {
    let dir = PathBuf::from(format!("/{prefix}"));
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(Listed {
                files: Vec::new(),
                subdirs: Vec::new(),
            }))
        }
        // Not a directory, no permission, ...: LocalFileSystem's answer.
        Err(_) => return Ok(None),
    };
    let mut listed = Listed {
        files: Vec::new(),
        subdirs: Vec::new(),
    };
    // Names are compared with the offset's remainder below `prefix`; a Path
    // is built only for what is returned.
    let base = format!("{prefix}/");
    let rest = offset.as_ref().strip_prefix(base.as_str());
    let after = |name: &str| match rest {
        Some(rest) => name > rest,
        None => format!("{base}{name}").as_str() > offset.as_ref(),
    };
    let holds_offset = |name: &str| match rest {
        Some(rest) => rest.starts_with(name),
        None => offset
            .as_ref()
            .starts_with(format!("{base}{name}").as_str()),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(_) => return Ok(None),
        };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            return Ok(None);
        };
        if !plain(name) {
            return Ok(None);
        }
        // From the directory entry where the file system records it (no stat).
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            // Deleted since the directory was read (log cleanup): not listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return Ok(None),
        };
        if file_type.is_symlink() {
            return Ok(None);
        }
        if file_type.is_dir() {
            // Objects below it sort after the offset if it does, or if it is
            // a prefix of the offset.
            if after(name) || holds_offset(name) {
                listed.subdirs.push(prefix.clone().join(name));
            }
            continue;
        }
        // Only regular files are objects (as for LocalFileSystem).
        if !file_type.is_file() || !after(name) {
            continue;
        }
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Deleted since the directory was read (log cleanup): not listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        listed
            .files
            .push(object_meta(prefix.clone().join(name), &metadata));
    }
    Ok(Some(listed))
}

/// The metadata `LocalFileSystem` reports for a file (same e-tag scheme).
fn object_meta(location: Path, metadata: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt as _;
    let modified = metadata
        .modified()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let mtime = modified
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    ObjectMeta {
        location,
        last_modified: chrono::DateTime::<chrono::Utc>::from(modified),
        size: metadata.len(),
        e_tag: Some(format!(
            "{:x}-{:x}-{:x}",
            metadata.ino(),
            mtime,
            metadata.len()
        )),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(prefix) = prefix.filter(|p| plain(p.as_ref()) && !p.as_ref().is_empty()) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let (inner, prefix, offset) = (self.inner.clone(), prefix.clone(), offset.clone());
        futures::stream::once(async move {
            let (dir, after) = (prefix.clone(), offset.clone());
            let listed = tokio::task::spawn_blocking(move || list_after(&dir, &after))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalStore",
                    source: Box::new(e),
                })?
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalStore",
                    source: Box::new(e),
                })?;
            let stream: BoxStream<'static, Result<ObjectMeta>> = match listed {
                None => inner.list_with_offset(Some(&prefix), &offset),
                Some(Listed { files, subdirs }) => {
                    let below = futures::stream::iter(subdirs)
                        .flat_map(move |dir| inner.list_with_offset(Some(&dir), &offset));
                    futures::stream::iter(files.into_iter().map(Ok))
                        .chain(below)
                        .boxed()
                }
            };
            Ok::<_, object_store::Error>(stream)
        })
        .flat_map(|result| match result {
            Ok(stream) => stream,
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Builds [`LocalStore`]s for `file://` table URLs (registered in place of
/// delta-rs's default local store).
#[derive(Debug, Default)]
pub struct LocalStoreFactory;

impl ObjectStoreFactory for LocalStoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> Result<(ObjectStoreRef, Path), DeltaTableError> {
        // Like object_store's own parsing: a host other than localhost is
        // not a local path.
        if url
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
        {
            return Err(DeltaTableError::InvalidTableLocation(url.to_string()));
        }
        let path = Path::from_url_path(url.path())
            .map_err(|_| DeltaTableError::InvalidTableLocation(url.to_string()))?;
        Ok((Arc::new(LocalStore::new()), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;

    async fn listed(store: &dyn ObjectStore, prefix: &Path, offset: &Path) -> Vec<String> {
        let mut names: Vec<String> = store
            .list_with_offset(Some(prefix), offset)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        names.sort();
        names
    }

    #[tokio::test]
    async fn lists_after_the_offset_like_the_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::from_absolute_path(dir.path()).unwrap();
        let log = root.clone().join("_delta_log");
        let store = LocalStore::new();
        for name in [
            "00000000000000000000.json",
            "00000000000000000001.json",
            "00000000000000000002.json",
            "00000000000000000002.checkpoint.parquet",
            "_last_checkpoint",
            "_staged/00000000000000000000.uuid.json",
            ".00000000000000000002.json.crc",
        ] {
            store
                .put(&Path::from(format!("{log}/{name}")), "x".into())
                .await
                .unwrap();
        }
        let reference = LocalFileSystem::new();
        for offset in [
            "00000000000000000000.json",
            "00000000000000000001.zzz",
            "00000000000000000002.json",
            "_",
            "-",
        ] {
            let offset = log.clone().join(offset);
            let ours = listed(&store, &log, &offset).await;
            assert_eq!(ours, listed(&reference, &log, &offset).await, "{offset}");
        }
        let after_one = listed(&store, &log, &log.clone().join("00000000000000000001.zzz")).await;
        let names: Vec<&str> = after_one
            .iter()
            .map(|n| n.rsplit("_delta_log/").next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "00000000000000000002.checkpoint.parquet",
                "00000000000000000002.json",
                "_last_checkpoint",
                "_staged/00000000000000000000.uuid.json"
            ]
        );
        // A name LocalFileSystem encodes takes its own path, with the same answer.
        store
            .put(&log.clone().join("odd name#1.json"), "x".into())
            .await
            .unwrap();
        let offset = log.clone().join("00000000000000000001.json");
        assert_eq!(
            listed(&store, &log, &offset).await,
            listed(&reference, &log, &offset).await
        );
        // A missing directory lists nothing.
        let missing = root.clone().join("missing");
        assert!(listed(&store, &missing, &missing.clone().join("0"))
            .await
            .is_empty());
        let first = store
            .head(&log.clone().join("_last_checkpoint"))
            .await
            .unwrap();
        let listed_meta: Vec<ObjectMeta> = store
            .list_with_offset(Some(&log), &log.clone().join("_a"))
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(
            listed_meta
                .iter()
                .find(|m| m.location == first.location)
                .unwrap()
                .e_tag,
            first.e_tag,
            "same e-tag as a head request"
        );
    }
}
