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

use serde_json::Value;

/// The magic bytes of an object container file.
const MAGIC: &[u8; 4] = b"Obj\x01";

/// An object container file, read block by block.
pub struct Container<R> {
    /// The writer schema (JSON text).
    pub schema: String,
    codec: String,
    sync: [u8; 16],
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
        Ok(Self {
            schema,
            codec,
            sync,
            reader,
        })
    }

    /// The datums of the next block, or `None` at the end of the file.
    pub fn next_block(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
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
        let data = self.decompress(data)?;
        let schema: Value = serde_json::from_str(&self.schema).map_err(|e| e.to_string())?;
        let mut walker = Walker::new(&schema);
        let mut datums = Vec::with_capacity(count as usize);
        let mut at = 0;
        for n in 0..count {
            let start = at;
            walker
                .skip(&schema, &data, &mut at)
                .map_err(|e| format!("datum {n} of a block: {e}"))?;
            datums.push(data[start..at].to_vec());
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

/// Walks Avro binary along a schema, resolving named types.
struct Walker<'s> {
    named: HashMap<String, &'s Value>,
}

impl<'s> Walker<'s> {
    fn new(schema: &'s Value) -> Self {
        let mut named = HashMap::new();
        collect_named(schema, None, &mut named);
        Self { named }
    }

    fn skip(&mut self, schema: &'s Value, data: &[u8], at: &mut usize) -> Result<(), String> {
        match schema {
            Value::String(name) => self.skip_named(name, data, at),
            Value::Array(branches) => {
                let index = zigzag_long(data, at)?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {index} out of range"))?;
                self.skip(branch, data, at)
            }
            Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or("") {
                "record" | "error" => {
                    for field in o
                        .get("fields")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        self.skip(&field["type"], data, at)?;
                    }
                    Ok(())
                }
                "enum" => zigzag_long(data, at).map(|_| ()),
                "fixed" => {
                    let size = o.get("size").and_then(Value::as_u64).unwrap_or(0) as usize;
                    take(data, at, size).map(|_| ())
                }
                "array" => self.skip_blocks(data, at, |w, d, a| w.skip(&o["items"], d, a)),
                "map" => self.skip_blocks(data, at, |w, d, a| {
                    let len = zigzag_long(d, a)? as usize;
                    take(d, a, len)?;
                    w.skip(&o["values"], d, a)
                }),
                primitive => self.skip_named(primitive, data, at),
            },
            _ => Err("a schema that is neither a name, a union nor an object".into()),
        }
    }

    fn skip_blocks(
        &mut self,
        data: &[u8],
        at: &mut usize,
        mut item: impl FnMut(&mut Self, &[u8], &mut usize) -> Result<(), String>,
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
                item(self, data, at)?;
            }
        }
    }

    fn skip_named(&mut self, name: &str, data: &[u8], at: &mut usize) -> Result<(), String> {
        match name {
            "null" => Ok(()),
            "boolean" => take(data, at, 1).map(|_| ()),
            "int" | "long" => zigzag_long(data, at).map(|_| ()),
            "float" => take(data, at, 4).map(|_| ()),
            "double" => take(data, at, 8).map(|_| ()),
            "bytes" | "string" => {
                let len = zigzag_long(data, at)?;
                let len = usize::try_from(len).map_err(|_| "a negative length".to_string())?;
                take(data, at, len).map(|_| ())
            }
            other => {
                let schema = self
                    .named
                    .get(other)
                    .or_else(|| {
                        self.named
                            .iter()
                            .find(|(full, _)| full.rsplit('.').next() == Some(other))
                            .map(|(_, s)| s)
                    })
                    .copied()
                    .ok_or_else(|| format!("unknown type `{other}`"))?;
                self.skip(schema, data, at)
            }
        }
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
