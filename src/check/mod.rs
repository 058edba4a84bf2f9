//! `sluice check`: whether BigQuery and Spark can read a Delta table, any
//! table (sluice's or another writer's), before an analyst finds out.
//!
//! One [`Finding`] per problem, each for one reader, as an error (the
//! reader refuses the table or misreads it) or a warning (it reads the
//! table, but not as one would expect). What is checked:
//!
//! - the protocol: reader version and reader features the target does not
//!   support (BigQuery: reader version 3 at most, with `deletionVectors`
//!   and `columnMapping` only; Spark with delta-spark 3: reader 3 with the
//!   features it knows); v2 checkpoints (BigQuery);
//! - the schema: `timestamp_ntz` (BigQuery), column names a reader does not
//!   take ([`crate::table::names`] for BigQuery; Spark's ` ,;{}()\n\t=`
//!   without column mapping), a timestamp partition column (BigQuery maps
//!   it to `DATETIME`);
//! - the files' Parquet footers (up to `max_files`): nanosecond or non-UTC
//!   timestamps, unsigned integers, INT96; deletion vectors stored by
//!   absolute path or inline (BigQuery reads relative-path ones only);
//! - the log: JSON commit bytes since the last checkpoint against
//!   BigQuery's limit ([`BIGQUERY_LOG_LIMIT`]), and whether the checkpoint
//!   carries struct statistics (`add.stats_parsed`) for file pruning;
//! - partition values holding characters that need escaping in paths.

pub mod footer;
pub mod log;

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use serde::Serialize;

/// BigQuery's limit on the JSON commit bytes since the last checkpoint.
pub const BIGQUERY_LOG_LIMIT: u64 = 10 << 20;

/// Reader features BigQuery reads (with reader version 3).
const BIGQUERY_READER_FEATURES: [&str; 2] = ["deletionVectors", "columnMapping"];

/// Reader features delta-spark 3 reads (with reader version 3).
const SPARK_READER_FEATURES: [&str; 7] = [
    "columnMapping",
    "deletionVectors",
    "timestampNtz",
    "v2Checkpoint",
    "vacuumProtocolCheck",
    "typeWidening",
    "typeWidening-preview",
];

/// Characters Spark refuses in column names without column mapping.
const SPARK_NAME_CHARS: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// Characters Hive-style partition paths escape.
const PATH_ESCAPED: &[char] = &[
    '"', '#', '%', '\'', '*', '/', ':', '=', '?', '\\', '\u{7f}', '{', '[', ']', '^',
];

/// A reader `check` can judge a table for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// BigQuery, reading the table as a BigLake Delta Lake table.
    Bigquery,
    /// Apache Spark with delta-spark 3.
    Spark,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Bigquery => "bigquery",
            Target::Spark => "spark",
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The reader refuses the table or misreads data.
    Error,
    /// The reader reads the table, not as one would expect.
    Warning,
}

/// One problem, for one reader.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The reader.
    pub target: Target,
    /// Error or warning.
    pub severity: Severity,
    /// A stable name for the kind of problem (`reader-feature`, `log-size`, ...).
    pub code: &'static str,
    /// What is wrong and where, for people.
    pub message: String,
}

/// The result of checking one table.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The table's location.
    pub table: String,
    /// The version checked.
    pub version: i64,
    /// The readers judged.
    pub targets: Vec<Target>,
    /// Live data files, and how many of their footers were read.
    pub files: usize,
    /// Footers read (all files up to `max_files`).
    pub footers_read: usize,
    /// JSON commit bytes since the last checkpoint.
    pub log_bytes_since_checkpoint: u64,
    /// Every problem found, errors first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether a judged reader would fail (any error).
    pub fn fails(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// One line per finding, then a verdict per reader.
    pub fn render(&self) -> String {
        let mut out = format!("table {} (version {})\n", self.table, self.version);
        for f in &self.findings {
            let severity = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push_str(&format!(
                "{:<8} {:<7} {:<22} {}\n",
                f.target.name(),
                severity,
                f.code,
                f.message
            ));
        }
        for target in &self.targets {
            let errors = self
                .findings
                .iter()
                .filter(|f| f.target == *target && f.severity == Severity::Error)
                .count();
            let verdict = if errors == 0 {
                "can read the table".to_string()
            } else {
                format!("cannot read the table ({errors} error(s))")
            };
            out.push_str(&format!("{}: {verdict}\n", target.name()));
        }
        out.push_str(&format!(
            "({} live files, {} footers read; {} bytes of JSON commits since the last checkpoint)\n",
            self.files, self.footers_read, self.log_bytes_since_checkpoint
        ));
        out
    }
}

/// Errors reading a table to check it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The table's log or a file could not be read.
    #[error("table {table}: {reason}")]
    Read {
        /// The table.
        table: String,
        /// What failed.
        reason: String,
    },
}

/// Collects findings for the judged readers only.
struct Findings {
    targets: BTreeSet<Target>,
    found: BTreeSet<Finding>,
}

impl Findings {
    fn add(&mut self, target: Target, severity: Severity, code: &'static str, message: String) {
        if self.targets.contains(&target) {
            self.found.insert(Finding {
                target,
                severity,
                code,
                message,
            });
        }
    }
}

/// Checks `table` for `targets`, reading at most `max_files` footers.
pub async fn check(
    table: &DeltaTable,
    targets: &[Target],
    max_files: usize,
) -> Result<Report, CheckError> {
    let location = table.table_url().to_string();
    let fail = |reason: String| CheckError::Read {
        table: location.clone(),
        reason,
    };
    let snapshot = table.snapshot().map_err(|e| fail(e.to_string()))?;
    let protocol = serde_json::to_value(snapshot.protocol()).map_err(|e| fail(e.to_string()))?;
    let metadata = serde_json::to_value(snapshot.metadata()).map_err(|e| fail(e.to_string()))?;
    let mut findings = Findings {
        targets: targets.iter().copied().collect(),
        found: BTreeSet::new(),
    };
    check_protocol(&protocol, &mut findings);
    let schema: serde_json::Value = metadata["schemaString"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| fail("the metadata's schemaString is not a schema".into()))?;
    let configuration = &metadata["configuration"];
    let mapping = configuration["delta.columnMapping.mode"]
        .as_str()
        .is_some_and(|mode| mode != "none");
    let partition_columns: Vec<String> = metadata["partitionColumns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    check_schema(&schema, &partition_columns, mapping, &mut findings);
    if configuration["delta.checkpointPolicy"].as_str() == Some("v2") {
        findings.add(
            Target::Bigquery,
            Severity::Error,
            "v2-checkpoint",
            "`delta.checkpointPolicy = v2`: BigQuery does not read v2 checkpoints".into(),
        );
    }

    let store = table.log_store().object_store(None);
    let log = log::read(&store).await.map_err(fail)?;
    if log.v2_checkpoint {
        findings.add(
            Target::Bigquery,
            Severity::Error,
            "v2-checkpoint",
            format!(
                "the last checkpoint (version {}) is a v2 checkpoint; BigQuery does not read them",
                log.checkpoint_version.unwrap_or(-1)
            ),
        );
    }
    if log.json_bytes_since_checkpoint > BIGQUERY_LOG_LIMIT {
        findings.add(
            Target::Bigquery,
            Severity::Error,
            "log-size",
            format!(
                "{} bytes of JSON commits since the last checkpoint{}, over BigQuery's {} MiB: write a checkpoint",
                log.json_bytes_since_checkpoint,
                log.checkpoint_version
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_else(|| " (there is none)".into()),
                BIGQUERY_LOG_LIMIT >> 20
            ),
        );
    }
    if log.checkpoint_version.is_some() && !log.struct_stats {
        findings.add(
            Target::Bigquery,
            Severity::Warning,
            "checkpoint-stats",
            "the last checkpoint has no struct statistics (`add.stats_parsed`; set `delta.checkpoint.writeStatsAsStruct = true`): BigQuery cannot prune files by it".into(),
        );
    }

    let files: Vec<_> = snapshot.log_data().iter().collect();
    let mut escaped: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        for (column, value) in file.partition_values_map() {
            if value.is_some_and(|v| {
                v.chars()
                    .any(|c| PATH_ESCAPED.contains(&c) || c.is_control())
            }) {
                escaped.insert(column);
            }
        }
        if let Some(dv) = file.deletion_vector_descriptor() {
            let kind = serde_json::to_value(&dv).ok();
            let storage = kind
                .as_ref()
                .and_then(|k| k["storageType"].as_str().map(str::to_string))
                .unwrap_or_default();
            if storage != "u" {
                findings.add(
                    Target::Bigquery,
                    Severity::Error,
                    "deletion-vector",
                    format!(
                        "{}: a deletion vector stored as `{storage}` (BigQuery reads relative-path ones, `u`, only)",
                        file.path()
                    ),
                );
            }
        }
    }
    for column in escaped {
        findings.add(
            Target::Bigquery,
            Severity::Warning,
            "partition-value",
            format!("partition column `{column}` has values with characters that are escaped in paths (e.g. `/`, `:`, `%`, `=`)"),
        );
    }
    // Footer problems, one finding per column and kind: how many files, and one of them.
    let mut footers_read = 0;
    let mut by_column: std::collections::BTreeMap<(footer::Kind, String), (usize, String)> =
        Default::default();
    for file in files.iter().take(max_files) {
        let path = file.object_store_path();
        let problems = footer::problems(store.clone(), &path, file.size() as u64)
            .await
            .map_err(|e| fail(format!("{path}: {e}")))?;
        footers_read += 1;
        for problem in problems {
            let entry = by_column
                .entry((problem.kind, problem.column))
                .or_insert_with(|| (0, path.to_string()));
            entry.0 += 1;
        }
    }
    for ((kind, column), (count, example)) in by_column {
        for (target, severity) in kind.readers() {
            findings.add(
                *target,
                *severity,
                kind.code(),
                format!(
                    "column `{column}`: {} in {count} of {footers_read} files read (e.g. {example})",
                    kind.describe()
                ),
            );
        }
    }
    let mut found: Vec<Finding> = findings.found.into_iter().collect();
    found.sort_by_key(|f| (f.severity, f.target));
    Ok(Report {
        table: location.to_string(),
        version: snapshot.version() as i64,
        targets: targets.to_vec(),
        files: files.len(),
        footers_read,
        log_bytes_since_checkpoint: log.json_bytes_since_checkpoint,
        findings: found,
    })
}

fn check_protocol(protocol: &serde_json::Value, findings: &mut Findings) {
    let reader = protocol["minReaderVersion"].as_i64().unwrap_or(1);
    let features: Vec<String> = protocol["readerFeatures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (target, known) in [
        (Target::Bigquery, &BIGQUERY_READER_FEATURES[..]),
        (Target::Spark, &SPARK_READER_FEATURES[..]),
    ] {
        if reader > 3 {
            findings.add(
                target,
                Severity::Error,
                "reader-version",
                format!("reader version {reader}; {} reads 3 at most", target.name()),
            );
        }
        for feature in features.iter().filter(|f| !known.contains(&f.as_str())) {
            findings.add(
                target,
                Severity::Error,
                "reader-feature",
                format!(
                    "reader feature `{feature}` is not one {} reads ({})",
                    target.name(),
                    known.join(", ")
                ),
            );
        }
    }
}

fn check_schema(
    schema: &serde_json::Value,
    partition_columns: &[String],
    mapping: bool,
    findings: &mut Findings,
) {
    let mut ntz = Vec::new();
    let mut spark_names = Vec::new();
    walk_schema(schema, "", &mut |path, name, ty| {
        if ty == "timestamp_ntz" {
            ntz.push(path.to_string());
        }
        if !mapping && name.chars().any(|c| SPARK_NAME_CHARS.contains(&c)) {
            spark_names.push(path.to_string());
        }
    });
    for path in ntz {
        findings.add(
            Target::Bigquery,
            Severity::Error,
            "timestamp-ntz",
            format!("column `{path}` is `timestamp_ntz`; BigQuery reads `timestamp` (UTC) only"),
        );
    }
    for path in spark_names {
        findings.add(
            Target::Spark,
            Severity::Error,
            "column-name",
            format!("column `{path}` has a character Spark refuses without column mapping (` ,;{{}}()=`, tab, newline)"),
        );
    }
    if let Ok(arrow) = serde_json::from_value::<deltalake::kernel::StructType>(schema.clone()) {
        use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
        let converted: Result<arrow::datatypes::Schema, _> = (&arrow).try_into_arrow();
        if let Ok(converted) = converted {
            for problem in crate::table::names::problems(converted.fields()) {
                findings.add(Target::Bigquery, Severity::Error, "column-name", problem);
            }
        }
    }
    for column in partition_columns {
        let ty = schema["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == column.as_str()))
            .and_then(|f| f["type"].as_str());
        if matches!(ty, Some("timestamp" | "timestamp_ntz")) {
            findings.add(
                Target::Bigquery,
                Severity::Warning,
                "timestamp-partition",
                format!("partition column `{column}` is a timestamp: BigQuery maps it to DATETIME (no time zone)"),
            );
        }
    }
}

/// Calls `visit(path, name, type)` for every field of a Delta schema (JSON).
fn walk_schema(ty: &serde_json::Value, prefix: &str, visit: &mut dyn FnMut(&str, &str, &str)) {
    match ty {
        serde_json::Value::String(_) => {}
        serde_json::Value::Object(o) => match o.get("type").and_then(|t| t.as_str()) {
            Some("struct") => {
                for field in o
                    .get("fields")
                    .and_then(|f| f.as_array())
                    .into_iter()
                    .flatten()
                {
                    let name = field["name"].as_str().unwrap_or("");
                    let path = format!("{prefix}{name}");
                    let inner = &field["type"];
                    visit(&path, name, inner.as_str().unwrap_or("nested"));
                    walk_schema(inner, &format!("{path}."), visit);
                }
            }
            Some("array") => {
                let inner = &o["elementType"];
                if let Some(t) = inner.as_str() {
                    visit(&format!("{prefix}element"), "element", t);
                }
                walk_schema(inner, prefix, visit)
            }
            Some("map") => {
                for key in ["keyType", "valueType"] {
                    let inner = &o[key];
                    if let Some(t) = inner.as_str() {
                        visit(&format!("{prefix}{key}"), key, t);
                    }
                    walk_schema(inner, prefix, visit);
                }
            }
            _ => {}
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn findings(targets: &[Target]) -> Findings {
        Findings {
            targets: targets.iter().copied().collect(),
            found: BTreeSet::new(),
        }
    }

    #[test]
    fn reader_features_are_judged_per_reader() {
        let mut found = findings(&[Target::Bigquery, Target::Spark]);
        check_protocol(
            &json!({"minReaderVersion": 3, "minWriterVersion": 7,
                    "readerFeatures": ["deletionVectors", "timestampNtz", "variantType"]}),
            &mut found,
        );
        let codes: Vec<_> = found
            .found
            .iter()
            .map(|f| (f.target, f.message.split('`').nth(1).unwrap().to_string()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (Target::Bigquery, "timestampNtz".to_string()),
                (Target::Bigquery, "variantType".to_string()),
                (Target::Spark, "variantType".to_string()),
            ]
        );
        let mut plain = findings(&[Target::Bigquery, Target::Spark]);
        check_protocol(
            &json!({"minReaderVersion": 1, "minWriterVersion": 2}),
            &mut plain,
        );
        assert!(plain.found.is_empty());
    }

    #[test]
    fn schema_findings_name_the_column() {
        let schema = json!({"type": "struct", "fields": [
            {"name": "at", "type": "timestamp_ntz", "nullable": true, "metadata": {}},
            {"name": "day", "type": "timestamp", "nullable": true, "metadata": {}},
            {"name": "user id", "type": "string", "nullable": true, "metadata": {}},
            {"name": "pickup", "type": {"type": "struct", "fields": [
                {"name": "when", "type": "timestamp_ntz", "nullable": true, "metadata": {}}]},
             "nullable": true, "metadata": {}}]});
        let mut found = findings(&[Target::Bigquery, Target::Spark]);
        check_schema(&schema, &["day".to_string()], false, &mut found);
        let lines: Vec<String> = found
            .found
            .iter()
            .map(|f| format!("{:?} {} {}", f.target, f.code, f.message))
            .collect();
        for wanted in [
            "Bigquery timestamp-ntz column `at`",
            "Bigquery timestamp-ntz column `pickup.when`",
            "Spark column-name column `user id`",
            "Bigquery column-name `user id`",
            "Bigquery timestamp-partition partition column `day`",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(wanted)),
                "{wanted} in {lines:?}"
            );
        }
        // With column mapping, Spark takes any name.
        let mut mapped = findings(&[Target::Spark]);
        check_schema(&schema, &[], true, &mut mapped);
        assert!(mapped.found.is_empty(), "{:?}", mapped.found);
    }
}
