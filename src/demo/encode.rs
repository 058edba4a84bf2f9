//! The demo's events in the binary formats: the same ride events as Avro
//! bodies (written with `fixtures/bench/ride.avsc`) or Protobuf messages
//! (`demo.v1.Ride` of `fixtures/proto/demo/ride.proto`), so `sluice demo
//! --format avro|protobuf` shows a table typed from a schema. The schema
//! files are written next to the lake for the config to name.

use std::path::Path;

use prost_reflect::prost::Message;
use prost_reflect::prost_types::FileDescriptorSet;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde_json::Value;

/// The Avro schema of the demo events.
pub const AVRO_SCHEMA: &str = include_str!("../../fixtures/bench/ride.avsc");
/// The `.proto` file of the demo events.
pub const PROTO_FILE: &str = include_str!("../../fixtures/proto/demo/ride.proto");

/// The demo's record encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoFormat {
    /// JSON documents; the table declares its columns.
    Json,
    /// Plain Avro bodies with a schema file; the table is typed from it.
    Avro,
    /// Protobuf messages with a descriptor set; the table is typed from it.
    Protobuf,
}

/// Encodes demo events in one format.
pub enum Encoder {
    /// JSON as generated.
    Json,
    /// Avro bodies of this schema.
    Avro(Value),
    /// Protobuf messages of this type.
    Protobuf(MessageDescriptor),
}

impl Encoder {
    /// The encoder of `format`, writing its schema file into `dir`; the
    /// source keys that name it.
    pub fn new(format: DemoFormat, dir: &Path) -> Result<(Self, String), String> {
        match format {
            DemoFormat::Json => Ok((Encoder::Json, String::new())),
            DemoFormat::Avro => {
                let path = dir.join("demo-ride.avsc");
                std::fs::write(&path, AVRO_SCHEMA)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let schema = serde_json::from_str(AVRO_SCHEMA).expect("the shipped schema is JSON");
                let keys = format!("format = \"avro\"\nschema_file = \"{}\"", path.display());
                Ok((Encoder::Avro(schema), keys))
            }
            DemoFormat::Protobuf => {
                let file = protox_parse::parse("demo/ride.proto", PROTO_FILE)
                    .map_err(|e| format!("the demo's .proto: {e}"))?;
                let mut pool = DescriptorPool::global();
                pool.add_file_descriptor_proto(file)
                    .map_err(|e| format!("the demo's .proto: {e}"))?;
                let message = pool
                    .get_message_by_name("demo.v1.Ride")
                    .expect("the demo's .proto holds demo.v1.Ride");
                let set = FileDescriptorSet {
                    file: pool.file_descriptor_protos().cloned().collect(),
                };
                let path = dir.join("demo-ride.pb");
                std::fs::write(&path, set.encode_to_vec())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let keys = format!(
                    "format = \"protobuf\"\ndescriptor_set = \"{}\"\nmessage = \"demo.v1.Ride\"",
                    path.display()
                );
                Ok((Encoder::Protobuf(message), keys))
            }
        }
    }

    /// The record for a generated event: the event encoded, or for a
    /// malformed one bytes the format's decoder must refuse.
    pub fn encode(&self, json: &[u8], valid: bool) -> Vec<u8> {
        let value = match self {
            Encoder::Json => return json.to_vec(),
            _ if !valid => Value::Null,
            _ => serde_json::from_slice(json).expect("valid events are JSON"),
        };
        match self {
            Encoder::Json => unreachable!("returned above"),
            // Malformed: an Avro body cut short, a Protobuf field whose
            // length runs past the end.
            Encoder::Avro(_) if !valid => vec![0x02, 0x7f],
            Encoder::Protobuf(_) if !valid => vec![0x0a, 0x7f],
            Encoder::Avro(schema) => {
                let mut out = Vec::with_capacity(json.len() / 2);
                avro_value(schema, &value, &mut out);
                out
            }
            Encoder::Protobuf(message) => {
                let mut out = Vec::with_capacity(json.len() / 2);
                proto_message(message, &value, &mut out);
                out
            }
        }
    }
}

/// Epoch microseconds of a demo `event_time` (RFC 3339 text or epoch millis).
fn micros(value: &Value) -> i64 {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_micros())
            .unwrap_or_default(),
        other => other.as_i64().unwrap_or_default() * 1000,
    }
}

fn zigzag(out: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `value` in Avro binary for `schema` (the subset the demo schema uses).
fn avro_value(schema: &Value, value: &Value, out: &mut Vec<u8>) {
    match schema {
        Value::Array(branches) => {
            let index = match value {
                Value::Null => branches.iter().position(|b| b == "null"),
                _ => branches.iter().position(|b| b != "null"),
            }
            .expect("the union has the branch");
            zigzag(out, index as i64);
            avro_value(&branches[index], value, out);
        }
        Value::Object(o) if o["type"] == "record" => {
            for field in o["fields"].as_array().expect("fields") {
                let name = field["name"].as_str().expect("name");
                avro_value(&field["type"], &value[name], out);
            }
        }
        Value::Object(o) if o["type"] == "array" => {
            let items = value.as_array().cloned().unwrap_or_default();
            if !items.is_empty() {
                zigzag(out, items.len() as i64);
                for item in &items {
                    avro_value(&o["items"], item, out);
                }
            }
            out.push(0);
        }
        Value::Object(o)
            if o.get("logicalType")
                .is_some_and(|l| l == "timestamp-micros") =>
        {
            zigzag(out, micros(value))
        }
        Value::String(kind) => match kind.as_str() {
            "null" => {}
            "string" => {
                let text = value.as_str().unwrap_or_default();
                zigzag(out, text.len() as i64);
                out.extend_from_slice(text.as_bytes());
            }
            "int" | "long" => zigzag(out, value.as_i64().unwrap_or_default()),
            "double" => out.extend_from_slice(&value.as_f64().unwrap_or_default().to_le_bytes()),
            other => unreachable!("the demo schema has no {other}"),
        },
        other => unreachable!("the demo schema has no {other}"),
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, number: u32, wire: u64) {
    varint(out, (u64::from(number) << 3) | wire);
}

fn length_delimited(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    tag(out, number, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends `value` as a message of `descriptor` in the wire format (the
/// field kinds the demo message uses; null fields are left unset).
fn proto_message(descriptor: &MessageDescriptor, value: &Value, out: &mut Vec<u8>) {
    for field in descriptor.fields() {
        let v = &value[field.name()];
        let number = field.number();
        match field.kind() {
            _ if v.is_null() => {}
            prost_reflect::Kind::String if field.is_list() => {
                for item in v.as_array().into_iter().flatten() {
                    length_delimited(out, number, item.as_str().unwrap_or_default().as_bytes());
                }
            }
            prost_reflect::Kind::String => {
                length_delimited(out, number, v.as_str().unwrap_or_default().as_bytes())
            }
            prost_reflect::Kind::Double => {
                tag(out, number, 1);
                out.extend_from_slice(&v.as_f64().unwrap_or_default().to_le_bytes());
            }
            prost_reflect::Kind::Int32 => {
                tag(out, number, 0);
                varint(out, v.as_i64().unwrap_or_default() as u64);
            }
            prost_reflect::Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
                let micros = micros(v);
                let mut inner = Vec::with_capacity(12);
                tag(&mut inner, 1, 0);
                varint(&mut inner, micros.div_euclid(1_000_000) as u64);
                tag(&mut inner, 2, 0);
                varint(&mut inner, (micros.rem_euclid(1_000_000) * 1000) as u64);
                length_delimited(out, number, &inner);
            }
            prost_reflect::Kind::Message(m) => {
                let mut inner = Vec::with_capacity(32);
                proto_message(&m, v, &mut inner);
                length_delimited(out, number, &inner);
            }
            other => unreachable!("the demo message has no {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::events::RideEvents;
    use prost_reflect::DynamicMessage;

    #[test]
    fn binary_demo_events_hold_the_json_values() {
        let dir = tempfile::tempdir().unwrap();
        let (proto, keys) = Encoder::new(DemoFormat::Protobuf, dir.path()).unwrap();
        assert!(keys.contains("demo.v1.Ride"));
        let (avro, _) = Encoder::new(DemoFormat::Avro, dir.path()).unwrap();
        let Encoder::Protobuf(descriptor) = &proto else {
            panic!("protobuf")
        };
        let mut events = RideEvents::new(3, 50, 0.0);
        for _ in 0..50 {
            let event = events.next_event();
            let json: Value = serde_json::from_slice(&event.payload).unwrap();
            let bytes = proto.encode(&event.payload, true);
            let back = DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).unwrap();
            let text = |name: &str| {
                back.get_field_by_name(name)
                    .unwrap()
                    .as_str()
                    .map(str::to_string)
            };
            assert_eq!(text("user_id").as_deref(), json["user_id"].as_str());
            assert_eq!(text("event_type").as_deref(), json["event_type"].as_str());
            let lat = back
                .get_field_by_name("pickup")
                .unwrap()
                .as_message()
                .unwrap()
                .get_field_by_name("lat")
                .unwrap()
                .as_f64();
            assert_eq!(lat, json["pickup"]["lat"].as_f64());
            let tags = back.get_field_by_name("tags").unwrap();
            assert_eq!(
                tags.as_list().unwrap().len(),
                json["tags"].as_array().unwrap().len()
            );
            assert_eq!(back.has_field_by_name("rating"), !json["rating"].is_null());
            if let Some(rating) = json["rating"].as_i64() {
                assert_eq!(
                    back.get_field_by_name("rating").unwrap().as_i32(),
                    Some(rating as i32)
                );
            }
            let seconds = back
                .get_field_by_name("event_time")
                .unwrap()
                .as_message()
                .unwrap()
                .get_field_by_name("seconds")
                .unwrap()
                .as_i64()
                .unwrap();
            assert_eq!(seconds, micros(&json["event_time"]).div_euclid(1_000_000));
            // Avro: the event id is the first field (a length, then the text).
            let body = avro.encode(&event.payload, true);
            let id = json["event_id"].as_str().unwrap();
            assert_eq!(&body[1..1 + id.len()], id.as_bytes());
        }
        assert!(
            DynamicMessage::decode(descriptor.clone(), &proto.encode(b"{", false)[..]).is_err()
        );
    }
}
