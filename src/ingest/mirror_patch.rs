//! Partial updates in a mirror merge: MongoDB updates that carry only the
//! fields they change (`cdc_patched` names the columns; see
//! `decode::debezium_patch`).
//!
//! A key with a partial update in the batch cannot be collapsed to its last
//! mutation alone: its mutations are folded, in log order, onto the row
//! the table holds. Only those after the row's applied position count
//! (replays change nothing, as for whole images). A whole image (insert,
//! update with `after`, snapshot read) replaces the row, a delete removes
//! it, and a partial update takes the columns it names, and every column
//! that is not a declared image column (the change columns, the key), from
//! its own row and the rest from the row before it. A partial update of a
//! key that has no row (not in the table, nor inserted earlier in the
//! batch) has nothing to apply to: it is counted as unmatched.
//!
//! The folded rows are gathered column by column from the held rows and
//! the batch's rows (Arrow `interleave`), so each column keeps its type.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

use super::mirror::{applies, order_at, string_column, KeyColumns, RowKey};
use crate::decode::debezium::{ORDER_COLUMN, PATCHED_COLUMN};

/// Where a column of a folded row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The row the table holds (its index in the file's batch).
    Held(usize),
    /// A mutation of the batch (its index).
    Mutation(usize),
}

/// A key's mutations folded onto a row.
#[derive(Debug, PartialEq)]
pub(super) struct Fold {
    /// The sources of the resulting row's columns; `None` when it ends deleted or absent.
    pub row: Option<Vec<Source>>,
    /// Partial updates that found no row to apply to.
    pub unmatched: u64,
    /// The last mutation is a delete.
    pub deleted: bool,
}

/// The batch's mutations, for keys with a partial update.
pub(super) struct Patches {
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    orders: Option<StringArray>,
    ops: Option<StringArray>,
    patched: StringArray,
    /// Per column of `schema`: a declared image column a partial update may leave unset.
    patchable: Vec<bool>,
    /// All mutations of each key with a partial update, in log order.
    chains: HashMap<RowKey, Vec<u32>>,
}

impl Patches {
    /// The patches of `batch`, `None` when it has no partial update.
    pub fn of(batch: &RecordBatch, keys: &KeyColumns, image: &HashSet<String>) -> Option<Self> {
        let patched = string_column(batch, PATCHED_COLUMN)?;
        if patched.null_count() == patched.len() {
            return None;
        }
        let orders = string_column(batch, ORDER_COLUMN);
        let mut chains: HashMap<RowKey, Vec<u32>> = HashMap::new();
        for row in 0..batch.num_rows() {
            if let Some(key) = keys.key_at(row) {
                chains.entry(key).or_default().push(row as u32);
            }
        }
        chains.retain(|_, rows| rows.iter().any(|&r| patched.is_valid(r as usize)));
        for rows in chains.values_mut() {
            // Log order; arrival order when a mutation has no position.
            if rows
                .iter()
                .all(|&r| order_at(orders.as_ref(), r as usize).is_some())
            {
                rows.sort_by_key(|&r| order_at(orders.as_ref(), r as usize).map(str::to_owned));
            }
        }
        let schema = batch.schema();
        Some(Self {
            patchable: schema
                .fields()
                .iter()
                .map(|f| image.contains(f.name()))
                .collect(),
            columns: batch.columns().to_vec(),
            ops: string_column(batch, "cdc_op"),
            schema,
            orders,
            patched,
            chains,
        })
    }

    /// The mutations of `key`, when it has a partial update.
    pub fn chain(&self, key: &RowKey) -> Option<&[u32]> {
        self.chains.get(key).map(Vec::as_slice)
    }

    /// The mutations of `chain` after a row applied at `held`.
    pub fn after(&self, chain: &[u32], held: Option<&str>) -> Vec<u32> {
        chain
            .iter()
            .copied()
            .filter(|&m| applies(held, order_at(self.orders.as_ref(), m as usize)))
            .collect()
    }

    /// `chain` folded onto the held row `start` (none: the key has no row).
    pub fn fold(&self, start: Option<usize>, chain: &[u32]) -> Fold {
        let width = self.columns.len();
        let mut row = start.map(|r| vec![Source::Held(r); width]);
        let (mut unmatched, mut deleted) = (0, false);
        for &m in chain {
            let m = m as usize;
            let delete = self.ops.as_ref().is_some_and(|o| o.value(m) == "d");
            if delete {
                deleted = true;
                row = None;
                continue;
            }
            deleted = false;
            if self.patched.is_valid(m) {
                let Some(sources) = row.as_mut() else {
                    unmatched += 1;
                    continue;
                };
                let named: HashSet<&str> = self.patched.value(m).split(',').collect();
                for (i, field) in self.schema.fields().iter().enumerate() {
                    if !self.patchable[i] || named.contains(field.name().as_str()) {
                        sources[i] = Source::Mutation(m);
                    }
                }
            } else {
                row = Some(vec![Source::Mutation(m); width]);
            }
        }
        Fold {
            row,
            unmatched,
            deleted,
        }
    }

    /// The folded `rows` as a batch in the mutations' schema, held rows
    /// taken from `held` (a file's rows, widened to that schema). Each is a
    /// whole image now: its `cdc_patched` is null.
    pub fn build(
        &self,
        held: Option<&RecordBatch>,
        rows: &[Vec<Source>],
    ) -> Result<RecordBatch, ArrowError> {
        let held = match held {
            Some(batch) => aligned(batch, &self.schema)?,
            None => self.columns.clone(),
        };
        let patched = self.schema.index_of(PATCHED_COLUMN).ok();
        let columns = (0..self.columns.len())
            .map(|i| {
                if Some(i) == patched {
                    return Ok(arrow::array::new_null_array(
                        self.schema.field(i).data_type(),
                        rows.len(),
                    ));
                }
                let indices: Vec<(usize, usize)> = rows
                    .iter()
                    .map(|sources| match sources[i] {
                        Source::Held(r) => (0, r),
                        Source::Mutation(m) => (1, m),
                    })
                    .collect();
                arrow::compute::interleave(&[held[i].as_ref(), self.columns[i].as_ref()], &indices)
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// `batch`'s columns in `schema`'s order and types: widened where the
/// schema grew (a column it lacks is null, a struct gains its new fields),
/// cast where only the type's details differ.
fn aligned(batch: &RecordBatch, schema: &SchemaRef) -> Result<Vec<ArrayRef>, ArrowError> {
    let widened;
    let batch = if crate::table::schema::adds_fields(batch.schema().fields(), schema.fields()) {
        widened = crate::table::schema::widen(batch, schema)?;
        &widened
    } else {
        batch
    };
    schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => arrow::compute::cast(column, field.data_type()),
            None => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::erase::keys::KeyKind;

    /// Mutations of key 1: insert (a, x), patch first_name = b, patch
    /// email = null, in positions 1..3, arriving out of order.
    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("cdc_op", DataType::Utf8, false),
            Field::new(PATCHED_COLUMN, DataType::Utf8, true),
            Field::new(ORDER_COLUMN, DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
            Field::new("first_name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
        ]));
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        RecordBatch::try_new(
            schema,
            vec![
                text(vec![Some("u"), Some("c"), Some("u")]),
                text(vec![Some("first_name"), None, Some("email")]),
                text(vec![Some("2"), Some("1"), Some("3")]),
                Arc::new(Int64Array::from(vec![1, 1, 1])),
                text(vec![Some("b"), Some("a"), None]),
                text(vec![None, Some("x"), None]),
            ],
        )
        .unwrap()
    }

    fn patches(batch: &RecordBatch) -> (Patches, RowKey) {
        let keys = KeyColumns::of(batch, &[("id".to_string(), KeyKind::Int)]).unwrap();
        let image = HashSet::from(["first_name".to_string(), "email".to_string()]);
        let key = keys.key_at(0).unwrap();
        (Patches::of(batch, &keys, &image).unwrap(), key)
    }

    #[test]
    fn an_insert_and_its_patches_fold_in_log_order() {
        let batch = batch();
        let (patches, key) = patches(&batch);
        let chain = patches.chain(&key).unwrap();
        assert_eq!(chain, [1, 0, 2]);
        let fold = patches.fold(None, chain);
        assert_eq!(fold.unmatched, 0);
        let row = patches.build(None, &[fold.row.unwrap()]).unwrap();
        assert_eq!(row.column(4).as_string::<i32>().value(0), "b");
        assert!(row.column(5).is_null(0), "the second patch removed email");
        assert!(
            row.column(1).is_null(0),
            "a folded row is whole: no cdc_patched"
        );
        assert_eq!(row.column(2).as_string::<i32>().value(0), "3");
    }

    #[test]
    fn patches_apply_to_the_held_row_after_its_position_only() {
        let batch = batch();
        let (patches, key) = patches(&batch);
        let chain = patches.chain(&key).unwrap();
        // The table holds the row as of position 2: only the email patch applies.
        let after = patches.after(chain, Some("2"));
        assert_eq!(after, [2]);
        let held =
            arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(vec![0]))
                .unwrap();
        let fold = patches.fold(Some(0), &after);
        let sources = fold.row.unwrap();
        assert_eq!(sources[4], Source::Held(0));
        assert_eq!(sources[5], Source::Mutation(2));
        let row = patches.build(Some(&held), &[sources]).unwrap();
        assert_eq!(row.column(4).as_string::<i32>().value(0), "b");
        assert!(row.column(5).is_null(0));
    }

    #[test]
    fn a_patch_without_a_row_is_unmatched() {
        let batch = batch();
        let (patches, _) = patches(&batch);
        let fold = patches.fold(None, &[0, 2]);
        assert_eq!(
            fold,
            Fold {
                row: None,
                unmatched: 2,
                deleted: false,
            }
        );
    }
}
