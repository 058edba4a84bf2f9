//! Parquet footers: column types a reader maps badly, whatever the Delta
//! schema says (files written by other tools can disagree with it).

use std::sync::Arc;

use deltalake::parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use deltalake::ObjectStore;
use object_store::path::Path;

use super::{Severity, Target};

/// One column of one file with a type a reader maps badly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The column's path in the file (`a.b`).
    pub column: String,
    /// What kind.
    pub kind: Kind,
}

/// Kinds of footer problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Timestamps in nanoseconds.
    NanosTimestamp,
    /// Timestamps not adjusted to UTC (local date-times).
    LocalTimestamp,
    /// Unsigned 64-bit integers.
    Unsigned64,
    /// Unsigned 8, 16 or 32-bit integers.
    Unsigned,
    /// Legacy INT96 timestamps.
    Int96,
}

impl Kind {
    /// A stable name.
    pub fn code(self) -> &'static str {
        match self {
            Kind::NanosTimestamp => "nanosecond-timestamp",
            Kind::LocalTimestamp => "local-timestamp",
            Kind::Unsigned64 => "unsigned-64",
            Kind::Unsigned => "unsigned",
            Kind::Int96 => "int96",
        }
    }

    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::NanosTimestamp => "timestamps in nanoseconds (Delta's are microseconds; Spark refuses the file, BigQuery misreads it)",
            Kind::LocalTimestamp => "timestamps not adjusted to UTC (local date-times; BigQuery reads them as DATETIME)",
            Kind::Unsigned64 => "unsigned 64-bit integers (no reader's `long` holds values above 2^63)",
            Kind::Unsigned => "unsigned integers (read as the next wider signed type)",
            Kind::Int96 => "legacy INT96 timestamps (BigQuery reads INT64 microseconds)",
        }
    }

    /// The readers it matters to, and how much.
    pub fn readers(self) -> &'static [(Target, Severity)] {
        match self {
            Kind::NanosTimestamp => &[
                (Target::Bigquery, Severity::Error),
                (Target::Spark, Severity::Error),
            ],
            Kind::LocalTimestamp => &[(Target::Bigquery, Severity::Warning)],
            Kind::Unsigned64 => &[
                (Target::Bigquery, Severity::Error),
                (Target::Spark, Severity::Error),
            ],
            Kind::Unsigned => &[
                (Target::Bigquery, Severity::Warning),
                (Target::Spark, Severity::Warning),
            ],
            Kind::Int96 => &[(Target::Bigquery, Severity::Warning)],
        }
    }
}

/// The problems of the file at `location` (`size` bytes), from its footer.
pub async fn problems(
    store: Arc<dyn ObjectStore>,
    location: &Path,
    size: u64,
) -> Result<Vec<Problem>, String> {
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader =
        deltalake::parquet::arrow::async_reader::ParquetObjectReader::new(store, location.clone())
            .with_file_size(size);
    let builder =
        deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| e.to_string())?;
    let schema = builder.metadata().file_metadata().schema_descr_ptr();
    let mut out = Vec::new();
    for column in schema.columns() {
        let kind = match (
            column.physical_type(),
            column.logical_type_ref(),
            column.converted_type(),
        ) {
            (PhysicalType::INT96, _, _) => Some(Kind::Int96),
            (_, Some(LogicalType::Timestamp(t)), _) if t.unit == TimeUnit::NANOS => {
                Some(Kind::NanosTimestamp)
            }
            (_, Some(LogicalType::Timestamp(t)), _) if !t.is_adjusted_to_u_t_c => {
                Some(Kind::LocalTimestamp)
            }
            (_, Some(LogicalType::Integer(i)), _) if !i.is_signed && i.bit_width == 64 => {
                Some(Kind::Unsigned64)
            }
            (_, Some(LogicalType::Integer(i)), _) if !i.is_signed => Some(Kind::Unsigned),
            (_, None, ConvertedType::UINT_64) => Some(Kind::Unsigned64),
            (_, None, ConvertedType::UINT_8 | ConvertedType::UINT_16 | ConvertedType::UINT_32) => {
                Some(Kind::Unsigned)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(Problem {
                column: column.path().string(),
                kind,
            });
        }
    }
    Ok(out)
}
