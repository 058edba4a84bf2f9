//! Column types as written in the config (`"string"`, `"timestamp"`,
//! `"array<struct<sku:string,qty:int>>"`, `"decimal(10,2)"`, `"map<string,long>"`)
//! and their Arrow form.
//!
//! The names follow Spark/Delta SQL so a schema reads the same in sluice's
//! config and in `DESCRIBE TABLE`. Every `timestamp` becomes Arrow
//! `Timestamp(Microsecond, "UTC")`, which Delta stores as `timestamp` and
//! Parquet as INT64 microseconds adjusted to UTC (invariant 4: no
//! `timestamp_ntz`, no nanoseconds).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// The field at a dotted path (`customer.id`: field `id` of struct column
/// `customer`); a path without dots is a top-level column.
pub fn field_at<'a>(fields: &'a Fields, path: &str) -> Option<&'a arrow::datatypes::FieldRef> {
    let mut parts = path.split('.');
    let mut field = fields.find(parts.next()?)?.1;
    for part in parts {
        let DataType::Struct(children) = field.data_type() else {
            return None;
        };
        field = children.find(part)?.1;
    }
    Some(field)
}

/// The column at a dotted path of `batch`, through struct columns; a row
/// whose enclosing struct is null reads as null.
pub fn column_at(batch: &arrow::array::RecordBatch, path: &str) -> Option<arrow::array::ArrayRef> {
    use arrow::array::{Array, AsArray};
    let mut parts = path.split('.');
    let mut column = batch.column_by_name(parts.next()?)?.clone();
    for part in parts {
        let DataType::Struct(_) = column.data_type() else {
            return None;
        };
        let strukt = column.as_struct();
        let child = strukt.column_by_name(part)?.clone();
        let nulls = arrow::buffer::NullBuffer::union(strukt.nulls(), child.nulls());
        let data = child.to_data().into_builder().nulls(nulls).build().ok()?;
        column = arrow::array::make_array(data);
    }
    Some(column)
}

/// The Arrow type of every `timestamp` column sluice writes.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `batch` in `schema`, a schema that only adds nullable fields to the
/// batch's (at any depth): the added columns are null.
pub fn widen(
    batch: &arrow::array::RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let source = arrow::array::StructArray::from(batch.clone());
    let widened = widen_struct(&source, schema.fields())?;
    arrow::array::RecordBatch::from(widened).with_schema(schema.clone())
}

fn widen_array(
    array: &arrow::array::ArrayRef,
    target: &DataType,
) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray};
    match target {
        DataType::Struct(fields) if array.data_type() != target => {
            Ok(Arc::new(widen_struct(array.as_struct(), fields)?))
        }
        DataType::List(item) if array.data_type() != target => {
            let list = array.as_list::<i32>();
            Ok(Arc::new(arrow::array::ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                widen_array(list.values(), item.data_type())?,
                list.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

fn widen_struct(
    source: &arrow::array::StructArray,
    fields: &Fields,
) -> Result<arrow::array::StructArray, arrow::error::ArrowError> {
    use arrow::array::Array;
    let columns = fields
        .iter()
        .map(|field| match source.column_by_name(field.name()) {
            Some(column) => widen_array(column, field.data_type()),
            None => Ok(arrow::array::new_null_array(
                field.data_type(),
                source.len(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    arrow::array::StructArray::try_new(fields.clone(), columns, source.nulls().cloned())
}

/// The union of two schemas that differ only by added nullable fields (at
/// any depth): `a`'s fields in order, then what only `b` has.
pub fn merge_fields(a: &Fields, b: &Fields) -> Fields {
    let mut out: Vec<Field> = Vec::with_capacity(a.len().max(b.len()));
    for field in a.iter() {
        let merged = match (
            field.data_type(),
            b.find(field.name()).map(|(_, f)| f.data_type()),
        ) {
            (DataType::Struct(x), Some(DataType::Struct(y))) => field
                .as_ref()
                .clone()
                .with_data_type(DataType::Struct(merge_fields(x, y))),
            _ => field.as_ref().clone(),
        };
        out.push(merged);
    }
    for field in b.iter() {
        if a.find(field.name()).is_none() {
            out.push(field.as_ref().clone());
        }
    }
    Fields::from(out)
}

/// Whether `other` has a field (by name, at any depth of structs) that
/// `base` lacks.
pub fn adds_fields(base: &Fields, other: &Fields) -> bool {
    other.iter().any(|field| match base.find(field.name()) {
        None => true,
        Some((_, existing)) => match (existing.data_type(), field.data_type()) {
            (DataType::Struct(x), DataType::Struct(y)) => adds_fields(x, y),
            _ => false,
        },
    })
}

/// A field both schemas have with types of different kinds (a long in one,
/// a double in the other), as a path; nested structs are compared field by
/// field.
pub fn type_conflict(a: &Fields, b: &Fields) -> Option<String> {
    b.iter().find_map(|field| {
        let (_, existing) = a.find(field.name())?;
        match (existing.data_type(), field.data_type()) {
            (DataType::Struct(x), DataType::Struct(y)) => {
                type_conflict(x, y).map(|inner| format!("{}.{inner}", field.name()))
            }
            (x, y) if std::mem::discriminant(x) != std::mem::discriminant(y) => {
                Some(format!("{} ({x} in the table, {y} here)", field.name()))
            }
            _ => None,
        }
    })
}

/// Parses a Spark/Delta SQL type name into an Arrow type.
///
/// ```
/// use sluice::table::schema::parse_type;
/// use arrow::datatypes::DataType;
/// assert_eq!(parse_type("long").unwrap(), DataType::Int64);
/// assert!(parse_type("array<struct<sku:string,qty:int>>").is_ok());
/// assert!(parse_type("strnig").unwrap_err().contains("strnig"));
/// ```
pub fn parse_type(text: &str) -> Result<DataType, String> {
    let mut parser = TypeParser { text, pos: 0 };
    let ty = parser.parse()?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(format!(
            "unexpected `{}` at position {} in type `{text}`",
            &text[parser.pos..],
            parser.pos
        ));
    }
    Ok(ty)
}

struct TypeParser<'a> {
    text: &'a str,
    pos: usize,
}

impl TypeParser<'_> {
    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn ident(&mut self) -> String {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        rest[..len].to_string()
    }

    fn expect(&mut self, ch: char) -> Result<(), String> {
        self.skip_ws();
        if self.text[self.pos..].starts_with(ch) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected `{ch}` at position {} in type `{}`",
                self.pos, self.text
            ))
        }
    }

    fn peek(&mut self, ch: char) -> bool {
        self.skip_ws();
        self.text[self.pos..].starts_with(ch)
    }

    fn number(&mut self) -> Result<u8, String> {
        let word = self.ident();
        word.parse()
            .map_err(|_| format!("expected a number, found `{word}` in type `{}`", self.text))
    }

    fn parse(&mut self) -> Result<DataType, String> {
        let name = self.ident().to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => DataType::Utf8,
            "long" | "bigint" => DataType::Int64,
            "int" | "integer" => DataType::Int32,
            "short" | "smallint" => DataType::Int16,
            "byte" | "tinyint" => DataType::Int8,
            "double" => DataType::Float64,
            "float" | "real" => DataType::Float32,
            "boolean" | "bool" => DataType::Boolean,
            "binary" => DataType::Binary,
            "date" => DataType::Date32,
            "timestamp" => timestamp_type(),
            "decimal" => {
                self.expect('(')?;
                let precision = self.number()?;
                self.expect(',')?;
                let scale = self.number()?;
                self.expect(')')?;
                if precision == 0 || precision > 38 || scale > precision {
                    return Err(format!("decimal({precision},{scale}) is out of range"));
                }
                DataType::Decimal128(precision, scale as i8)
            }
            "array" => {
                self.expect('<')?;
                let item = self.parse()?;
                self.expect('>')?;
                DataType::List(Arc::new(Field::new("element", item, true)))
            }
            "map" => {
                self.expect('<')?;
                let key = self.parse()?;
                self.expect(',')?;
                let value = self.parse()?;
                self.expect('>')?;
                let entries = Fields::from(vec![
                    Field::new("key", key, false),
                    Field::new("value", value, true),
                ]);
                DataType::Map(
                    Arc::new(Field::new("key_value", DataType::Struct(entries), false)),
                    false,
                )
            }
            "struct" => {
                self.expect('<')?;
                let mut fields = Vec::new();
                loop {
                    let field_name = self.ident();
                    if field_name.is_empty() {
                        return Err(format!("expected a field name in type `{}`", self.text));
                    }
                    self.expect(':')?;
                    fields.push(Field::new(field_name, self.parse()?, true));
                    if self.peek(',') {
                        self.expect(',')?;
                    } else {
                        break;
                    }
                }
                self.expect('>')?;
                DataType::Struct(Fields::from(fields))
            }
            "" => return Err(format!("missing type name in `{}`", self.text)),
            other => {
                return Err(format!(
                    "unknown type `{other}` (expected string, long, int, short, byte, double, \
                     float, boolean, binary, date, timestamp, decimal(p,s), array<..>, \
                     map<..,..> or struct<..>)"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_conflicts_are_found_by_kind_at_any_depth() {
        let a = Fields::from(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(
                "s",
                DataType::Struct(Fields::from(vec![Field::new("x", DataType::Utf8, true)])),
                true,
            ),
        ]);
        let same = Fields::from(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("new", DataType::Float64, true),
        ]);
        assert_eq!(type_conflict(&a, &same), None);
        let top = Fields::from(vec![Field::new("n", DataType::Float64, true)]);
        assert!(type_conflict(&a, &top).unwrap().starts_with("n ("));
        let nested = Fields::from(vec![Field::new(
            "s",
            DataType::Struct(Fields::from(vec![Field::new("x", DataType::Int64, true)])),
            true,
        )]);
        assert!(type_conflict(&a, &nested).unwrap().starts_with("s.x ("));
        assert!(adds_fields(&a, &same) && !adds_fields(&a, &top));
    }

    #[test]
    fn parses_scalars_and_nested_types() {
        assert_eq!(parse_type("timestamp").unwrap(), timestamp_type());
        assert_eq!(parse_type(" BIGINT ").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("decimal(10, 2)").unwrap(),
            DataType::Decimal128(10, 2)
        );
        let DataType::Struct(fields) = parse_type("struct<lat:double, lon:double>").unwrap() else {
            panic!("not a struct")
        };
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].name(), "lon");
        assert!(matches!(
            parse_type("map<string,array<long>>").unwrap(),
            DataType::Map(_, false)
        ));
    }

    #[test]
    fn rejects_bad_types_with_position() {
        assert!(parse_type("array<string").unwrap_err().contains("`>`"));
        assert!(parse_type("decimal(40,2)")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_type("string junk").unwrap_err().contains("junk"));
    }
}
