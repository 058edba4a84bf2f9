//! JSON tables with `evolve = "add_columns"`: a top-level field the table
//! does not declare becomes a nullable column of the type its first
//! non-null value suggests (string, long, double, boolean, or a struct of
//! those), committed with the first rows that carry it (see
//! `table::commit::commit_with_schema`). Names that are not letters,
//! digits and underscores (what Spark and BigQuery read without column
//! mapping) are not added, only counted. Later values of another type are
//! coerced like any declared column, or reject their record. After a
//! restart the columns added before are taken from the table
//! ([`EvolvingJson::adopt`]), not inferred again.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::json::{Decoded, DecoderError, JsonDecoder};
use super::json_keys::{top_level_keys, value_of};
use crate::config::{ColumnConfig, EpochUnit, TableConfig};
use crate::source::Record;

/// A JSON decoder whose columns grow with the records.
#[derive(Debug, Clone)]
pub struct EvolvingJson {
    current: Arc<RwLock<(TableConfig, Arc<JsonDecoder>)>>,
}

impl EvolvingJson {
    /// Starts from the declared columns of `table`.
    pub fn new(table: &TableConfig) -> Result<Self, DecoderError> {
        let decoder = JsonDecoder::new(table)?;
        Ok(Self {
            current: Arc::new(RwLock::new((table.clone(), Arc::new(decoder)))),
        })
    }

    /// Takes the columns an earlier run added from the table's schema, so
    /// a restarted pipeline decodes them with the types they have (a field
    /// first seen as `1.5` stays a double when the next run's first value
    /// is `2`). Returns the names adopted.
    pub fn adopt(&self, table_schema: &arrow::datatypes::Schema) -> Vec<String> {
        let mut current = self.current.write().expect("json schema lock");
        let mut table = current.0.clone();
        let mut adopted = Vec::new();
        for field in table_schema.fields() {
            if current
                .1
                .table_schema()
                .field_with_name(field.name())
                .is_ok()
            {
                continue;
            }
            let Some(type_name) = config_type(field.data_type()) else {
                continue;
            };
            adopted.push(field.name().clone());
            table.columns.push(ColumnConfig {
                name: field.name().clone(),
                field: None,
                type_name,
                nullable: true,
                epoch_unit: EpochUnit::Auto,
            });
        }
        if adopted.is_empty() {
            return adopted;
        }
        match JsonDecoder::new(&table) {
            Ok(grown) => *current = (table, Arc::new(grown)),
            Err(error) => {
                tracing::warn!(table = %table.name, %error, "cannot take the added columns from the table");
                adopted.clear();
            }
        }
        adopted
    }

    fn decoder(&self) -> Arc<JsonDecoder> {
        self.current.read().expect("json schema lock").1.clone()
    }

    /// The table's current Arrow schema.
    pub fn table_schema(&self) -> arrow::datatypes::SchemaRef {
        self.decoder().table_schema()
    }

    /// Adds the fields of `records` the table lacks (the first record with
    /// a non-null value decides each type).
    pub fn prepare(&self, records: &[Record]) {
        let decoder = self.decoder();
        let mut added: Vec<ColumnConfig> = Vec::new();
        for record in records {
            for key in top_level_keys(&record.payload) {
                if decoder.knows(&key)
                    || !plain_name(&key)
                    || decoder.knows_ignoring_case(&key)
                    || added.iter().any(|c| c.name.eq_ignore_ascii_case(&key))
                {
                    continue;
                }
                let Some(type_name) = value_of(&record.payload, &key).and_then(|v| infer(&v))
                else {
                    continue;
                };
                added.push(ColumnConfig {
                    name: key,
                    field: None,
                    type_name,
                    nullable: true,
                    epoch_unit: EpochUnit::Auto,
                });
            }
        }
        if added.is_empty() {
            return;
        }
        let mut current = self.current.write().expect("json schema lock");
        let mut table = current.0.clone();
        let names: Vec<String> = added
            .iter()
            .map(|c| format!("{}: {}", c.name, c.type_name))
            .collect();
        table.columns.extend(added);
        match JsonDecoder::new(&table) {
            Ok(grown) => {
                tracing::info!(table = %table.name, added = ?names,
                    "records carry new fields: the table gains them with its next commit");
                *current = (table, Arc::new(grown));
            }
            Err(error) => tracing::warn!(table = %table.name, %error, "cannot add the new fields"),
        }
    }

    /// Decodes with the current columns.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        self.decoder().decode(records)
    }
}

/// A name a column can take (see [`crate::table::names`]); fields with
/// other names stay unknown and are counted, never added.
fn plain_name(name: &str) -> bool {
    crate::table::names::name_problem(name).is_none()
}

/// The config type of a column this module could have added.
fn config_type(ty: &arrow::datatypes::DataType) -> Option<String> {
    use arrow::datatypes::DataType;
    match ty {
        DataType::Utf8 => Some("string".into()),
        DataType::Int64 => Some("long".into()),
        DataType::Float64 => Some("double".into()),
        DataType::Boolean => Some("boolean".into()),
        DataType::Struct(fields) => {
            let members: Option<Vec<String>> = fields
                .iter()
                .map(|f| Some(format!("{}:{}", f.name(), config_type(f.data_type())?)))
                .collect();
            Some(format!("struct<{}>", members?.join(",")))
        }
        _ => None,
    }
}

/// The column type a JSON value suggests.
fn infer(value: &Value) -> Option<String> {
    match value {
        Value::Null | Value::Array(_) => None,
        Value::Bool(_) => Some("boolean".into()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some("long".into()),
        Value::Number(_) => Some("double".into()),
        Value::String(_) => Some("string".into()),
        Value::Object(fields) => {
            let members: Vec<String> = fields
                .iter()
                .filter(|(k, _)| plain_name(k))
                .filter_map(|(k, v)| Some(format!("{k}:{}", infer(v)?)))
                .collect();
            (!members.is_empty()).then(|| format!("struct<{}>", members.join(",")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_are_inferred_from_values() {
        assert_eq!(infer(&json!(3)).as_deref(), Some("long"));
        assert_eq!(infer(&json!(3.5)).as_deref(), Some("double"));
        assert_eq!(infer(&json!("x")).as_deref(), Some("string"));
        assert_eq!(infer(&json!(true)).as_deref(), Some("boolean"));
        assert_eq!(
            infer(&json!({"a": 1, "b": {"c": "x"}, "d": null})).as_deref(),
            Some("struct<a:long,b:struct<c:string>>")
        );
        assert_eq!(infer(&json!(null)), None);
        assert!(plain_name("tip_2") && !plain_name("2x") && !plain_name("a-b"));
        assert!(!plain_name("_TABLE_SUFFIX"));
        let nested = arrow::datatypes::DataType::Struct(
            vec![arrow::datatypes::Field::new(
                "rating",
                arrow::datatypes::DataType::Float64,
                true,
            )]
            .into(),
        );
        assert_eq!(
            config_type(&nested).as_deref(),
            Some("struct<rating:double>")
        );
        assert_eq!(config_type(&arrow::datatypes::DataType::Date32), None);
    }
}
