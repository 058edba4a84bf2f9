//! Column names every reader of the lake accepts without column mapping.
//!
//! sluice's tables are written without Delta column mapping (reader 1 /
//! writer 2, which BigQuery and every Spark read), so each column name, at
//! every depth, must be a name BigQuery and Spark take as it is:
//!
//! - letters, digits and underscores, not starting with a digit;
//! - at most 300 characters;
//! - none of BigQuery's reserved prefixes (`_TABLE_`, `_FILE_`,
//!   `_PARTITION`, `_ROW_TIMESTAMP`, `__ROOT__`, `_COLON_`, any case);
//! - unique among its siblings ignoring case (Spark and BigQuery compare
//!   names without case, so `userId` and `userid` are one column to them).
//!
//! A schema that breaks a rule is refused when the table is typed, with
//! every offending name listed by its path. A JSON column maps a field whose
//! name does not fit with `field` (`{ name = "event_time", field =
//! "@timestamp", ... }`).

use arrow::datatypes::{DataType, Fields};

/// The longest name BigQuery takes.
const MAX_LEN: usize = 300;

/// Name prefixes BigQuery reserves for its own columns.
const RESERVED_PREFIXES: [&str; 6] = [
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLON_",
];

/// Why `name` cannot be a column name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Some("use letters, digits and underscores, not starting with a digit".into());
    }
    if name.len() > MAX_LEN {
        return Some(format!("longer than {MAX_LEN} characters"));
    }
    let upper = name.to_ascii_uppercase();
    RESERVED_PREFIXES
        .iter()
        .find(|prefix| upper.starts_with(*prefix))
        .map(|prefix| format!("BigQuery reserves the prefix `{prefix}`"))
}

/// Every name in `fields` (at any depth) that a reader would refuse, as
/// `path: reason`, in schema order.
pub fn problems(fields: &Fields) -> Vec<String> {
    let mut out = Vec::new();
    walk(fields, "", &mut out);
    out
}

fn walk(fields: &Fields, prefix: &str, out: &mut Vec<String>) {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for field in fields.iter() {
        let path = format!("{prefix}{}", field.name());
        if let Some(reason) = name_problem(field.name()) {
            out.push(format!("`{path}`: {reason}"));
        }
        if let Some(first) = seen.insert(field.name().to_ascii_lowercase(), field.name()) {
            out.push(format!(
                "`{path}`: the same name as `{prefix}{first}` to readers that ignore case"
            ));
        }
        nested(field.data_type(), &format!("{path}."), out);
    }
}

fn nested(ty: &DataType, prefix: &str, out: &mut Vec<String>) {
    match ty {
        DataType::Struct(fields) => walk(fields, prefix, out),
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            nested(item.data_type(), prefix, out)
        }
        DataType::Map(entry, _) => {
            if let DataType::Struct(kv) = entry.data_type() {
                for field in kv.iter() {
                    nested(field.data_type(), prefix, out);
                }
            }
        }
        _ => {}
    }
}

/// `Err` listing every offending name of `fields`, for a table being typed.
pub fn check(fields: &Fields) -> Result<(), String> {
    let found = problems(fields);
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} column name{} Spark and BigQuery cannot read without column mapping: {}",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        found.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn plain_names_pass_and_others_are_listed_by_path() {
        let inner = Fields::from(vec![
            Field::new("zone", DataType::Utf8, true),
            Field::new("Zone", DataType::Utf8, true),
            Field::new("first-name", DataType::Utf8, true),
        ]);
        let fields = Fields::from(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("9lives", DataType::Int64, true),
            Field::new("_PARTITIONTIME", DataType::Int64, true),
            Field::new(
                "stops",
                DataType::List(Arc::new(Field::new("item", DataType::Struct(inner), true))),
                true,
            ),
        ]);
        let found = problems(&fields);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("`9lives`: use letters"), "{found:?}");
        assert!(found[1].contains("`_PARTITIONTIME`: BigQuery reserves the prefix `_PARTITION`"));
        assert!(found[2].contains("`stops.Zone`: the same name as `stops.zone`"));
        assert!(found[3].starts_with("`stops.first-name`"));
        let message = check(&fields).unwrap_err();
        assert!(message.starts_with("4 column names Spark and BigQuery cannot read"));
        assert!(check(&Fields::from(vec![Field::new(
            "ok_1",
            DataType::Utf8,
            true
        )]))
        .is_ok());
    }
}
