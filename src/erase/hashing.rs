//! Keyed hashing of erased keys, so the ledger is not itself a list of the
//! people who asked to be forgotten.
//!
//! With `[erasure] key_hash_secret = "${...}"`, a request records
//! `hmac-sha256:<hex>` (HMAC-SHA-256 under the secret of the key column,
//! a NUL byte and the value as text) in the ledger instead of the value.
//! The value itself is needed only until the request is verified: to find
//! the rows (statistics, bloom filters and reads need it in clear), to purge
//! and to verify. It is kept meanwhile in one small object per request,
//! `_sluice_keys/<request id>` beside the ledger's files, written before the
//! request is recorded and deleted once the request is verified (any left
//! over is deleted by the next erasure run). From then on only the hash is
//! kept, and ingestion suppresses late records by hashing their key values
//! and comparing hashes (dead letters: the values that follow the key
//! column's name in the raw payload).
//!
//! Requests filed without a secret keep their clear values and keep
//! working; a secret applies to requests filed after it is set. Losing the
//! secret turns suppression of hashed keys off (records of those keys would
//! be ingested again): keep it with the lake's other credentials.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};

use super::EraseError;

/// What a hashed key value starts with in the ledger.
pub const MARKER: &str = "hmac-sha256:";

/// The directory (under the ledger's root) of the clear keys of requests
/// not verified yet.
pub const VAULT_DIR: &str = "_sluice_keys";

/// Shortest secret accepted (bytes).
pub const MIN_SECRET_LEN: usize = 16;

/// A key hash.
pub type KeyHash = [u8; 32];

/// HMAC-SHA-256 under the lake's secret.
#[derive(Clone)]
pub struct KeyHasher {
    mac: hmac::Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    /// A hasher keyed by `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            mac: hmac::Hmac::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length"),
        }
    }

    /// The hash of `value` (as text) of key column `column`.
    pub fn hash(&self, column: &str, value: &str) -> KeyHash {
        let mut mac = self.mac.clone();
        mac.update(column.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The ledger's text for `value` of `column`: [`MARKER`] and the hex hash.
    pub fn marker(&self, column: &str, value: &str) -> String {
        format!("{MARKER}{}", hex::encode(self.hash(column, value)))
    }
}

/// The hash a ledger value holds, if it is a hashed one.
pub fn parse_marker(text: &str) -> Option<KeyHash> {
    let hex_text = text.strip_prefix(MARKER)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// The values a raw record gives field `column`: for each `"column":` in
/// the text, the string (decoded) or whole number after it; for a nested
/// key (`customer.id`) its last part (`"id":`, wherever it is, erring on
/// the side of erasing). Malformed text yields what can be read of it.
pub fn values_after(text: &str, column: &str) -> HashSet<String> {
    let leaf = column.rsplit('.').next().unwrap_or(column);
    let name = format!("\"{leaf}\"");
    let mut values = HashSet::new();
    for (at, _) in text.match_indices(&name) {
        let rest = text[at + name.len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(token) = payload_tokens(rest) {
            values.insert(token);
        }
    }
    values
}

/// The first JSON token of `text` a key could be: a string (decoded) or
/// a whole number.
fn payload_tokens(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    match bytes.first()? {
        b'"' => {
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(bytes.len());
            serde_json::from_str::<String>(&text[..end]).ok()
        }
        b'0'..=b'9' | b'-' => {
            let mut i = 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let fractional = bytes
                .get(i)
                .is_some_and(|b| matches!(b, b'.' | b'e' | b'E'));
            (!fractional && text[..i].parse::<i64>().is_ok()).then(|| text[..i].to_string())
        }
        _ => None,
    }
}

/// The clear keys of requests not verified yet (see the module docs).
#[derive(Clone)]
pub struct KeyVault {
    store: Arc<dyn ObjectStore>,
}

impl KeyVault {
    /// The vault in the ledger's `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    fn path(id: &str) -> Path {
        Path::from(format!("{VAULT_DIR}/{id}"))
    }

    /// Keeps the clear `value` of request `id`.
    pub async fn put(&self, id: &str, value: &str) -> Result<(), EraseError> {
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        self.store
            .put_opts(
                &Self::path(id),
                Bytes::from(value.to_string()).into(),
                options,
            )
            .await?;
        Ok(())
    }

    /// The clear value of request `id`, if still kept.
    pub async fn get(&self, id: &str) -> Result<Option<String>, EraseError> {
        match self.store.get(&Self::path(id)).await {
            Ok(found) => Ok(Some(
                String::from_utf8_lossy(&found.bytes().await?).into_owned(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets the clear value of request `id`.
    pub async fn delete(&self, id: &str) -> Result<(), EraseError> {
        match self.store.delete(&Self::path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ids of the requests whose clear value is kept, with when it was written.
    pub async fn ids(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, EraseError> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from(VAULT_DIR)))
            .try_collect()
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.last_modified)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_by_secret_and_column() {
        let a = KeyHasher::new("a-secret-of-16-bytes");
        let b = KeyHasher::new("another-secret-of-16");
        assert_eq!(a.hash("user_id", "u-1"), a.hash("user_id", "u-1"));
        assert_ne!(a.hash("user_id", "u-1"), b.hash("user_id", "u-1"));
        assert_ne!(a.hash("user_id", "u-1"), a.hash("account", "u-1"));
        let marker = a.marker("user_id", "u-1");
        assert!(marker.starts_with(MARKER) && !marker.contains("u-1"));
        assert_eq!(parse_marker(&marker), Some(a.hash("user_id", "u-1")));
        assert_eq!(parse_marker("u-1"), None);
    }

    #[test]
    fn values_are_read_after_the_field_name() {
        let text = r#"{"user_id": "u-\"7", "qty":7, "n":4.5, "user_id":-3, "bad":"#;
        let values = values_after(text, "user_id");
        assert!(
            values.contains("u-\"7") && values.contains("-3"),
            "{values:?}"
        );
        assert_eq!(values.len(), 2, "{values:?}");
        assert!(values_after(text, "qty").contains("7"));
        assert!(values_after(text, "n").is_empty(), "not a whole number");
        assert!(
            values_after(r#"{"user_id":"u-1"#, "user_id").is_empty(),
            "unterminated"
        );
    }
}
