//! Z-order sort keys.
//!
//! Each Z-order column is mapped to an order-preserving 64-bit value (signed
//! integers and dates with the sign bit flipped, floats by their total-order
//! bits, strings by their first 8 bytes after the prefix shared by the whole
//! input, booleans as 0/1; null sorts first). The top bits of the columns are
//! interleaved into a 128-bit Morton code, and the full values of the columns
//! (Arrow's row format) follow as a tie-breaker, so with one column the order
//! is exactly the column's order and with several it is a Z-curve. The key is
//! one binary value per row, compared bytewise.

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::row::{RowConverter, SortField};

/// Builds Z-order keys for batches of one input.
pub struct KeyBuilder {
    columns: Vec<String>,
    /// Per column: bytes to skip at the start of string values.
    string_prefix: Vec<usize>,
    rows: RowConverter,
}

/// Whether a column type can be a Z-order key.
pub fn supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Date32
            | DataType::Timestamp(_, _)
    )
}

impl KeyBuilder {
    /// A builder for `columns` of `types`; `shared_prefix` is the byte prefix
    /// every string value of that column shares (from file stats), or 0.
    pub fn new(
        columns: Vec<String>,
        types: &[DataType],
        shared_prefix: Vec<usize>,
    ) -> Result<Self, arrow::error::ArrowError> {
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        Ok(Self {
            columns,
            string_prefix: shared_prefix,
            rows: RowConverter::new(fields)?,
        })
    }

    /// One key per row of `batch`.
    pub fn keys(&self, batch: &RecordBatch) -> Result<ArrayRef, arrow::error::ArrowError> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| {
                batch.column_by_name(c).cloned().ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no column `{c}`"))
                })
            })
            .collect::<Result<_, _>>()?;
        let normalized: Vec<Vec<u64>> = arrays
            .iter()
            .zip(&self.string_prefix)
            .map(|(a, prefix)| normalize(a, *prefix))
            .collect::<Result<_, _>>()?;
        let rows = self.rows.convert_columns(&arrays)?;
        let mut builder = BinaryBuilder::with_capacity(batch.num_rows(), batch.num_rows() * 32);
        let mut buffer = Vec::with_capacity(64);
        for row in 0..batch.num_rows() {
            buffer.clear();
            let values: Vec<u64> = normalized.iter().map(|col| col[row]).collect();
            buffer.extend_from_slice(&interleave(&values).to_be_bytes());
            buffer.extend_from_slice(rows.row(row).as_ref());
            builder.append_value(&buffer);
        }
        Ok(std::sync::Arc::new(builder.finish()))
    }
}

/// Interleaves the top bits of each value into a 128-bit Morton code.
pub fn interleave(values: &[u64]) -> u128 {
    let k = values.len().max(1);
    let bits_per = (128 / k).min(64);
    let mut out: u128 = 0;
    let mut position = 127i32;
    for bit in 0..bits_per {
        for value in values {
            let b = (value >> (63 - bit)) & 1;
            out |= (b as u128) << position;
            position -= 1;
        }
    }
    out
}

fn normalize(array: &ArrayRef, prefix: usize) -> Result<Vec<u64>, arrow::error::ArrowError> {
    const FLIP: u64 = 1 << 63;
    let valid = |i: usize| array.is_valid(i);
    let out: Vec<u64> = match array.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Date32
        | DataType::Timestamp(_, _) => {
            let wide = arrow::compute::cast(array, &DataType::Int64)?;
            let values = wide.as_primitive::<Int64Type>();
            (0..array.len())
                .map(|i| {
                    if valid(i) {
                        (values.value(i) as u64) ^ FLIP
                    } else {
                        0
                    }
                })
                .collect()
        }
        DataType::Float32 | DataType::Float64 => {
            let wide = arrow::compute::cast(array, &DataType::Float64)?;
            let values = wide.as_primitive::<Float64Type>();
            (0..array.len())
                .map(|i| {
                    if !valid(i) {
                        return 0;
                    }
                    let bits = values.value(i).to_bits();
                    if bits & FLIP != 0 {
                        !bits
                    } else {
                        bits ^ FLIP
                    }
                })
                .collect()
        }
        DataType::Boolean => {
            let values: &BooleanArray = array.as_boolean();
            (0..array.len())
                .map(|i| match (valid(i), valid(i) && values.value(i)) {
                    (false, _) => 0,
                    (true, false) => 1 << 62,
                    (true, true) => 2 << 62,
                })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = arrow::compute::cast(array, &DataType::Utf8)?;
            let values = strings.as_string::<i32>();
            (0..array.len())
                .map(|i| {
                    if !valid(i) {
                        return 0;
                    }
                    let bytes = values.value(i).as_bytes();
                    let rest = bytes.get(prefix..).unwrap_or(&[]);
                    let mut word = [0u8; 8];
                    let take = rest.len().min(8);
                    word[..take].copy_from_slice(&rest[..take]);
                    // Valid values sort after nulls (0).
                    u64::from_be_bytes(word).saturating_add(1)
                })
                .collect()
        }
        other => {
            return Err(arrow::error::ArrowError::NotYetImplemented(format!(
                "Z-order on {other}"
            )))
        }
    };
    Ok(out)
}

/// The byte prefix two strings share.
pub fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn interleaving_alternates_bits_of_each_column() {
        // 0b10.. and 0b01..: interleaved top bits are 1,0,0,1.
        let key = interleave(&[1 << 63, 1 << 62]);
        assert_eq!(key >> 124, 0b1001);
        assert_eq!(interleave(&[u64::MAX]) >> 64, u64::MAX as u128);
    }

    #[test]
    fn keys_follow_the_column_order_for_one_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let users = vec![
            "u-0000201",
            "u-0000003",
            "u-0000200",
            "u-0000020",
            "u-1000000",
        ];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(users.clone())),
                Arc::new(Int64Array::from(vec![5, -3, 0, i64::MIN, 7])),
            ],
        )
        .unwrap();
        let builder = KeyBuilder::new(vec!["user_id".into()], &[DataType::Utf8], vec![2]).unwrap();
        let keys = builder.keys(&batch).unwrap();
        let keys = keys.as_binary::<i32>();
        let mut order: Vec<usize> = (0..users.len()).collect();
        order.sort_by_key(|&i| keys.value(i).to_vec());
        let sorted: Vec<&str> = order.iter().map(|&i| users[i]).collect();
        let mut expected = users.clone();
        expected.sort();
        assert_eq!(sorted, expected);

        let ints = KeyBuilder::new(vec!["n".into()], &[DataType::Int64], vec![0]).unwrap();
        let keys = ints.keys(&batch).unwrap();
        let keys = keys.as_binary::<i32>();
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by_key(|&i| keys.value(i).to_vec());
        assert_eq!(
            order,
            vec![3, 1, 2, 0, 4],
            "signed integers in numeric order"
        );
    }

    #[test]
    fn common_prefix_counts_shared_bytes() {
        assert_eq!(common_prefix("u-0001", "u-0999"), 3);
        assert_eq!(common_prefix("", "x"), 0);
    }
}
