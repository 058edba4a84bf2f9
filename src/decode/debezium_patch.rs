//! MongoDB's partial updates in Debezium envelopes: an update event whose
//! `after` is null because the connector captured only what changed.
//!
//! Two shapes exist:
//! - `patch`, the oplog entry of older connectors (extended-JSON text):
//!   `{"$v": 1, "$set": {...}, "$unset": {...}}`, or oplog v2's
//!   `{"$v": 2, "diff": {"u": {...}, "i": {...}, "d": {...}}}`. A `patch`
//!   without update operators is a whole replacement document.
//! - `updateDescription`, change streams without the full document:
//!   `updatedFields` (extended-JSON text or an object), `removedFields`,
//!   `truncatedArrays`.
//!
//! The document key comes from `filter` (older connectors) or the record
//! key. Only whole top-level fields can be applied to a row: a change
//! inside a declared column (`$set` of `address.city`, a v2 sub-diff, an
//! array truncation) is refused with the reason; one inside a field the
//! table does not declare is dropped like any undeclared field.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::debezium::plain_json;

/// What an update event without `after` carries instead.
#[derive(Debug, PartialEq)]
pub(crate) enum Update {
    /// A whole document (a replacement in `patch`).
    Full(Map<String, Value>),
    /// The fields set and removed.
    Partial(Partial),
}

/// A partial update's fields.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Partial {
    /// Fields set, with their new values (plain JSON).
    set: Map<String, Value>,
    /// Fields removed.
    removed: Vec<String>,
    /// Top-level fields changed inside (a v2 sub-diff, an array truncation), with how.
    inside: Vec<(String, &'static str)>,
}

/// The update `envelope` carries in `patch` or `updateDescription`, if any.
pub(crate) fn update(envelope: &Map<String, Value>) -> Result<Option<Update>, String> {
    if let Some(patch) = document(envelope.get("patch"), "patch")? {
        return from_patch(patch).map(Some);
    }
    let Some(description) = envelope.get("updateDescription").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let description = description
        .as_object()
        .ok_or("`updateDescription` is not an object")?;
    let mut partial = Partial::default();
    if let Some(Value::Array(truncated)) = description.get("truncatedArrays") {
        for entry in truncated {
            let field = entry
                .get("field")
                .and_then(Value::as_str)
                .ok_or("`updateDescription.truncatedArrays` holds an entry without `field`")?;
            partial
                .inside
                .push((field.to_string(), "truncates the array"));
        }
    }
    if let Some(fields) = document(
        description.get("updatedFields"),
        "updateDescription.updatedFields",
    )? {
        partial.set = plain_json(Value::Object(fields));
    }
    match description.get("removedFields") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for name in names {
                let name = name
                    .as_str()
                    .ok_or("`updateDescription.removedFields` holds a non-text name")?;
                partial.removed.push(name.to_string());
            }
        }
        Some(_) => return Err("`updateDescription.removedFields` is not an array".into()),
    }
    Ok(Some(Update::Partial(partial)))
}

/// The document key of an update from the oplog (`filter`), if present.
pub(crate) fn filter(envelope: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
    Ok(document(envelope.get("filter"), "filter")?.map(|d| plain_json(Value::Object(d))))
}

/// A field holding a document, as an object or extended-JSON text.
pub(crate) fn document(
    value: Option<&Value>,
    name: &str,
) -> Result<Option<Map<String, Value>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => Ok(Some(o)),
            _ => Err(format!(
                "`{name}` is text but not an extended-JSON document"
            )),
        },
        Some(_) => Err(format!(
            "`{name}` is neither an object nor extended-JSON text"
        )),
    }
}

/// The update an oplog `patch` describes.
fn from_patch(patch: Map<String, Value>) -> Result<Update, String> {
    let operators =
        patch.keys().any(|k| k.starts_with('$') && k != "$v") || patch.contains_key("diff");
    if !operators {
        let mut document = patch;
        document.remove("$v");
        return Ok(Update::Full(plain_json(Value::Object(document))));
    }
    let mut partial = Partial::default();
    for (operator, fields) in patch {
        let fields = || {
            fields
                .as_object()
                .cloned()
                .ok_or_else(|| format!("`patch`: `{operator}` is not a document"))
        };
        match operator.as_str() {
            "$v" => {}
            "$set" => partial.set.extend(plain_json(Value::Object(fields()?))),
            "$unset" => partial.removed.extend(fields()?.into_iter().map(|(k, _)| k)),
            "diff" => {
                for (section, entries) in fields()? {
                    let entries = entries
                        .as_object()
                        .cloned()
                        .ok_or_else(|| format!("`patch`: `diff.{section}` is not a document"))?;
                    match section.as_str() {
                        "u" | "i" => partial.set.extend(plain_json(Value::Object(entries))),
                        "d" => partial.removed.extend(entries.into_iter().map(|(k, _)| k)),
                        nested if nested.starts_with('s') => partial
                            .inside
                            .push((nested[1..].to_string(), "changes fields inside")),
                        other => return Err(format!("`patch`: unknown diff section `{other}`")),
                    }
                }
            }
            other => {
                return Err(format!(
                    "`patch`: the operator `{other}` is not supported ($set, $unset and oplog v2 diffs are)"
                ))
            }
        }
    }
    Ok(Update::Partial(partial))
}

impl Partial {
    /// The row of the update: the document key, the fields set and the
    /// fields removed (null), with the declared columns it sets or removes
    /// (named through `columns`, field to column). A change inside a
    /// declared column is refused; one inside another field is dropped.
    pub(crate) fn row(
        self,
        key: Map<String, Value>,
        columns: &HashMap<String, String>,
    ) -> Result<(Map<String, Value>, Vec<String>), String> {
        let declared = |field: &str| {
            let top = field.split('.').next().unwrap_or(field);
            columns.get(top).cloned()
        };
        for (field, how) in &self.inside {
            let top = field.split('.').next().unwrap_or(field);
            if let Some(column) = declared(top) {
                return Err(format!(
                    "the partial update {how} `{top}` (column `{column}`): only whole columns can be applied"
                ));
            }
        }
        let mut row = key;
        let mut named = Vec::new();
        let fields = self
            .set
            .into_iter()
            .chain(self.removed.into_iter().map(|f| (f, Value::Null)));
        for (field, value) in fields {
            if field.contains('.') {
                match declared(&field) {
                    Some(column) => {
                        return Err(format!(
                            "the partial update changes `{field}`, inside the column `{column}`: only whole columns can be applied"
                        ))
                    }
                    None => continue,
                }
            }
            if let Some(column) = columns.get(&field) {
                if !named.contains(column) {
                    named.push(column.clone());
                }
            }
            row.insert(field, value);
        }
        Ok((row, named))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    fn columns() -> HashMap<String, String> {
        [
            ("_id", "id"),
            ("first_name", "first_name"),
            ("email", "email"),
            ("address", "address"),
            ("tags", "tags"),
        ]
        .into_iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect()
    }

    #[test]
    fn an_oplog_set_and_unset_name_their_columns() {
        let e = envelope(
            r#"{"op": "u", "patch": "{\"$v\": 1, \"$set\": {\"first_name\": \"Anne Marie\", \"visits\": {\"$numberLong\": \"3\"}}, \"$unset\": {\"email\": true}}",
                "filter": "{\"_id\": {\"$oid\": \"5d28\"}}"}"#,
        );
        let Some(Update::Partial(partial)) = update(&e).unwrap() else {
            panic!("a partial update");
        };
        let key = filter(&e).unwrap().unwrap();
        let (row, named) = partial.row(key, &columns()).unwrap();
        assert_eq!(row["_id"], "5d28");
        assert_eq!(row["first_name"], "Anne Marie");
        assert_eq!(row["visits"], 3);
        assert!(row["email"].is_null());
        // `visits` is not a declared column: not named.
        assert_eq!(named, ["first_name", "email"]);
    }

    #[test]
    fn an_oplog_v2_diff_and_an_update_description_read_alike() {
        let v2 = envelope(
            r#"{"patch": {"$v": 2, "diff": {"u": {"first_name": "B"}, "d": {"email": false}}}}"#,
        );
        let streams = envelope(
            r#"{"updateDescription": {"updatedFields": "{\"first_name\": \"B\"}", "removedFields": ["email"], "truncatedArrays": []}}"#,
        );
        assert_eq!(update(&v2).unwrap(), update(&streams).unwrap());
    }

    #[test]
    fn a_patch_without_operators_is_a_whole_document() {
        let e = envelope(r#"{"patch": "{\"_id\": 7, \"first_name\": \"C\"}"}"#);
        let Some(Update::Full(doc)) = update(&e).unwrap() else {
            panic!("a full image");
        };
        assert_eq!(doc["first_name"], "C");
    }

    fn refusal(text: &str) -> String {
        let Some(Update::Partial(partial)) = update(&envelope(text)).unwrap() else {
            panic!("a partial update");
        };
        partial.row(Map::new(), &columns()).unwrap_err()
    }

    #[test]
    fn changes_inside_declared_columns_are_refused_with_the_reason() {
        let error = refusal(r#"{"patch": {"$set": {"address.city": "Paris"}}}"#);
        assert!(
            error.contains("`address.city`, inside the column `address`"),
            "{error}"
        );
        let error = refusal(r#"{"patch": {"$v": 2, "diff": {"saddress": {"u": {"city": "P"}}}}}"#);
        assert!(error.contains("changes fields inside `address`"), "{error}");
        let error = refusal(
            r#"{"updateDescription": {"updatedFields": {}, "truncatedArrays": [{"field": "tags", "newSize": 1}]}}"#,
        );
        assert!(error.contains("truncates the array `tags`"), "{error}");
        let inc = envelope(r#"{"patch": {"$inc": {"visits": 1}}}"#);
        assert!(update(&inc).unwrap_err().contains("`$inc`"));
    }

    #[test]
    fn changes_inside_undeclared_fields_are_dropped() {
        for text in [
            r#"{"patch": {"$v": 2, "diff": {"u": {"email": "e"}, "smeta": {"u": {"x": 1}}}}}"#,
            r#"{"patch": {"$set": {"meta.x": 1, "email": "e"}}}"#,
            r#"{"updateDescription": {"updatedFields": {"email": "e"}, "truncatedArrays": [{"field": "meta", "newSize": 0}]}}"#,
        ] {
            let Some(Update::Partial(partial)) = update(&envelope(text)).unwrap() else {
                panic!("a partial update");
            };
            let (row, named) = partial.row(Map::new(), &columns()).unwrap();
            assert_eq!(named, ["email"], "{text}");
            assert!(row.keys().all(|k| k == "email"), "{text}: {row:?}");
        }
    }

    #[test]
    fn an_update_with_neither_is_none() {
        assert_eq!(update(&envelope(r#"{"patch": null}"#)).unwrap(), None);
    }
}
