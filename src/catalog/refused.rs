//! Topics a pattern source refused, noted beside the tables
//! (`<root>/_sluice_topics/<source>/<topic>.json`) so `sluice catalog`
//! shows them with the reason, whichever worker refused them. A topic
//! that later gets its table (a template added, a schema registered) has
//! its note removed.

use std::collections::BTreeMap;

use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use crate::table::{self, TableError};

/// Where the notes live under the lake root.
pub const DIR: &str = "_sluice_topics";

/// A refused topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedTopic {
    /// The pattern source.
    pub source: String,
    /// The topic.
    pub topic: String,
    /// Why it has no table.
    pub reason: String,
    /// When it was refused (RFC 3339).
    pub at: String,
}

fn note_path(source: &str, topic: &str) -> StorePath {
    StorePath::from(format!("{DIR}/{source}/{topic}.json"))
}

/// Notes `refused` (overwriting an older note of the topic).
pub async fn record(
    root: &str,
    options: &BTreeMap<String, String>,
    refused: &RefusedTopic,
) -> Result<(), TableError> {
    let store = table::lake_store(root, options)?;
    let body = serde_json::to_vec_pretty(refused).expect("a note serializes");
    store
        .put(
            &note_path(&refused.source, &refused.topic),
            PutPayload::from(body),
        )
        .await
        .map_err(|e| TableError::Delta {
            url: root.to_string(),
            source: Box::new(e.into()),
        })?;
    Ok(())
}

/// Removes the note of `topic`, if any.
pub async fn clear(root: &str, options: &BTreeMap<String, String>, source: &str, topic: &str) {
    if let Ok(store) = table::lake_store(root, options) {
        let _ = store.delete(&note_path(source, topic)).await;
    }
}

/// Every note under the lake root, by source and topic.
pub async fn list(root: &str, options: &BTreeMap<String, String>) -> Vec<RefusedTopic> {
    use futures::TryStreamExt;
    let Ok(store) = table::lake_store(root, options) else {
        return Vec::new();
    };
    let prefix = StorePath::from(DIR);
    let Ok(objects) = store.list(Some(&prefix)).try_collect::<Vec<_>>().await else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for object in objects {
        if let Ok(bytes) = store.get(&object.location).await {
            if let Ok(bytes) = bytes.bytes().await {
                if let Ok(note) = serde_json::from_slice::<RefusedTopic>(&bytes) {
                    found.push(note);
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.source, &a.topic).cmp(&(&b.source, &b.topic)));
    found
}
