//! Additive schema evolution of Avro record schemas: what a table may gain
//! when records arrive written with a newer schema.
//!
//! [`evolve`] compares a writer schema with the table's reader schema.
//! Fields the writer adds, at the top level or inside nested records, are
//! added to the reader schema as optional fields (nullable, default null),
//! appended after the existing ones, so old rows read as null in them. A
//! field whose type changed (Delta readers, BigQuery's among them, take no
//! type change without table features they cannot read) is refused with the
//! field's path and both types; so are changes of a nested record into
//! something else. Fields the writer lacks are no change: Avro resolution
//! reads them as their default or null (a required field without a default
//! fails resolution, and those records become dead letters).

use serde_json::{json, Map, Value};

/// The reader schema grown by the fields `writer` adds (`None`: nothing to
/// add), or why `writer` cannot be taken.
pub fn evolve(reader: &str, writer: &str) -> Result<Option<String>, String> {
    let mut reader: Value =
        serde_json::from_str(reader).map_err(|e| format!("reader schema: {e}"))?;
    let writer: Value = serde_json::from_str(writer).map_err(|e| format!("writer schema: {e}"))?;
    let mut added = Vec::new();
    merge_record(&mut reader, &writer, "", &mut added)?;
    Ok((!added.is_empty()).then(|| reader.to_string()))
}

/// The fields `evolve` would add, as paths (for logs).
pub fn added_fields(reader: &str, writer: &str) -> Vec<String> {
    let (Ok(mut reader), Ok(writer)) = (
        serde_json::from_str::<Value>(reader),
        serde_json::from_str::<Value>(writer),
    ) else {
        return Vec::new();
    };
    let mut added = Vec::new();
    let _ = merge_record(&mut reader, &writer, "", &mut added);
    added
}

fn merge_record(
    reader: &mut Value,
    writer: &Value,
    path: &str,
    added: &mut Vec<String>,
) -> Result<(), String> {
    let writer_fields = writer["fields"].as_array().cloned().unwrap_or_default();
    let Some(reader_fields) = reader.get_mut("fields").and_then(Value::as_array_mut) else {
        return Err(format!("`{path}` is not a record"));
    };
    for field in writer_fields {
        let Some(name) = field["name"].as_str() else {
            continue;
        };
        let here = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        match reader_fields.iter_mut().find(|f| f["name"] == name) {
            Some(existing) => {
                let new = &field["type"];
                let old_is_record = record_of(&existing["type"]).is_some();
                match (old_is_record, record_of(new)) {
                    (true, Some(new_record)) => {
                        let old_record =
                            record_of_mut(&mut existing["type"]).expect("checked above");
                        merge_record(old_record, new_record, &here, added)?;
                    }
                    _ => {
                        let old = &existing["type"];
                        if canonical(old) != canonical(new) {
                            return Err(format!(
                                "field `{here}` changes type: {} -> {}",
                                canonical(old),
                                canonical(new)
                            ));
                        }
                    }
                }
            }
            None => {
                reader_fields.push(optional(field.clone()));
                added.push(here);
            }
        }
    }
    Ok(())
}

/// The record inside a type: itself, or the one non-null member of a nullable union.
fn record_of(ty: &Value) -> Option<&Value> {
    match ty {
        Value::Object(o) if o.get("type") == Some(&json!("record")) => Some(ty),
        Value::Array(members) => {
            let non_null: Vec<&Value> = members.iter().filter(|m| *m != "null").collect();
            match non_null.as_slice() {
                [one] => record_of(one),
                _ => None,
            }
        }
        _ => None,
    }
}

fn record_of_mut(ty: &mut Value) -> Option<&mut Value> {
    match ty {
        Value::Object(o) if o.get("type") == Some(&json!("record")) => Some(ty),
        Value::Array(members) => members
            .iter_mut()
            .find(|m| *m != "null")
            .and_then(record_of_mut),
        _ => None,
    }
}

/// A new field as the table takes it: nullable, default null.
fn optional(mut field: Value) -> Value {
    let ty = field["type"].clone();
    let nullable = match &ty {
        Value::Array(members) => members.first() == Some(&json!("null")),
        other => other == "null",
    };
    if !nullable {
        let members = match ty {
            Value::Array(mut members) => {
                members.retain(|m| m != "null");
                members.insert(0, json!("null"));
                Value::Array(members)
            }
            other => json!(["null", other]),
        };
        field["type"] = members;
    }
    field["default"] = Value::Null;
    field
}

/// A type without documentation, defaults and aliases, for comparison.
fn canonical(ty: &Value) -> String {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "doc" | "default" | "aliases" | "order"))
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect::<Map<_, _>>(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    strip(ty).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"string"},
        {"name":"rating","type":["null","int"],"default":null},
        {"name":"at","type":{"type":"record","name":"P","fields":[{"name":"lat","type":"double"}]}}]}"#;

    #[test]
    fn added_fields_become_optional_top_level_and_nested() {
        let v2 = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string","doc":"changed docs are no change"},
            {"name":"rating","type":["null","int"],"default":null},
            {"name":"at","type":{"type":"record","name":"P","fields":[{"name":"lat","type":"double"},{"name":"zone","type":"string"}]}},
            {"name":"tip","type":"double"}]}"#;
        let grown = evolve(V1, v2).unwrap().expect("fields added");
        let grown: Value = serde_json::from_str(&grown).unwrap();
        assert_eq!(grown["fields"][3]["name"], "tip");
        assert_eq!(grown["fields"][3]["type"], json!(["null", "double"]));
        assert_eq!(grown["fields"][3]["default"], Value::Null);
        assert_eq!(grown["fields"][2]["type"]["fields"][1]["name"], "zone");
        assert_eq!(added_fields(V1, v2), ["at.zone", "tip"]);
        assert_eq!(
            evolve(V1, V1).unwrap(),
            None,
            "the same schema adds nothing"
        );
    }

    #[test]
    fn type_changes_are_refused_with_the_path() {
        let v3 = V1.replace(r#"["null","int"]"#, r#"["null","string"]"#);
        let error = evolve(V1, &v3).unwrap_err();
        assert!(
            error.contains("`rating`") && error.contains("int") && error.contains("string"),
            "{error}"
        );
        let nested = V1.replace(
            r#"{"name":"lat","type":"double"}"#,
            r#"{"name":"lat","type":"float"}"#,
        );
        assert!(evolve(V1, &nested).unwrap_err().contains("`at.lat`"));
    }
}
