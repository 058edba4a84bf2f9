//! A schema-registry client (Confluent Schema Registry's REST API): schemas
//! by id, cached for the life of the process (an id never changes its
//! schema), and a subject's versions.
//!
//! Protobuf schemas are asked for with `format=serialized` (a base64
//! `FileDescriptorProto`, as Confluent's own deserializers do); a registry
//! that answers with `.proto` text is read too (see
//! [`super::protobuf_registry`]). Their references (imported files
//! registered under their own subjects) come with them.
//!
//! An unreachable registry is not bad input: [`RegistryError::Unavailable`]
//! tells the caller to wait and retry (consumption pauses), while an id or
//! subject the registry does not know is [`RegistryError::NotFound`], which
//! dead-letters the records that carry it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RegistryConfig;

/// How long one registry request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Registry errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not answer, or answered with a server error.
    #[error("schema registry {url} unavailable: {reason}")]
    Unavailable {
        /// The registry.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry does not know the id or subject.
    #[error("{0}")]
    NotFound(String),
    /// The registry's schema cannot be used (it does not parse, or does
    /// not resolve); its records are dead letters.
    #[error("{0}")]
    Invalid(String),
    /// The registry answered something unusable (bad credentials, a schema
    /// of another type, a body that is not JSON).
    #[error("schema registry {url}: {reason}")]
    Refused {
        /// The registry.
        url: String,
        /// What it said.
        reason: String,
    },
}

/// A registered schema.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its id.
    pub id: u32,
    /// The schema text (Avro: JSON).
    pub schema: Arc<String>,
    /// The subject's version, when looked up by subject.
    pub version: Option<u32>,
    /// `AVRO` (the registry's default), `PROTOBUF` or `JSON`.
    pub kind: String,
}

/// A schema as the registry holds it, of any type.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub kind: String,
    /// The schema text (Protobuf: base64 `FileDescriptorProto` or `.proto` text).
    pub schema: String,
    /// The schemas it imports.
    pub references: Vec<Reference>,
    /// Its id, when the answer names it.
    pub id: Option<u32>,
    /// The subject's version, when looked up by subject.
    pub version: Option<u32>,
}

/// An imported schema, registered under its own subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The import path (`rides/common.proto`).
    pub name: String,
    /// Its subject.
    pub subject: String,
    /// The subject's version.
    pub version: u32,
}

/// A client for one registry.
#[derive(Clone)]
pub struct Registry {
    base: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
    by_id: Arc<Mutex<HashMap<u32, Arc<String>>>>,
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    /// Subject and version labels by schema id; `None` where the registry
    /// could not say (asked once per id).
    labels: Arc<Mutex<HashMap<u32, Option<String>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.base)
    }
}

impl Registry {
    /// A client for `config` (no request is made yet).
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| RegistryError::Refused {
                url: config.url.clone(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            base: config.url.trim_end_matches('/').to_string(),
            auth: config.username.clone().zip(config.password.clone()),
            client,
            by_id: Arc::default(),
            entries: Arc::default(),
            labels: Arc::default(),
        })
    }

    /// Where schema `id` is registered, as `subject vN` (every subject and
    /// version that holds it, joined by ", "; `GET /schemas/ids/{id}/versions`),
    /// asked once per id and cached. `None` when the registry cannot say
    /// (also when it is unavailable then): the label only describes, so
    /// nothing waits for it.
    pub async fn label(&self, id: u32) -> Option<String> {
        if let Some(known) = self.labels.lock().expect("registry cache lock").get(&id) {
            return known.clone();
        }
        let label = match self.get(&format!("schemas/ids/{id}/versions")).await {
            Ok(body) => Some(
                body.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| {
                        Some(format!(
                            "{} v{}",
                            v["subject"].as_str()?,
                            v["version"].as_u64()?
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .filter(|label| !label.is_empty()),
            Err(error) => {
                tracing::debug!(registry = %self.base, schema_id = id, %error, "no subject and version for a schema id");
                None
            }
        };
        self.labels
            .lock()
            .expect("registry cache lock")
            .insert(id, label.clone());
        label
    }

    /// The label of schema `id` if it is known.
    pub fn cached_label(&self, id: u32) -> Option<String> {
        self.labels
            .lock()
            .expect("registry cache lock")
            .get(&id)
            .cloned()
            .flatten()
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with `id`, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<String>, RegistryError> {
        if let Some(found) = self.cached(id) {
            return Ok(found);
        }
        let body = self.get(&format!("schemas/ids/{id}")).await?;
        let (kind, schema) = typed_text(&body, &self.base)?;
        if kind != "AVRO" {
            return Err(RegistryError::Refused {
                url: self.base.clone(),
                reason: format!("schema id {id} is {kind}, not AVRO"),
            });
        }
        self.remember(id, &schema);
        Ok(schema)
    }

    /// The schema with `id` if it is cached.
    pub fn cached(&self, id: u32) -> Option<Arc<String>> {
        self.by_id
            .lock()
            .expect("registry cache lock")
            .get(&id)
            .cloned()
    }

    /// Caches Avro schema `id`'s text.
    fn remember(&self, id: u32, schema: &Arc<String>) {
        self.by_id
            .lock()
            .expect("registry cache lock")
            .insert(id, schema.clone());
    }

    /// The latest version of `subject`, of any schema type (see
    /// [`Registered::kind`]).
    pub async fn latest(&self, subject: &str) -> Result<Registered, RegistryError> {
        let path = format!("subjects/{}/versions/latest", encode(subject));
        let body = self.get(&path).await.map_err(|e| match e {
            RegistryError::NotFound(_) => {
                RegistryError::NotFound(format!("subject `{subject}` is not in the registry"))
            }
            other => other,
        })?;
        let id = body["id"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| RegistryError::Refused {
                url: self.base.clone(),
                reason: format!("subject `{subject}`: no schema id in the answer"),
            })?;
        let (kind, schema) = typed_text(&body, &self.base)?;
        if kind == "AVRO" {
            self.remember(id, &schema);
        }
        if let Some(version) = body["version"].as_u64() {
            self.labels
                .lock()
                .expect("registry cache lock")
                .entry(id)
                .or_insert_with(|| Some(format!("{subject} v{version}")));
        }
        Ok(Registered {
            id,
            schema,
            version: body["version"].as_u64().map(|v| v as u32),
            kind,
        })
    }

    /// The Protobuf schema with `id` (serialized form asked for), cached.
    pub async fn protobuf_by_id(&self, id: u32) -> Result<Arc<Entry>, RegistryError> {
        self.protobuf_entry(format!("schemas/ids/{id}?format=serialized"))
            .await
            .map(|entry| {
                Arc::new(Entry {
                    id: Some(id),
                    ..(*entry).clone()
                })
            })
    }

    /// Version `version` (a number or `latest`) of a Protobuf `subject`;
    /// numbered versions are cached.
    pub async fn protobuf_version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<Arc<Entry>, RegistryError> {
        let path = format!(
            "subjects/{}/versions/{version}?format=serialized",
            encode(subject)
        );
        self.protobuf_entry(path).await.map_err(|e| match e {
            RegistryError::NotFound(_) => RegistryError::NotFound(format!(
                "subject `{subject}` version {version} is not in the registry"
            )),
            other => other,
        })
    }

    /// The whole answer at `path`, which must be a Protobuf schema.
    async fn protobuf_entry(&self, path: String) -> Result<Arc<Entry>, RegistryError> {
        let cacheable = !path.contains("/latest");
        if let Some(found) = self.entries.lock().expect("registry cache lock").get(&path) {
            return Ok(found.clone());
        }
        let body = self.get(&path).await?;
        let entry = entry_of(&body, &self.base)?;
        if entry.kind != "PROTOBUF" {
            return Err(RegistryError::Refused {
                url: self.base.clone(),
                reason: format!("{path}: the schema is {}, not PROTOBUF", entry.kind),
            });
        }
        let entry = Arc::new(entry);
        if cacheable {
            self.entries
                .lock()
                .expect("registry cache lock")
                .insert(path, entry.clone());
        }
        Ok(entry)
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}/{path}", self.base);
        let mut request = self
            .client
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let unavailable = |reason: String| RegistryError::Unavailable {
            url: self.base.clone(),
            reason,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if status.is_success() {
            return Ok(body);
        }
        let message = body["message"].as_str().unwrap_or(&text).to_string();
        match status.as_u16() {
            404 => Err(RegistryError::NotFound(format!(
                "{path}: {message} (registry {})",
                self.base
            ))),
            408 | 429 | 500..=599 => Err(unavailable(format!("HTTP {status}: {message}"))),
            _ => Err(RegistryError::Refused {
                url: self.base.clone(),
                reason: format!("HTTP {status} for {path}: {message}"),
            }),
        }
    }
}

/// The schema type (`AVRO` when the answer names none) and text of a
/// registry answer.
fn typed_text(body: &serde_json::Value, url: &str) -> Result<(String, Arc<String>), RegistryError> {
    let kind = body["schemaType"].as_str().unwrap_or("AVRO").to_string();
    Ok((kind, Arc::new(entry_of(body, url)?.schema)))
}

/// A registry answer as an [`Entry`].
fn entry_of(body: &serde_json::Value, url: &str) -> Result<Entry, RegistryError> {
    let schema = body["schema"]
        .as_str()
        .ok_or_else(|| RegistryError::Refused {
            url: url.to_string(),
            reason: "the answer holds no `schema`".into(),
        })?
        .to_string();
    let references = body["references"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .map(|r| {
                    Some(Reference {
                        name: r["name"].as_str()?.to_string(),
                        subject: r["subject"].as_str()?.to_string(),
                        version: u32::try_from(r["version"].as_u64()?).ok()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| RegistryError::Refused {
                    url: url.to_string(),
                    reason: "a reference without name, subject or version".into(),
                })
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Entry {
        kind: body["schemaType"].as_str().unwrap_or("AVRO").to_string(),
        schema,
        references,
        id: body["id"].as_u64().and_then(|v| u32::try_from(v).ok()),
        version: body["version"].as_u64().and_then(|v| u32::try_from(v).ok()),
    })
}

/// Percent-encodes a path segment (subjects may hold `/`, `:`, spaces).
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_encoded_as_one_path_segment() {
        assert_eq!(encode("rides-value"), "rides-value");
        assert_eq!(encode("a/b c:d"), "a%2Fb%20c%3Ad");
    }

    #[test]
    fn an_answer_without_a_schema_type_is_avro() {
        let avro = serde_json::json!({"schema": "\"string\""});
        let (kind, text) = typed_text(&avro, "u").unwrap();
        assert_eq!((kind.as_str(), text.as_str()), ("AVRO", "\"string\""));
        let proto = serde_json::json!({"schema": "syntax", "schemaType": "PROTOBUF"});
        assert_eq!(typed_text(&proto, "u").unwrap().0, "PROTOBUF");
        assert!(typed_text(&serde_json::json!({}), "u").is_err());
    }
}
