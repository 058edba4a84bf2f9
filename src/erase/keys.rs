//! Subject keys: `column=value` pairs, typed as the table's column, and the
//! sets of keys to erase from one table.
//!
//! A [`KeySet`] answers the three questions erasure asks, cheapest first:
//! can a file hold any key, from its min/max statistics ([`KeySet::in_range`]);
//! can a row group hold one, from its Parquet bloom filter
//! ([`KeySet::bloom_may_contain`]); and which rows hold one
//! ([`KeySet::matches`]).

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::{Array, BooleanArray, Int64Array, StringArray};
use arrow::datatypes::DataType;
use deltalake::parquet::basic::Type as PhysicalType;
use deltalake::parquet::bloom_filter::Sbbf;

use super::EraseError;

/// One subject key as filed: a column name and the value as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectKey {
    /// The key column, e.g. `user_id`.
    pub column: String,
    /// The value, as text (integers in decimal).
    pub value: String,
}

impl SubjectKey {
    /// Parses `column=value`; both sides must be non-empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (column, value) = text
            .split_once('=')
            .ok_or_else(|| format!("key `{text}` is not of the form column=value"))?;
        let (column, value) = (column.trim(), value.trim());
        if column.is_empty() {
            return Err(format!("key `{text}` names no column"));
        }
        if value.is_empty() {
            return Err(format!("key `{text}` has an empty value"));
        }
        Ok(Self {
            column: column.to_string(),
            value: value.to_string(),
        })
    }
}

impl std::fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.column, self.value)
    }
}

/// Reads a keys file: one `column=value` per line; blank lines and lines
/// starting with `#` are skipped. A malformed line is an error naming it.
pub fn read_keys_file(path: &Path) -> Result<Vec<SubjectKey>, EraseError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EraseError::Invalid(format!("cannot read keys file {}: {e}", path.display()))
    })?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = SubjectKey::parse(line)
            .map_err(|e| EraseError::Invalid(format!("{}:{}: {e}", path.display(), index + 1)))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(EraseError::Invalid(format!(
            "keys file {} holds no keys",
            path.display()
        )));
    }
    Ok(keys)
}

/// Where a row's key is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchSource {
    /// The key column of a data table.
    Column,
    /// The raw payload text of a dead-letter table (the record did not decode).
    Payload,
}

/// The dead-letter table's column holding the raw record as text.
pub const PAYLOAD_COLUMN: &str = "payload_text";

/// How a key column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Any integer column.
    Int,
    /// Any string column.
    Str,
}

impl KeyKind {
    /// The kind of a column type, if keys of it can be erased.
    pub fn of(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(KeyKind::Int),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyKind::Str),
            DataType::Dictionary(_, value) => Self::of(value),
            _ => None,
        }
    }
}

/// A key value typed as its column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(String),
}

impl KeyValue {
    /// Types `text` as a value of a `kind` column.
    pub fn parse(text: &str, kind: KeyKind) -> Result<Self, String> {
        match kind {
            KeyKind::Str => Ok(KeyValue::Str(text.to_string())),
            KeyKind::Int => text
                .parse::<i64>()
                .map(KeyValue::Int)
                .map_err(|_| format!("`{text}` is not an integer")),
        }
    }

    /// The value as text (as filed).
    pub fn text(&self) -> String {
        match self {
            KeyValue::Int(v) => v.to_string(),
            KeyValue::Str(v) => v.clone(),
        }
    }
}

/// The keys of one column to erase from one table.
#[derive(Debug, Clone)]
pub struct KeySet {
    column: String,
    kind: KeyKind,
    ints: BTreeSet<i64>,
    strs: BTreeSet<String>,
}

impl KeySet {
    /// An empty set for `column`.
    pub fn new(column: impl Into<String>, kind: KeyKind) -> Self {
        Self {
            column: column.into(),
            kind,
            ints: BTreeSet::new(),
            strs: BTreeSet::new(),
        }
    }

    /// The column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The column's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Adds a key (of this set's kind).
    pub fn insert(&mut self, value: KeyValue) {
        match value {
            KeyValue::Int(v) => {
                self.ints.insert(v);
            }
            KeyValue::Str(v) => {
                self.strs.insert(v);
            }
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.ints.len() + self.strs.len()
    }

    /// No keys at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if `value` is one of the keys.
    pub fn contains(&self, value: &KeyValue) -> bool {
        match value {
            KeyValue::Int(v) => self.ints.contains(v),
            KeyValue::Str(v) => self.strs.contains(v),
        }
    }

    /// Every key.
    pub fn values(&self) -> Vec<KeyValue> {
        self.ints
            .iter()
            .map(|v| KeyValue::Int(*v))
            .chain(self.strs.iter().map(|v| KeyValue::Str(v.clone())))
            .collect()
    }

    /// The keys a file with these min/max statistics (Delta `stats` JSON
    /// values; `None` when not collected) may hold. String maxima may be
    /// truncated prefixes, so a key that starts with the maximum stays in.
    pub fn in_range(
        &self,
        min: Option<&serde_json::Value>,
        max: Option<&serde_json::Value>,
    ) -> Vec<KeyValue> {
        match self.kind {
            KeyKind::Int => {
                let low = min.and_then(|v| v.as_i64()).unwrap_or(i64::MIN);
                let high = max.and_then(|v| v.as_i64()).unwrap_or(i64::MAX);
                if low > high {
                    return Vec::new();
                }
                self.ints
                    .range(low..=high)
                    .map(|v| KeyValue::Int(*v))
                    .collect()
            }
            KeyKind::Str => {
                let low = min.and_then(|v| v.as_str()).unwrap_or("");
                let high = max.and_then(|v| v.as_str());
                self.strs
                    .range(low.to_string()..)
                    .take_while(|k| high.is_none_or(|h| k.as_str() <= h || k.starts_with(h)))
                    .map(|k| KeyValue::Str(k.clone()))
                    .collect()
            }
        }
    }

    /// False only if the bloom filter proves that none of `keys` is in the
    /// row group (`physical` is the column's Parquet type).
    pub fn bloom_may_contain(filter: &Sbbf, physical: PhysicalType, keys: &[KeyValue]) -> bool {
        keys.iter().any(|key| match (key, physical) {
            (KeyValue::Str(v), _) => filter.check(v.as_str()),
            (KeyValue::Int(v), PhysicalType::INT32) => {
                i32::try_from(*v).is_ok_and(|v| filter.check(&v))
            }
            (KeyValue::Int(v), _) => filter.check(v),
        })
    }

    /// A mask of the rows of `column` that hold one of the keys.
    pub fn matches(&self, column: &dyn Array) -> Result<BooleanArray, arrow::error::ArrowError> {
        match self.kind {
            KeyKind::Int => {
                let cast = arrow::compute::cast(column, &DataType::Int64)?;
                let values = cast
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64");
                Ok(values
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| self.ints.contains(&v))))
                    .collect())
            }
            KeyKind::Str => {
                let cast = arrow::compute::cast(column, &DataType::Utf8)?;
                let values = cast
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8");
                Ok(values
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| self.strs.contains(v))))
                    .collect())
            }
        }
    }

    /// The column a `source` match reads.
    pub fn read_column(&self, source: MatchSource) -> &str {
        match source {
            MatchSource::Column => &self.column,
            MatchSource::Payload => PAYLOAD_COLUMN,
        }
    }

    /// The rows of `batch` that hold a key, with the key each holds.
    ///
    /// With [`MatchSource::Payload`] a row matches when its raw text holds
    /// the key as a JSON token: a string key quoted (`"u-42"`), an integer
    /// key as a whole number in a record that names the key column. Dead
    /// letters are malformed, so this errs on the side of erasing.
    pub fn matching_rows(
        &self,
        batch: &arrow::array::RecordBatch,
        source: MatchSource,
    ) -> Result<Vec<(usize, KeyValue)>, arrow::error::ArrowError> {
        let Some(column) = crate::table::schema::column_at(batch, self.read_column(source)) else {
            return Ok(Vec::new());
        };
        match source {
            MatchSource::Column => {
                let mask = self.matches(column.as_ref())?;
                Ok(mask
                    .iter()
                    .enumerate()
                    .filter(|(_, hit)| *hit == Some(true))
                    .filter_map(|(row, _)| Some((row, self.value_at(column.as_ref(), row)?)))
                    .collect())
            }
            MatchSource::Payload => {
                let cast = arrow::compute::cast(&column, &DataType::Utf8)?;
                let texts = cast.as_any().downcast_ref::<StringArray>().expect("Utf8");
                Ok(texts
                    .iter()
                    .enumerate()
                    .filter_map(|(row, text)| Some((row, self.payload_match(text?)?)))
                    .collect())
            }
        }
    }

    /// The key raw record `text` holds as a JSON token, if any (the rule of
    /// [`KeySet::matching_rows`] for dead letters).
    pub fn payload_match(&self, text: &str) -> Option<KeyValue> {
        // A nested key (`customer.id`) is named by its last part.
        let leaf = self.column.rsplit('.').next().unwrap_or(&self.column);
        let named = format!("\"{leaf}\"");
        self.values()
            .into_iter()
            .find(|key| payload_holds(text, &named, key))
    }

    /// The key held by row `row` of `column` (a row [`KeySet::matches`] selected).
    pub fn value_at(&self, column: &dyn Array, row: usize) -> Option<KeyValue> {
        let one = column.slice(row, 1);
        match self.kind {
            KeyKind::Int => {
                let cast = arrow::compute::cast(&one, &DataType::Int64).ok()?;
                let values = cast.as_any().downcast_ref::<Int64Array>()?;
                values.iter().next().flatten().map(KeyValue::Int)
            }
            KeyKind::Str => {
                let cast = arrow::compute::cast(&one, &DataType::Utf8).ok()?;
                let values = cast.as_any().downcast_ref::<StringArray>()?;
                values
                    .iter()
                    .next()
                    .flatten()
                    .map(|v| KeyValue::Str(v.to_string()))
            }
        }
    }
}

/// True when raw record text holds `key` as a JSON token (see [`KeySet::matching_rows`]).
fn payload_holds(text: &str, named_column: &str, key: &KeyValue) -> bool {
    match key {
        KeyValue::Str(value) => {
            let token = serde_json::to_string(value).expect("strings serialize");
            text.contains(&token)
        }
        KeyValue::Int(value) => {
            if !text.contains(named_column) {
                return false;
            }
            let digits = value.to_string();
            let bytes = text.as_bytes();
            text.match_indices(&digits).any(|(at, _)| {
                let before = at.checked_sub(1).map(|i| bytes[i]);
                let after = bytes.get(at + digits.len()).copied();
                !before.is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
                    && !after
                        .is_some_and(|b| b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E')
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(keys: &[&str]) -> KeySet {
        let mut set = KeySet::new("user_id", KeyKind::Str);
        for k in keys {
            set.insert(KeyValue::Str(k.to_string()));
        }
        set
    }

    #[test]
    fn parses_keys_and_rejects_empty_parts() {
        let key = SubjectKey::parse(" user_id = u-42 ").unwrap();
        assert_eq!(
            (key.column.as_str(), key.value.as_str()),
            ("user_id", "u-42")
        );
        assert!(SubjectKey::parse("user_id=")
            .unwrap_err()
            .contains("empty value"));
        assert!(SubjectKey::parse("=7").unwrap_err().contains("no column"));
        assert!(SubjectKey::parse("user_id")
            .unwrap_err()
            .contains("column=value"));
        assert!(KeyValue::parse("4x", KeyKind::Int)
            .unwrap_err()
            .contains("integer"));
    }

    #[test]
    fn string_ranges_allow_truncated_maxima() {
        let set = strings(&["a", "m", "mango-extra-long", "z"]);
        // min/max "l".."m": "m" is in range, and so is "mango-extra-long"
        // because "m" may be a truncated prefix of the real maximum.
        let found = set.in_range(Some(&json!("l")), Some(&json!("m")));
        assert_eq!(
            found,
            vec![
                KeyValue::Str("m".into()),
                KeyValue::Str("mango-extra-long".into())
            ]
        );
        assert!(set
            .in_range(Some(&json!("n")), Some(&json!("y")))
            .is_empty());
        assert_eq!(set.in_range(None, None).len(), 4);
    }

    #[test]
    fn payload_tokens_match_whole_values_only() {
        let named = "\"user_id\"";
        let key = KeyValue::Str("u-4".into());
        assert!(payload_holds(
            r#"{"user_id":"u-4","amount":"x"#,
            named,
            &key
        ));
        assert!(!payload_holds(r#"{"user_id":"u-42"}"#, named, &key));
        let key = KeyValue::Int(42);
        assert!(payload_holds(r#"{"user_id": 42, "a": oops"#, named, &key));
        assert!(!payload_holds(r#"{"user_id": 421}"#, named, &key));
        assert!(!payload_holds(r#"{"user_id": 1, "x": -42}"#, named, &key));
        assert!(!payload_holds(r#"{"other": 42}"#, named, &key));
    }

    #[test]
    fn integer_ranges_and_row_matches() {
        let mut set = KeySet::new("id", KeyKind::Int);
        set.insert(KeyValue::Int(7));
        set.insert(KeyValue::Int(42));
        assert_eq!(
            set.in_range(Some(&json!(10)), Some(&json!(50))),
            vec![KeyValue::Int(42)]
        );
        let column = arrow::array::Int32Array::from(vec![Some(1), Some(42), None, Some(7)]);
        let mask = set.matches(&column).unwrap();
        assert_eq!(
            mask.iter().map(|v| v.unwrap()).collect::<Vec<_>>(),
            vec![false, true, false, true]
        );
        assert_eq!(set.value_at(&column, 3), Some(KeyValue::Int(7)));
    }
}
