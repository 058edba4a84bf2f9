//! Avro object container files (`.avro`) as records: the header's schema,
//! then every datum of every block as one record body, in file order.
//!
//! Blocks may be uncompressed or compressed with deflate, snappy (with its
//! CRC checked) or zstandard; another codec is refused naming it. Datums are
//! delimited by walking the writer schema over the block's bytes (Avro
//! binary carries no lengths), so each becomes a record of its own with its
//! index in the file as position, and the Avro decoder reads it as a plain
//! body. A file whose bytes end early or break the schema fails with the
//! file and the datum named.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;
use serde_json::Value;

/// The magic bytes of an object container file.
const MAGIC: &[u8; 4] = b"Obj\x01";

/// An object container file, read block by block.
pub struct Container<R> {
    /// The writer schema (JSON text).
    pub schema: String,
    codec: String,
    sync: [u8; 16],
    plan: Plan,
    reader: R,
}

/// Reads a zigzag long from a stream; `None` at a clean end of the stream.
fn read_long<R: Read>(reader: &mut R) -> Result<Option<i64>, String> {
    let mut value = 0u64;
    for (n, shift) in (0..64).step_by(7).enumerate() {
        let mut byte = [0u8];
        match reader.read(&mut byte) {
            Ok(0) if n == 0 => return Ok(None),
            Ok(0) => return Err("ends inside a number".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(((value >> 1) as i64) ^ -((value & 1) as i64)));
        }
    }
    Err("a number longer than 10 bytes".into())
}

fn read_exact<R: Read>(reader: &mut R, len: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; len];
    reader
        .read_exact(&mut out)
        .map_err(|_| "ends early".to_string())?;
    Ok(out)
}

fn long<R: Read>(reader: &mut R) -> Result<i64, String> {
    read_long(reader)?.ok_or_else(|| "ends early".to_string())
}

fn zigzag_long(bytes: &[u8], at: &mut usize) -> Result<i64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("ends inside a number")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("a number longer than 10 bytes".into())
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(len)
        .filter(|e| *e <= bytes.len())
        .ok_or("ends early")?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

impl<R: Read> Container<R> {
    /// Reads the header from `reader` (the file's start).
    pub fn open(mut reader: R) -> Result<Self, String> {
        let magic = read_exact(&mut reader, 4)
            .map_err(|_| "not an Avro object container file (too short)".to_string())?;
        if magic != MAGIC[..] {
            return Err("not an Avro object container file (no `Obj\\x01` magic)".into());
        }
        let mut meta: HashMap<String, Vec<u8>> = HashMap::new();
        loop {
            let mut count = long(&mut reader)?;
            if count == 0 {
                break;
            }
            if count < 0 {
                count = -count;
                long(&mut reader)?;
            }
            for _ in 0..count {
                let len = long(&mut reader)? as usize;
                let key = String::from_utf8_lossy(&read_exact(&mut reader, len)?).into_owned();
                let len = long(&mut reader)? as usize;
                meta.insert(key, read_exact(&mut reader, len)?);
            }
        }
        let sync: [u8; 16] = read_exact(&mut reader, 16)?.try_into().expect("16 bytes");
        let schema = meta
            .get("avro.schema")
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .ok_or("the header holds no `avro.schema`")?;
        let codec = meta
            .get("avro.codec")
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_else(|| "null".into());
        if !matches!(codec.as_str(), "null" | "deflate" | "snappy" | "zstandard") {
            return Err(format!(
                "codec `{codec}` is not supported (null, deflate, snappy, zstandard are)"
            ));
        }
        let plan = serde_json::from_str(&schema)
            .map_err(|e| e.to_string())
            .and_then(|json| Plan::compile(&json))
            .map_err(|e| format!("the header's schema: {e}"))?;
        Ok(Self {
            schema,
            codec,
            sync,
            plan,
            reader,
        })
    }

    /// The datums of the next block (slices of one buffer), or `None` at the
    /// end of the file.
    pub fn next_block(&mut self) -> Result<Option<Vec<Bytes>>, String> {
        let Some(count) = read_long(&mut self.reader)? else {
            return Ok(None);
        };
        let size = long(&mut self.reader)?;
        if count < 0 || size < 0 {
            return Err("a block with a negative count or size".into());
        }
        let data = read_exact(&mut self.reader, size as usize)?;
        if read_exact(&mut self.reader, 16)? != self.sync {
            return Err("a block does not end with the file's sync marker".into());
        }
        let data = Bytes::from(self.decompress(data)?);
        let mut datums = Vec::with_capacity(count as usize);
        let mut at = 0;
        for n in 0..count {
            let start = at;
            self.plan
                .skip(self.plan.root, &data, &mut at)
                .map_err(|e| format!("datum {n} of a block: {e}"))?;
            datums.push(data.slice(start..at));
        }
        if at != data.len() {
            return Err("bytes left over after a block's datums".into());
        }
        Ok(Some(datums))
    }

    fn decompress(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.codec.as_str() {
            "null" => Ok(data),
            "deflate" => {
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(&data[..])
                    .read_to_end(&mut out)
                    .map_err(|e| format!("deflate: {e}"))?;
                Ok(out)
            }
            "snappy" => {
                let (body, crc) = data
                    .split_at_checked(data.len().saturating_sub(4))
                    .ok_or("snappy block without its CRC")?;
                let out = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map_err(|e| format!("snappy: {e}"))?;
                if crc32fast::hash(&out).to_be_bytes() != crc {
                    return Err("snappy block fails its CRC".into());
                }
                Ok(out)
            }
            _ => zstd::stream::decode_all(&data[..]).map_err(|e| format!("zstandard: {e}")),
        }
    }
}

/// What one schema node's bytes hold, compiled once from the writer schema
/// (named types resolved) so a datum is walked without looking at JSON.
#[derive(Debug)]
enum Step {
    /// `null`: no bytes.
    Nothing,
    /// `boolean`, `float`, `double`, `fixed`: this many bytes.
    Width(usize),
    /// `int`, `long`, an enum's index: one zigzag varint.
    Varint,
    /// `bytes`, `string`: a length, then that many bytes.
    Sized,
    /// A record's fields, in order.
    Record(Vec<usize>),
    /// A union's branches: an index, then that branch.
    Union(Vec<usize>),
    /// Blocks of items.
    Array(usize),
    /// Blocks of string keys and values.
    Map(usize),
}

/// A writer schema as steps; steps refer to each other by index, so a
/// recursive record refers back to itself.
#[derive(Debug)]
struct Plan {
    steps: Vec<Step>,
    root: usize,
}

impl Plan {
    fn compile(schema: &Value) -> Result<Self, String> {
        let mut named = HashMap::new();
        collect_named(schema, None, &mut named);
        let mut compiler = Compiler {
            named,
            indices: HashMap::new(),
            steps: Vec::new(),
        };
        let root = compiler.compile(schema)?;
        Ok(Self {
            steps: compiler.steps,
            root,
        })
    }

    /// Moves `at` past one datum of step `index`.
    fn skip(&self, index: usize, data: &[u8], at: &mut usize) -> Result<(), String> {
        match &self.steps[index] {
            Step::Nothing => Ok(()),
            Step::Width(width) => take(data, at, *width).map(|_| ()),
            Step::Varint => zigzag_long(data, at).map(|_| ()),
            Step::Sized => {
                let len = zigzag_long(data, at)?;
                let len = usize::try_from(len).map_err(|_| "a negative length".to_string())?;
                take(data, at, len).map(|_| ())
            }
            Step::Record(fields) => fields
                .iter()
                .try_for_each(|&field| self.skip(field, data, at)),
            Step::Union(branches) => {
                let branch = zigzag_long(data, at)?;
                let step = usize::try_from(branch)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {branch} out of range"))?;
                self.skip(*step, data, at)
            }
            Step::Array(items) => self.skip_blocks(data, at, |d, a| self.skip(*items, d, a)),
            Step::Map(values) => self.skip_blocks(data, at, |d, a| {
                let len = zigzag_long(d, a)?;
                let len = usize::try_from(len).map_err(|_| "a negative length".to_string())?;
                take(d, a, len)?;
                self.skip(*values, d, a)
            }),
        }
    }

    fn skip_blocks(
        &self,
        data: &[u8],
        at: &mut usize,
        mut item: impl FnMut(&[u8], &mut usize) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let mut count = zigzag_long(data, at)?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = -count;
                zigzag_long(data, at)?;
            }
            for _ in 0..count {
                item(data, at)?;
            }
        }
    }
}

/// Turns schema JSON into steps.
struct Compiler<'s> {
    named: HashMap<String, &'s Value>,
    /// Named types already compiled (or being compiled), by full name.
    indices: HashMap<String, usize>,
    steps: Vec<Step>,
}

impl<'s> Compiler<'s> {
    fn push(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.steps.len() - 1
    }

    fn compile(&mut self, schema: &'s Value) -> Result<usize, String> {
        match schema {
            Value::String(name) => self.compile_named(name),
            Value::Array(branches) => {
                let branches = branches
                    .iter()
                    .map(|branch| self.compile(branch))
                    .collect::<Result<_, _>>()?;
                Ok(self.push(Step::Union(branches)))
            }
            Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or("") {
                kind @ ("record" | "error" | "enum" | "fixed") => {
                    // Reserve the index first: the fields may refer back to it.
                    let index = self.push(Step::Nothing);
                    if let Some(full) = self.full_name(schema) {
                        self.indices.insert(full, index);
                    }
                    self.steps[index] = match kind {
                        "enum" => Step::Varint,
                        "fixed" => {
                            Step::Width(o.get("size").and_then(Value::as_u64).unwrap_or(0) as usize)
                        }
                        _ => Step::Record(
                            o.get("fields")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .map(|field| self.compile(&field["type"]))
                                .collect::<Result<_, _>>()?,
                        ),
                    };
                    Ok(index)
                }
                "array" => {
                    let items = self.compile(&o["items"])?;
                    Ok(self.push(Step::Array(items)))
                }
                "map" => {
                    let values = self.compile(&o["values"])?;
                    Ok(self.push(Step::Map(values)))
                }
                primitive => self.compile_named(primitive),
            },
            _ => Err("a schema that is neither a name, a union nor an object".into()),
        }
    }

    fn compile_named(&mut self, name: &str) -> Result<usize, String> {
        let step = match name {
            "null" => Step::Nothing,
            "boolean" => Step::Width(1),
            "int" | "long" => Step::Varint,
            "float" => Step::Width(4),
            "double" => Step::Width(8),
            "bytes" | "string" => Step::Sized,
            other => {
                let (full, schema) = self
                    .named
                    .get_key_value(other)
                    .or_else(|| {
                        self.named
                            .iter()
                            .find(|(full, _)| full.rsplit('.').next() == Some(other))
                    })
                    .map(|(full, schema)| (full.clone(), *schema))
                    .ok_or_else(|| format!("unknown type `{other}`"))?;
                return match self.indices.get(&full) {
                    Some(&index) => Ok(index),
                    None => self.compile(schema),
                };
            }
        };
        Ok(self.push(step))
    }

    /// The full name `collect_named` filed this named type under.
    fn full_name(&self, schema: &Value) -> Option<String> {
        self.named
            .iter()
            .find(|(_, named)| std::ptr::eq(**named, schema))
            .map(|(full, _)| full.clone())
    }
}

/// Every named type (record, enum, fixed) by full and short name.
fn collect_named<'s>(
    schema: &'s Value,
    namespace: Option<&str>,
    out: &mut HashMap<String, &'s Value>,
) {
    match schema {
        Value::Array(branches) => {
            for b in branches {
                collect_named(b, namespace, out);
            }
        }
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            let space = o.get("namespace").and_then(Value::as_str).or(namespace);
            if matches!(kind, "record" | "error" | "enum" | "fixed") {
                if let Some(name) = o.get("name").and_then(Value::as_str) {
                    let full = match (name.contains('.'), space) {
                        (false, Some(ns)) if !ns.is_empty() => format!("{ns}.{name}"),
                        _ => name.to_string(),
                    };
                    out.insert(full, schema);
                }
            }
            for field in o
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                collect_named(&field["type"], space, out);
            }
            for key in ["items", "values"] {
                if let Some(inner) = o.get(key) {
                    collect_named(inner, space, out);
                }
            }
            if let Some(inner @ (Value::Object(_) | Value::Array(_))) = o.get("type") {
                collect_named(inner, space, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(value: i64) -> Vec<u8> {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let byte = (zigzag & 0x7f) as u8;
            zigzag >>= 7;
            if zigzag == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn named_types_are_resolved_once_including_recursive_ones() {
        // A linked list of points; the second field names the record by its
        // short name, the `next` field by its full one.
        let schema: Value = serde_json::json!({
            "type": "record", "name": "Node", "namespace": "geo",
            "fields": [
                {"name": "at", "type": {"type": "record", "name": "Point",
                    "fields": [{"name": "lat", "type": "double"}]}},
                {"name": "also", "type": "Point"},
                {"name": "labels", "type": {"type": "map", "values": "string"}},
                {"name": "next", "type": ["null", "geo.Node"]}
            ]
        });
        let plan = Plan::compile(&schema).unwrap();
        let mut datum = Vec::new();
        for node in 0..3 {
            datum.extend_from_slice(&[0u8; 16]); // at, also
            datum.extend(long(1)); // one map entry
            datum.extend(long(1));
            datum.push(b'k');
            datum.extend(long(2));
            datum.extend_from_slice(b"vv");
            datum.extend(long(0)); // end of map
            datum.extend(long(if node < 2 { 1 } else { 0 })); // next: a node, then null
        }
        let trailing = datum.len();
        datum.push(0xff);
        let mut at = 0;
        plan.skip(plan.root, &datum, &mut at).unwrap();
        assert_eq!(at, trailing);

        let mut at = 0;
        let err = plan.skip(plan.root, &datum[..20], &mut at).unwrap_err();
        assert!(err.contains("ends"), "{err}");
    }

    #[test]
    fn an_unknown_type_is_refused_when_the_plan_is_made() {
        let schema = serde_json::json!({"type": "record", "name": "R",
            "fields": [{"name": "x", "type": "Missing"}]});
        let err = Plan::compile(&schema).unwrap_err();
        assert!(err.contains("unknown type `Missing`"), "{err}");
    }
}
