//! Protobuf records to Arrow batches, from a compiled descriptor set
//! (`protoc --include_imports --include_source_info --descriptor_set_out`).
//!
//! The message is fixed per source (`message = "pkg.Msg"`) or named by the
//! topic through the platform's naming convention (see [`resolve_message`]).
//! Records are read with a wire-format reader of our own, driven by the
//! descriptors, straight into Arrow builders: each record is first parsed
//! and checked whole (tags, wire types, lengths, UTF-8), then appended, so
//! a malformed record is rejected with the reason and never leaves half a
//! row behind.
//!
//! # Types
//! `google.protobuf.Timestamp` becomes `timestamp` (microseconds, UTC);
//! wrappers (`Int64Value`, ...) nullable scalars; enums their value names
//! (the number for an unknown value); `oneof`s a struct with one nullable
//! field per member; `map` a map; `repeated` an array; `bytes` binary;
//! `uint32` and `fixed32` long; `uint64` and `fixed64` `decimal(20,0)`
//! (Delta readers have no unsigned types); `Struct`, `Value`, `ListValue`
//! and `Any` JSON text. A field with presence (proto2, proto3 `optional`,
//! messages, oneof members) that is not set is null; one without presence
//! reads as its default, as protobuf defines. Recursive messages are
//! refused at start, naming the path. Comments of the message's fields
//! (when the descriptor set carries source info) become column comments.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Float32Builder, Float64Builder,
    Int32Builder, Int64Builder, ListArray, MapArray, StringArray, StructArray,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use crate::table::schema::timestamp_type;

/// Reads a descriptor set file.
pub fn read_descriptor_set(path: &str) -> Result<DescriptorPool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
        format!(
            "`{path}` is not a descriptor set (protoc --include_imports --descriptor_set_out): {e}"
        )
    })
}

/// The message a topic names by the convention `pattern` (a regex with a
/// `message` group, and optionally `package` and `file` groups): exactly
/// one message of the pool must match, or the topic is refused.
pub fn resolve_message(
    pool: &DescriptorPool,
    pattern: &regex::Regex,
    topic: &str,
) -> Result<MessageDescriptor, String> {
    let captures = pattern.captures(topic).ok_or_else(|| {
        format!("topic `{topic}` does not match the naming convention `{pattern}`")
    })?;
    let name = captures
        .name("message")
        .map(|m| m.as_str())
        .ok_or_else(|| format!("the convention's `message` group matched nothing in `{topic}`"))?;
    let package = captures.name("package").map(|m| m.as_str());
    let file = captures.name("file").map(|m| m.as_str());
    let candidates: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.name() == name)
        .filter(|m| package.is_none_or(|p| m.package_name() == p))
        .filter(|m| {
            file.is_none_or(|f| {
                let path = m.parent_file().name().to_string();
                let stem = path.rsplit('/').next().unwrap_or(&path);
                stem.trim_end_matches(".proto") == f
            })
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "topic `{topic}` names message `{name}`{}{}, which the descriptor set does not hold",
            package.map(|p| format!(" in package `{p}`")).unwrap_or_default(),
            file.map(|f| format!(" in file `{f}.proto`")).unwrap_or_default(),
        )),
        many => Err(format!(
            "topic `{topic}` names message `{name}`, which is ambiguous: {} (add a `package` or `file` group to the convention)",
            many.iter().map(|m| m.full_name()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Whether `message` can type a table (no recursion, every type mapped).
pub fn check_message(message: &MessageDescriptor) -> Result<(), String> {
    let mut stack = vec![message.full_name().to_string()];
    plan_message(message, message.full_name(), &mut stack).map(|_| ())
}

/// A scalar's Arrow representation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    Bool,
    I32,
    I64,
    U32AsI64,
    U64AsDecimal,
    F32,
    F64,
    Str,
    Bytes,
}

/// How one field's values become Arrow values.
#[derive(Debug, Clone)]
enum Plan {
    Scalar(Scalar, Kind),
    Enum(EnumDescriptor),
    Timestamp,
    Wrapper(Scalar, Kind),
    Json(String),
    Message(Arc<MessagePlan>),
}

/// One field of a message plan.
#[derive(Debug, Clone)]
struct FieldPlan {
    number: u32,
    name: String,
    plan: Plan,
    list: bool,
    /// A map's entry message (key = 1, value = 2).
    map: Option<Arc<MessagePlan>>,
    presence: bool,
}

impl FieldPlan {
    /// A map's key and value fields.
    fn map_parts(&self) -> Option<(&FieldPlan, &FieldPlan)> {
        let entry = self.map.as_ref()?;
        match &entry.members[..] {
            [Member::Field(key), Member::Field(value)] => Some((key, value)),
            _ => unreachable!("map entries hold a key and a value"),
        }
    }
}

/// Field number -> (member index, index within a oneof): a table indexed by
/// number for the usual small numbers, a hash map beyond.
#[derive(Debug, Default)]
struct FieldNumbers {
    dense: Vec<Option<(u32, u32)>>,
    sparse: HashMap<u32, (u32, u32)>,
}

impl FieldNumbers {
    /// Numbers below this are looked up by index.
    const DENSE: u32 = 1024;

    fn insert(&mut self, number: u32, at: (usize, usize)) {
        let at = (at.0 as u32, at.1 as u32);
        if number < Self::DENSE {
            let index = number as usize;
            if self.dense.len() <= index {
                self.dense.resize(index + 1, None);
            }
            self.dense[index] = Some(at);
        } else {
            self.sparse.insert(number, at);
        }
    }

    fn get(&self, number: u32) -> Option<(u32, u32)> {
        if number < Self::DENSE {
            self.dense.get(number as usize).copied().flatten()
        } else {
            self.sparse.get(&number).copied()
        }
    }
}

/// A column of a message: a field, or a oneof grouping several.
#[derive(Debug, Clone)]
enum Member {
    Field(FieldPlan),
    Oneof(String, Vec<FieldPlan>),
}

/// How a message's fields become columns.
#[derive(Debug)]
pub(super) struct MessagePlan {
    members: Vec<Member>,
    by_number: FieldNumbers,
    pub(super) fields: Fields,
}

fn scalar_of(kind: &Kind) -> Option<Scalar> {
    Some(match kind {
        Kind::Bool => Scalar::Bool,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Scalar::I32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Scalar::I64,
        Kind::Uint32 | Kind::Fixed32 => Scalar::U32AsI64,
        Kind::Uint64 | Kind::Fixed64 => Scalar::U64AsDecimal,
        Kind::Float => Scalar::F32,
        Kind::Double => Scalar::F64,
        Kind::String => Scalar::Str,
        Kind::Bytes => Scalar::Bytes,
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}

fn scalar_type(scalar: Scalar) -> DataType {
    match scalar {
        Scalar::Bool => DataType::Boolean,
        Scalar::I32 => DataType::Int32,
        Scalar::I64 | Scalar::U32AsI64 => DataType::Int64,
        Scalar::U64AsDecimal => DataType::Decimal128(20, 0),
        Scalar::F32 => DataType::Float32,
        Scalar::F64 => DataType::Float64,
        Scalar::Str => DataType::Utf8,
        Scalar::Bytes => DataType::Binary,
    }
}

fn plan_type(plan: &Plan) -> DataType {
    match plan {
        Plan::Scalar(s, _) | Plan::Wrapper(s, _) => scalar_type(*s),
        Plan::Enum(_) | Plan::Json(_) => DataType::Utf8,
        Plan::Timestamp => timestamp_type(),
        Plan::Message(m) => DataType::Struct(m.fields.clone()),
    }
}

fn field_type(field: &FieldPlan) -> DataType {
    if let Some((key, value)) = field.map_parts() {
        let entries = Fields::from(vec![
            Field::new("key", plan_type(&key.plan), false),
            Field::new("value", plan_type(&value.plan), true),
        ]);
        return DataType::Map(
            Arc::new(Field::new("key_value", DataType::Struct(entries), false)),
            false,
        );
    }
    let item = plan_type(&field.plan);
    if field.list {
        DataType::List(Arc::new(Field::new("element", item, true)))
    } else {
        item
    }
}

fn plan_field(
    field: &FieldDescriptor,
    path: &str,
    stack: &mut Vec<String>,
) -> Result<FieldPlan, String> {
    let here = format!("{path}.{}", field.name());
    let kind = field.kind();
    let map = if field.is_map() {
        let Kind::Message(entry) = &kind else {
            unreachable!("maps are messages")
        };
        let key = plan_field(&entry.map_entry_key_field(), &here, stack)?;
        let value = plan_field(&entry.map_entry_value_field(), &here, stack)?;
        Some(Arc::new(entry_plan(key, value)))
    } else {
        None
    };
    let plan = match &kind {
        Kind::Enum(e) => Plan::Enum(e.clone()),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => Plan::Timestamp,
            "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Any" => Plan::Json(m.full_name().to_string()),
            name if name.starts_with("google.protobuf.") && name.ends_with("Value") => {
                let inner = m
                    .get_field(1)
                    .ok_or_else(|| format!("field `{here}`: wrapper `{name}` without a value"))?
                    .kind();
                Plan::Wrapper(scalar_of(&inner).expect("wrappers hold scalars"), inner)
            }
            // A map's entry message: its key and value are planned above.
            _ if map.is_some() => Plan::Scalar(Scalar::Bool, Kind::Bool),
            name => {
                if stack.iter().any(|s| s == name) {
                    return Err(format!(
                        "field `{here}`: message `{name}` is recursive; Delta tables cannot hold it"
                    ));
                }
                stack.push(name.to_string());
                let nested = plan_message(m, &here, stack)?;
                stack.pop();
                Plan::Message(Arc::new(nested))
            }
        },
        other => Plan::Scalar(scalar_of(other).expect("scalar kinds"), other.clone()),
    };
    Ok(FieldPlan {
        number: field.number(),
        name: field.name().to_string(),
        plan,
        list: field.is_list(),
        map,
        presence: field.supports_presence(),
    })
}

pub(super) fn plan_message(
    message: &MessageDescriptor,
    path: &str,
    stack: &mut Vec<String>,
) -> Result<MessagePlan, String> {
    let mut members: Vec<Member> = Vec::new();
    let mut by_number = FieldNumbers::default();
    let mut oneof_index: HashMap<String, usize> = HashMap::new();
    for field in message.fields() {
        let plan = plan_field(&field, path, stack)?;
        let number = plan.number;
        match field.containing_oneof().filter(|o| !o.is_synthetic()) {
            Some(oneof) => {
                let name = oneof.name().to_string();
                let index = *oneof_index.entry(name.clone()).or_insert_with(|| {
                    members.push(Member::Oneof(name.clone(), Vec::new()));
                    members.len() - 1
                });
                let Member::Oneof(_, fields) = &mut members[index] else {
                    unreachable!("oneof member")
                };
                by_number.insert(number, (index, fields.len()));
                fields.push(FieldPlan {
                    presence: true,
                    ..plan
                });
            }
            None => {
                by_number.insert(number, (members.len(), 0));
                members.push(Member::Field(plan));
            }
        }
    }
    let comments = field_comments(message);
    let column = |f: &FieldPlan| {
        let field = Field::new(&f.name, field_type(f), true);
        match comments.get(&f.name) {
            Some(text) => field.with_metadata(HashMap::from([(
                super::avro::COMMENT.to_string(),
                text.clone(),
            )])),
            None => field,
        }
    };
    let fields = Fields::from(
        members
            .iter()
            .map(|m| match m {
                Member::Field(f) => column(f),
                Member::Oneof(name, fs) => Field::new(
                    name,
                    DataType::Struct(Fields::from(fs.iter().map(column).collect::<Vec<_>>())),
                    true,
                ),
            })
            .collect::<Vec<_>>(),
    );
    Ok(MessagePlan {
        members,
        by_number,
        fields,
    })
}

/// One occurrence of a field on the wire.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// One occurrence: (member index, index within a oneof, value).
type Entry<'a> = (u32, u32, Raw<'a>);

/// A message's fields as read from the wire: every occurrence, grouped by
/// member (one allocation per message), in wire order within a member.
pub(super) struct Parsed<'a> {
    entries: Vec<Entry<'a>>,
}

impl<'a> Parsed<'a> {
    /// The occurrences of member `m`, in wire order.
    fn member(&self, m: usize) -> &[Entry<'a>] {
        let m = m as u32;
        let start = self.entries.partition_point(|e| e.0 < m);
        let end = self.entries.partition_point(|e| e.0 <= m);
        &self.entries[start..end]
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(len)
        .filter(|e| *e <= bytes.len())
        .ok_or("truncated field")?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

/// The wire type a (non-packed) value of `kind` has.
fn wire_type(plan: &Plan) -> u64 {
    match plan {
        Plan::Scalar(_, kind) => match kind {
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
            Kind::String | Kind::Bytes | Kind::Message(_) => 2,
            _ => 0,
        },
        Plan::Enum(_) => 0,
        _ => 2,
    }
}

/// Reads and checks a message: every field's wire type and length, strings'
/// UTF-8, nested messages whole. Unknown field numbers are skipped.
pub(super) fn parse<'a>(plan: &MessagePlan, bytes: &'a [u8]) -> Result<Parsed<'a>, String> {
    let mut entries: Vec<Entry<'a>> = Vec::with_capacity(plan.members.len());
    let mut at = 0;
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at)?;
        let (number, wire) = ((tag >> 3) as u32, tag & 7);
        if number == 0 {
            return Err("field number 0".into());
        }
        let raw = match wire {
            0 => Raw::Varint(read_varint(bytes, &mut at)?),
            1 => Raw::Fixed64(u64::from_le_bytes(
                take(bytes, &mut at, 8)?.try_into().expect("8"),
            )),
            5 => Raw::Fixed32(u32::from_le_bytes(
                take(bytes, &mut at, 4)?.try_into().expect("4"),
            )),
            2 => {
                let len = read_varint(bytes, &mut at)? as usize;
                Raw::Bytes(take(bytes, &mut at, len)?)
            }
            other => {
                return Err(format!(
                    "field {number}: wire type {other} (groups are not supported)"
                ))
            }
        };
        let Some((member, within)) = plan.by_number.get(number) else {
            continue;
        };
        let (member, within) = (member as usize, within as usize);
        let field = match &plan.members[member] {
            Member::Field(f) => f,
            Member::Oneof(_, fs) => &fs[within],
        };
        let expected = if field.map.is_some() {
            2
        } else {
            wire_type(&field.plan)
        };
        if wire != expected {
            let packable = field.list && expected != 2 && wire == 2;
            if !packable {
                return Err(format!(
                    "field `{}` ({number}): wire type {wire}, expected {expected}",
                    field.name
                ));
            }
            let Raw::Bytes(packed) = raw else {
                unreachable!("wire type 2")
            };
            let mut p = 0;
            while p < packed.len() {
                let value = match expected {
                    0 => Raw::Varint(read_varint(packed, &mut p)?),
                    1 => Raw::Fixed64(u64::from_le_bytes(
                        take(packed, &mut p, 8)?.try_into().expect("8"),
                    )),
                    _ => Raw::Fixed32(u32::from_le_bytes(
                        take(packed, &mut p, 4)?.try_into().expect("4"),
                    )),
                };
                entries.push((member as u32, within as u32, value));
            }
            continue;
        }
        check_value(field, raw)?;
        entries.push((member as u32, within as u32, raw));
    }
    // Stable: wire order is kept within each member.
    entries.sort_by_key(|e| e.0);
    Ok(Parsed { entries })
}

/// Checks a length-delimited value: UTF-8 strings, nested messages whole.
fn check_value(field: &FieldPlan, raw: Raw<'_>) -> Result<(), String> {
    let Raw::Bytes(bytes) = raw else {
        return Ok(());
    };
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(|_| ())
            .map_err(|_| format!("field `{}`: invalid UTF-8", field.name))
    };
    if let (Some(entry), Some((key, value))) = (&field.map, field.map_parts()) {
        let parsed = parse(entry, bytes).map_err(|e| format!("field `{}`: {e}", field.name))?;
        for (member, plan) in [(0usize, key), (1, value)] {
            for (_, _, v) in parsed.member(member) {
                check_value(plan, *v)?;
            }
        }
        return Ok(());
    }
    match &field.plan {
        Plan::Scalar(Scalar::Str, _) => utf8(bytes),
        Plan::Message(m) => parse(m, bytes)
            .map(|_| ())
            .map_err(|e| format!("field `{}`: {e}", field.name)),
        Plan::Timestamp | Plan::Wrapper(..) | Plan::Json(_) => {
            let mut at = 0;
            while at < bytes.len() {
                let tag = read_varint(bytes, &mut at)?;
                match tag & 7 {
                    0 => {
                        read_varint(bytes, &mut at)?;
                    }
                    1 => {
                        take(bytes, &mut at, 8)?;
                    }
                    5 => {
                        take(bytes, &mut at, 4)?;
                    }
                    2 => {
                        let len = read_varint(bytes, &mut at)? as usize;
                        take(bytes, &mut at, len)?;
                    }
                    other => return Err(format!("field `{}`: wire type {other}", field.name)),
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The plan of a map entry message (key = 1, value = 2).
fn entry_plan(key: FieldPlan, value: FieldPlan) -> MessagePlan {
    let mut by_number = FieldNumbers::default();
    by_number.insert(1, (0, 0));
    by_number.insert(2, (1, 0));
    MessagePlan {
        members: vec![Member::Field(key), Member::Field(value)],
        by_number,
        fields: Fields::empty(),
    }
}

/// An Arrow builder for one column.
enum Col {
    Bool(BooleanBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    Dec(Decimal128Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    /// UTF-8 checked when the message was parsed; the array checks the
    /// whole buffer once when it is finished.
    Str(BinaryBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMicrosecondBuilder),
    Struct(StructCol),
    List(Box<Col>, Vec<i32>, Arc<Field>),
    Map(Box<Col>, Box<Col>, Vec<i32>, Arc<Field>),
}

pub(super) struct StructCol {
    fields: Fields,
    cols: Vec<Col>,
    valid: Vec<bool>,
}

impl StructCol {
    pub(super) fn new(fields: &Fields) -> Self {
        Self {
            fields: fields.clone(),
            cols: fields.iter().map(|f| Col::new(f.data_type())).collect(),
            valid: Vec::new(),
        }
    }

    fn append_null(&mut self) {
        for col in &mut self.cols {
            col.append_null();
        }
        self.valid.push(false);
    }

    pub(super) fn finish(&mut self) -> StructArray {
        let columns: Vec<ArrayRef> = self.cols.iter_mut().map(Col::finish).collect();
        let valid = std::mem::take(&mut self.valid);
        let nulls = (!valid.iter().all(|v| *v)).then(|| NullBuffer::from(valid.clone()));
        if self.fields.is_empty() {
            return StructArray::new_empty_fields(valid.len(), nulls);
        }
        StructArray::new(self.fields.clone(), columns, nulls)
    }
}

impl Col {
    fn new(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Col::Bool(BooleanBuilder::new()),
            DataType::Int32 => Col::I32(Int32Builder::new()),
            DataType::Int64 => Col::I64(Int64Builder::new()),
            DataType::Decimal128(p, s) => {
                Col::Dec(Decimal128Builder::new().with_data_type(DataType::Decimal128(*p, *s)))
            }
            DataType::Float32 => Col::F32(Float32Builder::new()),
            DataType::Float64 => Col::F64(Float64Builder::new()),
            DataType::Utf8 => Col::Str(BinaryBuilder::new()),
            DataType::Binary => Col::Bin(BinaryBuilder::new()),
            DataType::Timestamp(..) => {
                Col::Ts(TimestampMicrosecondBuilder::new().with_data_type(timestamp_type()))
            }
            DataType::Struct(fields) => Col::Struct(StructCol::new(fields)),
            DataType::List(item) => {
                Col::List(Box::new(Col::new(item.data_type())), vec![0], item.clone())
            }
            DataType::Map(entries, _) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    unreachable!("map entries")
                };
                Col::Map(
                    Box::new(Col::new(kv[0].data_type())),
                    Box::new(Col::new(kv[1].data_type())),
                    vec![0],
                    entries.clone(),
                )
            }
            other => unreachable!("protobuf plans never produce {other}"),
        }
    }

    fn append_null(&mut self) {
        match self {
            Col::Bool(b) => b.append_null(),
            Col::I32(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::Dec(b) => b.append_null(),
            Col::F32(b) => b.append_null(),
            Col::F64(b) => b.append_null(),
            Col::Str(b) => b.append_null(),
            Col::Bin(b) => b.append_null(),
            Col::Ts(b) => b.append_null(),
            Col::Struct(s) => s.append_null(),
            // Repeated fields and maps are never null: empty.
            Col::List(_, offsets, _) | Col::Map(_, _, offsets, _) => {
                offsets.push(*offsets.last().expect("offsets start at 0"))
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Bool(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::Dec(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Str(b) => Arc::new(
                StringArray::try_from_binary(b.finish()).expect("UTF-8 checked when parsed"),
            ),
            Col::Bin(b) => Arc::new(b.finish()),
            Col::Ts(b) => Arc::new(b.finish()),
            Col::Struct(s) => Arc::new(s.finish()),
            Col::List(item, offsets, field) => {
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field.clone(), offsets, item.finish(), None))
            }
            Col::Map(key, value, offsets, entries) => {
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let DataType::Struct(kv) = entries.data_type() else {
                    unreachable!("map entries")
                };
                let entry = StructArray::new(kv.clone(), vec![key.finish(), value.finish()], None);
                Arc::new(MapArray::new(entries.clone(), offsets, entry, None, false))
            }
        }
    }
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends one (checked) value of `plan` to `col`.
fn append_value(col: &mut Col, plan: &Plan, raw: Raw<'_>) {
    match (plan, col) {
        (Plan::Scalar(_, kind) | Plan::Wrapper(_, kind), col) => {
            append_scalar(col, kind, Some(raw))
        }
        (Plan::Enum(e), Col::Str(b)) => {
            let Raw::Varint(v) = raw else {
                unreachable!("checked wire type")
            };
            let number = v as i32;
            match e.get_value(number) {
                Some(value) => b.append_value(value.name()),
                None => b.append_value(number.to_string().as_bytes()),
            }
        }
        (Plan::Timestamp, Col::Ts(b)) => {
            let Raw::Bytes(bytes) = raw else {
                unreachable!("checked wire type")
            };
            let (mut seconds, mut nanos) = (0i64, 0i64);
            for (number, value) in inner_fields(bytes) {
                match (number, value) {
                    (1, Raw::Varint(v)) => seconds = v as i64,
                    (2, Raw::Varint(v)) => nanos = i64::from(v as i32),
                    _ => {}
                }
            }
            b.append_value(seconds * 1_000_000 + nanos / 1_000);
        }
        (Plan::Json(name), Col::Str(b)) => {
            let Raw::Bytes(bytes) = raw else {
                unreachable!("checked wire type")
            };
            b.append_value(well_known_json(name, bytes).to_string().as_bytes());
        }
        (Plan::Message(m), Col::Struct(s)) => {
            let Raw::Bytes(bytes) = raw else {
                unreachable!("checked wire type")
            };
            let parsed = parse(m, bytes).expect("checked before appending");
            append_message(m, &parsed, s);
        }
        _ => unreachable!("columns are built from the plans"),
    }
}

/// The fields of a small well-known message (no plan needed).
fn inner_fields(bytes: &[u8]) -> Vec<(u32, Raw<'_>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Ok(tag) = read_varint(bytes, &mut at) else {
            break;
        };
        let value = match tag & 7 {
            0 => read_varint(bytes, &mut at).map(Raw::Varint),
            1 => take(bytes, &mut at, 8)
                .map(|b| Raw::Fixed64(u64::from_le_bytes(b.try_into().expect("8")))),
            5 => take(bytes, &mut at, 4)
                .map(|b| Raw::Fixed32(u32::from_le_bytes(b.try_into().expect("4")))),
            2 => read_varint(bytes, &mut at)
                .and_then(|len| take(bytes, &mut at, len as usize))
                .map(Raw::Bytes),
            _ => break,
        };
        let Ok(value) = value else { break };
        out.push(((tag >> 3) as u32, value));
    }
    out
}

/// `Struct`, `Value`, `ListValue` and `Any` as JSON.
fn well_known_json(name: &str, bytes: &[u8]) -> serde_json::Value {
    use serde_json::Value;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match name {
        "google.protobuf.Struct" => {
            let mut map = serde_json::Map::new();
            for (number, value) in inner_fields(bytes) {
                if let (1, Raw::Bytes(entry)) = (number, value) {
                    let mut key = String::new();
                    let mut val = Value::Null;
                    for (n, v) in inner_fields(entry) {
                        match (n, v) {
                            (1, Raw::Bytes(k)) => key = text(k),
                            (2, Raw::Bytes(v)) => val = well_known_json("google.protobuf.Value", v),
                            _ => {}
                        }
                    }
                    map.insert(key, val);
                }
            }
            Value::Object(map)
        }
        "google.protobuf.ListValue" => Value::Array(
            inner_fields(bytes)
                .into_iter()
                .filter_map(|(n, v)| match (n, v) {
                    (1, Raw::Bytes(b)) => Some(well_known_json("google.protobuf.Value", b)),
                    _ => None,
                })
                .collect(),
        ),
        "google.protobuf.Any" => {
            let mut out = serde_json::Map::new();
            for (n, v) in inner_fields(bytes) {
                match (n, v) {
                    (1, Raw::Bytes(b)) => {
                        out.insert("@type".into(), Value::String(text(b)));
                    }
                    (2, Raw::Bytes(b)) => {
                        out.insert("value".into(), Value::String(hex::encode(b)));
                    }
                    _ => {}
                }
            }
            Value::Object(out)
        }
        _ => {
            let mut out = Value::Null;
            for (n, v) in inner_fields(bytes) {
                out = match (n, v) {
                    (1, _) => Value::Null,
                    (2, Raw::Fixed64(bits)) => serde_json::Number::from_f64(f64::from_bits(bits))
                        .map_or(Value::Null, Value::Number),
                    (3, Raw::Bytes(b)) => Value::String(text(b)),
                    (4, Raw::Varint(b)) => Value::Bool(b != 0),
                    (5, Raw::Bytes(b)) => well_known_json("google.protobuf.Struct", b),
                    (6, Raw::Bytes(b)) => well_known_json("google.protobuf.ListValue", b),
                    _ => out,
                };
            }
            out
        }
    }
}

/// Appends a scalar (`None`: the kind's default).
fn append_scalar(col: &mut Col, kind: &Kind, raw: Option<Raw<'_>>) {
    let varint = || match raw {
        Some(Raw::Varint(v)) => v,
        _ => 0,
    };
    let fixed64 = || match raw {
        Some(Raw::Fixed64(v)) => v,
        _ => 0,
    };
    let fixed32 = || match raw {
        Some(Raw::Fixed32(v)) => v,
        _ => 0,
    };
    let bytes = || match raw {
        Some(Raw::Bytes(b)) => b,
        _ => &[][..],
    };
    match (kind, col) {
        (Kind::Bool, Col::Bool(b)) => b.append_value(varint() != 0),
        (Kind::Int32, Col::I32(b)) => b.append_value(varint() as i32),
        (Kind::Sint32, Col::I32(b)) => b.append_value(zigzag(varint()) as i32),
        (Kind::Sfixed32, Col::I32(b)) => b.append_value(fixed32() as i32),
        (Kind::Int64, Col::I64(b)) => b.append_value(varint() as i64),
        (Kind::Sint64, Col::I64(b)) => b.append_value(zigzag(varint())),
        (Kind::Sfixed64, Col::I64(b)) => b.append_value(fixed64() as i64),
        (Kind::Uint32, Col::I64(b)) => b.append_value(i64::from(varint() as u32)),
        (Kind::Fixed32, Col::I64(b)) => b.append_value(i64::from(fixed32())),
        (Kind::Uint64, Col::Dec(b)) => b.append_value(i128::from(varint())),
        (Kind::Fixed64, Col::Dec(b)) => b.append_value(i128::from(fixed64())),
        (Kind::Float, Col::F32(b)) => b.append_value(f32::from_bits(fixed32())),
        (Kind::Double, Col::F64(b)) => b.append_value(f64::from_bits(fixed64())),
        (Kind::String, Col::Str(b)) => b.append_value(bytes()),
        (Kind::Bytes, Col::Bin(b)) => b.append_value(bytes()),
        _ => unreachable!("columns are built from the plans"),
    }
}

/// Appends a field's value(s), or its default or null when absent.
fn append_field(field: &FieldPlan, values: &[Entry<'_>], col: &mut Col) {
    if let (Some(entry), Some((key, value))) = (&field.map, field.map_parts()) {
        let Col::Map(keys, vals, offsets, _) = col else {
            unreachable!("map column")
        };
        for (_, _, raw) in values {
            let Raw::Bytes(bytes) = raw else { continue };
            let parsed = parse(entry, bytes).expect("checked before appending");
            let last = |m: usize| parsed.member(m).last().map(|(_, _, v)| *v);
            append_one(key, last(0), keys);
            append_one(value, last(1), vals);
        }
        let end = offsets.last().expect("offsets") + values.len() as i32;
        offsets.push(end);
        return;
    }
    if field.list {
        let Col::List(item, offsets, _) = col else {
            unreachable!("list column")
        };
        for (_, _, raw) in values {
            append_value(item, &field.plan, *raw);
        }
        let end = offsets.last().expect("offsets") + values.len() as i32;
        offsets.push(end);
        return;
    }
    append_one(field, values.last().map(|(_, _, v)| *v), col);
}

/// Appends a singular field's value, or its default (no presence) or null.
fn append_one(field: &FieldPlan, raw: Option<Raw<'_>>, col: &mut Col) {
    match (raw, &field.plan) {
        (Some(raw), plan) => append_value(col, plan, raw),
        (None, Plan::Scalar(_, kind)) if !field.presence => append_scalar(col, kind, None),
        (None, Plan::Enum(e)) if !field.presence => {
            let Col::Str(b) = col else {
                unreachable!("enum column")
            };
            match e.get_value(0) {
                Some(v) => b.append_value(v.name()),
                None => b.append_value("0"),
            }
        }
        (None, _) => col.append_null(),
    }
}

/// Appends a parsed message as one row of `into`.
pub(super) fn append_message(plan: &MessagePlan, parsed: &Parsed<'_>, into: &mut StructCol) {
    for (member, (spec, col)) in plan.members.iter().zip(into.cols.iter_mut()).enumerate() {
        let occurrences = parsed.member(member);
        match spec {
            Member::Field(field) => {
                append_field(field, occurrences, col);
            }
            Member::Oneof(_, fields) => {
                let Col::Struct(s) = col else {
                    unreachable!("oneof column")
                };
                // The member set last on the wire wins, as protobuf defines.
                let chosen = occurrences.last().map(|(_, within, _)| *within as usize);
                match chosen {
                    None => s.append_null(),
                    Some(which) => {
                        for (i, (field, c)) in fields.iter().zip(s.cols.iter_mut()).enumerate() {
                            if i == which {
                                let values: Vec<Entry<'_>> = occurrences
                                    .iter()
                                    .filter(|(_, w, _)| *w as usize == i)
                                    .copied()
                                    .collect();
                                append_field(field, &values, c);
                            } else {
                                c.append_null();
                            }
                        }
                        s.valid.push(true);
                    }
                }
            }
        }
    }
    into.valid.push(true);
}

/// The leading comments of a message's fields, when the descriptor set
/// carries source info.
fn field_comments(message: &MessageDescriptor) -> HashMap<String, String> {
    let file = message.parent_file_descriptor_proto();
    let Some(info) = &file.source_code_info else {
        return HashMap::new();
    };
    message
        .fields()
        .filter_map(|field| {
            let location = info.location.iter().find(|l| l.path == field.path())?;
            let text = location
                .leading_comments
                .as_deref()
                .or(location.trailing_comments.as_deref())?
                .trim();
            (!text.is_empty()).then(|| (field.name().to_string(), text.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_read_as_protobuf_defines() {
        let mut at = 0;
        assert_eq!(read_varint(&[0xac, 0x02], &mut at).unwrap(), 300);
        assert_eq!(at, 2);
        assert_eq!(zigzag(3), -2);
        assert_eq!(zigzag(4), 2);
        assert!(read_varint(&[0x80], &mut 0).is_err(), "truncated");
    }
}
