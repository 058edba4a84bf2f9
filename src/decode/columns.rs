//! Columns every decoder appends after the record's own: derived columns
//! (`date`, `hour` of a timestamp column) and source metadata columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field};

use crate::config::{MetadataColumn, TableConfig, Transform};
use crate::source::Record;
use crate::table::schema::timestamp_type;

/// The derived and metadata columns of a table.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// (index of the source timestamp column among the data columns, transform).
    derived: Vec<(usize, Transform)>,
    metadata: Vec<MetadataColumn>,
}

impl Extras {
    /// The extras of `table` over its data columns `data` (named and typed);
    /// their fields go after the data fields. A derived column must come
    /// from a timestamp data column.
    pub fn new(table: &TableConfig, data: &[Field]) -> Result<(Self, Vec<Field>), String> {
        let mut derived = Vec::new();
        let mut fields = Vec::new();
        for d in &table.derived {
            let from = data
                .iter()
                .position(|f| f.name() == &d.from)
                .ok_or_else(|| format!("derived column `{}`: no column `{}`", d.name, d.from))?;
            if !matches!(data[from].data_type(), DataType::Timestamp(..)) {
                return Err(format!(
                    "derived column `{}`: `{}` is {}, not a timestamp",
                    d.name,
                    d.from,
                    data[from].data_type()
                ));
            }
            let ty = match d.transform {
                Transform::Date => DataType::Date32,
                Transform::Hour => DataType::Int32,
            };
            fields.push(Field::new(&d.name, ty, true));
            derived.push((from, d.transform));
        }
        for m in &table.metadata_columns {
            let ty = match m {
                MetadataColumn::SourceStream | MetadataColumn::SourcePartition => DataType::Utf8,
                MetadataColumn::SourcePosition => DataType::Int64,
                MetadataColumn::SourceTime | MetadataColumn::IngestTime => timestamp_type(),
            };
            fields.push(Field::new(m.column_name(), ty, true));
        }
        Ok((
            Self {
                derived,
                metadata: table.metadata_columns.clone(),
            },
            fields,
        ))
    }

    /// Appends the extra columns to the data `columns` of the rows decoded
    /// from `records[kept[row]]`.
    pub fn append(&self, columns: &mut Vec<ArrayRef>, records: &[Record], kept: &[usize]) {
        let ingest_micros = chrono::Utc::now().timestamp_micros();
        for &(from, transform) in &self.derived {
            let source = columns[from]
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("derived from a timestamp in microseconds");
            let column: ArrayRef = match transform {
                Transform::Date => Arc::new(
                    source
                        .iter()
                        .map(|v| v.map(|us| us.div_euclid(86_400_000_000) as i32))
                        .collect::<Date32Array>(),
                ),
                Transform::Hour => Arc::new(
                    source
                        .iter()
                        .map(|v| v.map(|us| us.div_euclid(3_600_000_000).rem_euclid(24) as i32))
                        .collect::<Int32Array>(),
                ),
            };
            columns.push(column);
        }
        for column in &self.metadata {
            let rows = kept.iter().map(|&i| &records[i]);
            let array: ArrayRef = match column {
                MetadataColumn::SourceStream => Arc::new(
                    rows.map(|r| Some(r.partition.stream.as_str()))
                        .collect::<StringArray>(),
                ),
                MetadataColumn::SourcePartition => Arc::new(
                    rows.map(|r| Some(r.partition.partition.as_str()))
                        .collect::<StringArray>(),
                ),
                MetadataColumn::SourcePosition => {
                    Arc::new(rows.map(|r| Some(r.position)).collect::<Int64Array>())
                }
                MetadataColumn::SourceTime => Arc::new(
                    rows.map(|r| r.timestamp_ms.map(|ms| ms * 1000))
                        .collect::<TimestampMicrosecondArray>()
                        .with_timezone("UTC"),
                ),
                MetadataColumn::IngestTime => Arc::new(
                    rows.map(|_| Some(ingest_micros))
                        .collect::<TimestampMicrosecondArray>()
                        .with_timezone("UTC"),
                ),
            };
            columns.push(array);
        }
    }
}
