//! Protobuf through a schema registry: the wire format's header and the
//! descriptors a schema id stands for.
//!
//! A record is magic byte 0, the schema id (4 bytes, big-endian), the
//! message-index list, then the message. The list locates the message in
//! the schema's file: a zigzag varint count, then one zigzag varint per
//! level (top-level message, nested message, ...); a lone `0` byte stands
//! for `[0]`, the file's first message.
//!
//! A schema is one `.proto` file. Its imports are registered under their
//! own subjects (`references`), fetched and added first; Google's
//! well-known types (`google/protobuf/*.proto`) are built in, as
//! serializers do not register them.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use base64::Engine;
use prost_reflect::prost::Message;
use prost_reflect::prost_types::FileDescriptorProto;
use prost_reflect::{DescriptorPool, MessageDescriptor};

use super::registry::{Entry, Reference, Registry, RegistryError};

/// The header of a registry-framed Protobuf record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The schema id.
    pub id: u32,
    /// Where the message is in the schema's file.
    pub indexes: Vec<i32>,
    /// Where the message's bytes start.
    pub body: usize,
}

/// Reads the header of `payload`, or says why it is not the wire format.
pub fn header(payload: &[u8]) -> Result<Header, String> {
    if payload.len() < 5 {
        return Err(format!(
            "{} bytes: shorter than the registry wire format's 5-byte header",
            payload.len()
        ));
    }
    if payload[0] != 0 {
        return Err(format!(
            "first byte 0x{:02x} is not the registry wire format's magic byte 0",
            payload[0]
        ));
    }
    let id = u32::from_be_bytes(payload[1..5].try_into().expect("4 bytes"));
    let mut at = 5;
    let bad = |what: &str| format!("schema id {id}: the message-index list {what}");
    let count = zigzag_varint(payload, &mut at).ok_or_else(|| bad("is truncated"))?;
    let indexes = match count {
        0 => vec![0],
        n if !(1..=32).contains(&n) => return Err(bad(&format!("has a count of {n}"))),
        n => (0..n)
            .map(|_| match zigzag_varint(payload, &mut at) {
                Some(i) if (0..=i32::MAX as i64).contains(&i) => Ok(i as i32),
                Some(i) => Err(bad(&format!("holds {i}"))),
                None => Err(bad("is truncated")),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Header {
        id,
        indexes,
        body: at,
    })
}

fn zigzag_varint(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// The message at `indexes` in `file` of `pool`.
pub fn message_at(
    pool: &DescriptorPool,
    file: &str,
    indexes: &[i32],
) -> Result<MessageDescriptor, String> {
    let file_descriptor = pool
        .get_file_by_name(file)
        .ok_or_else(|| format!("file `{file}` is not in the schema"))?;
    let missing = || format!("message indexes {indexes:?} name no message of `{file}`");
    let (first, rest) = indexes.split_first().ok_or_else(missing)?;
    let mut message = file_descriptor
        .messages()
        .nth(*first as usize)
        .ok_or_else(missing)?;
    for index in rest {
        let child = message.child_messages().nth(*index as usize);
        message = child.ok_or_else(missing)?;
    }
    Ok(message)
}

/// The descriptors of a registry schema: its file, its references' files
/// and the well-known types; and the file's name in the pool.
pub async fn pool_of(
    registry: &Registry,
    entry: &Entry,
) -> Result<(DescriptorPool, String), RegistryError> {
    let mut pool = DescriptorPool::global();
    let mut added = HashSet::new();
    add_references(registry, &entry.references, &mut pool, &mut added).await?;
    let hint = match entry.id {
        Some(id) => format!("schema-{id}.proto"),
        None => "schema.proto".to_string(),
    };
    let file = file_proto(&entry.schema, &hint).map_err(|e| invalid(registry, entry, e))?;
    let name = file.name().to_string();
    if pool.get_file_by_name(&name).is_none() {
        pool.add_file_descriptor_proto(file)
            .map_err(|e| invalid(registry, entry, e.to_string()))?;
    }
    Ok((pool, name))
}

fn invalid(registry: &Registry, entry: &Entry, reason: String) -> RegistryError {
    let what = entry
        .id
        .map(|id| format!("schema id {id}"))
        .unwrap_or_else(|| "the schema".into());
    RegistryError::Invalid(format!(
        "{what} (registry {}) is not a usable Protobuf schema: {reason}",
        registry.url()
    ))
}

/// Adds the files `references` name (their own references first).
fn add_references<'a>(
    registry: &'a Registry,
    references: &'a [Reference],
    pool: &'a mut DescriptorPool,
    added: &'a mut HashSet<String>,
) -> Pin<Box<dyn Future<Output = Result<(), RegistryError>> + Send + 'a>> {
    Box::pin(async move {
        for reference in references {
            if !added.insert(reference.name.clone())
                || pool.get_file_by_name(&reference.name).is_some()
            {
                continue;
            }
            let entry = registry
                .protobuf_version(&reference.subject, &reference.version.to_string())
                .await?;
            add_references(registry, &entry.references, pool, added).await?;
            let mut file = file_proto(&entry.schema, &reference.name)
                .map_err(|e| invalid(registry, &entry, e))?;
            file.name = Some(reference.name.clone());
            pool.add_file_descriptor_proto(file)
                .map_err(|e| invalid(registry, &entry, e.to_string()))?;
        }
        Ok(())
    })
}

/// A schema's file: a base64 `FileDescriptorProto` (the serialized form),
/// or `.proto` text.
pub fn file_proto(schema: &str, name: &str) -> Result<FileDescriptorProto, String> {
    let trimmed = schema.trim();
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(trimmed) {
        if let Ok(mut file) = FileDescriptorProto::decode(bytes.as_slice()) {
            if file.name.as_deref().is_none_or(str::is_empty) {
                file.name = Some(name.to_string());
            }
            return Ok(file);
        }
    }
    protox_parse::parse(name, schema).map_err(|e| format!("not a .proto file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_as_the_wire_format_defines() {
        // [0] is a single 0 byte.
        let h = header(&[0, 0, 0, 0, 7, 0, 0xaa]).unwrap();
        assert_eq!((h.id, h.indexes, h.body), (7, vec![0], 6));
        // [2, 1]: count 2 (zigzag 4), 2 (4), 1 (2).
        let h = header(&[0, 0, 0, 1, 0, 4, 4, 2, 0xaa]).unwrap();
        assert_eq!((h.id, h.indexes, h.body), (256, vec![2, 1], 8));
        assert!(header(&[1, 0, 0, 0, 7, 0]).unwrap_err().contains("magic"));
        assert!(header(&[0, 0, 0, 0, 7]).unwrap_err().contains("truncated"));
        assert!(header(&[0, 0, 0, 0, 7, 4, 4])
            .unwrap_err()
            .contains("truncated"));
        assert!(header(&[0, 0, 0, 0, 7, 3]).unwrap_err().contains("count"));
    }

    #[test]
    fn text_schemas_are_parsed_and_resolved_against_the_well_known_types() {
        let text = r#"syntax = "proto3";
            package p;
            import "google/protobuf/timestamp.proto";
            message A { string id = 1; google.protobuf.Timestamp at = 2; message B { int64 n = 1; } B b = 3; }"#;
        let mut pool = DescriptorPool::global();
        pool.add_file_descriptor_proto(file_proto(text, "a.proto").unwrap())
            .unwrap();
        let a = message_at(&pool, "a.proto", &[0]).unwrap();
        assert_eq!(a.full_name(), "p.A");
        assert_eq!(
            message_at(&pool, "a.proto", &[0, 0]).unwrap().full_name(),
            "p.A.B"
        );
        assert!(message_at(&pool, "a.proto", &[1]).is_err());
        let serialized = base64::engine::general_purpose::STANDARD
            .encode(a.parent_file_descriptor_proto().encode_to_vec());
        assert_eq!(file_proto(&serialized, "x").unwrap().name(), "a.proto");
        assert!(file_proto("message {", "bad.proto")
            .unwrap_err()
            .contains("not a .proto"));
    }
}
