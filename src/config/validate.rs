//! Rules that span several keys of the config.

use std::collections::{HashMap, HashSet};

use arrow::datatypes::DataType;

use super::{Config, Format, Problem, SourceConfig, TableConfig, Transform};
use crate::table::schema::parse_type;

pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |key: String, reason: String| out.push(Problem { key, reason });

    if config.lake.root.trim().is_empty() {
        add("lake.root".into(), "must name a directory or URL".into());
    }
    let b = &config.batching;
    if b.max_latency.0.is_zero() {
        add(
            "batching.max_latency".into(),
            "must be greater than zero".into(),
        );
    }
    if b.max_rows == 0 {
        add(
            "batching.max_rows".into(),
            "must be greater than zero".into(),
        );
    }
    if b.target_file_size.0 < 1 << 20 {
        add(
            "batching.target_file_size".into(),
            "must be at least 1MiB".into(),
        );
    }
    if b.max_bytes.0 == 0 {
        add(
            "batching.max_bytes".into(),
            "must be greater than zero".into(),
        );
    }
    let m = &config.maintenance;
    if m.enabled && m.interval.0.is_zero() {
        add(
            "maintenance.interval".into(),
            "must be greater than zero".into(),
        );
    }
    if m.enabled && m.vacuum_retention.0 < std::time::Duration::from_secs(24 * 3600) {
        add(
            "maintenance.vacuum_retention".into(),
            "must be at least 1 day: readers and lagging writers may still need removed files"
                .into(),
        );
    }
    let e = &config.erasure;
    if e.enabled && e.interval.0.is_zero() {
        add(
            "erasure.interval".into(),
            "must be greater than zero".into(),
        );
    }
    if e.suppression_refresh.0.is_zero() {
        add(
            "erasure.suppression_refresh".into(),
            "must be greater than zero".into(),
        );
    }
    if e.key_hash_secret
        .as_ref()
        .is_some_and(|s| s.len() < crate::erase::hashing::MIN_SECRET_LEN)
    {
        add(
            "erasure.key_hash_secret".into(),
            format!(
                "must be at least {} bytes (a random secret, from the environment: \"${{NAME}}\")",
                crate::erase::hashing::MIN_SECRET_LEN
            ),
        );
    }
    let day = std::time::Duration::from_secs(24 * 3600);
    if e.deadline.0 < m.vacuum_retention.0 + day {
        add(
            "erasure.deadline".into(),
            format!(
                "{} leaves no time to purge: it must exceed maintenance.vacuum_retention ({}) by at least a day",
                e.deadline, m.vacuum_retention
            ),
        );
    }
    if config
        .service
        .listen
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        add(
            "service.listen".into(),
            format!(
                "`{}` is not an address like 0.0.0.0:9464",
                config.service.listen
            ),
        );
    }
    if m.lease_ttl.0 < std::time::Duration::from_secs(5) {
        add("maintenance.lease_ttl".into(), "must be at least 5s".into());
    }
    if b.memory_budget.0 < b.max_bytes.0.min(1 << 20) {
        add(
            "batching.memory_budget".into(),
            format!("{} is too small: at least 1MiB", b.memory_budget),
        );
    }

    if config.sources.is_empty() {
        add("sources".into(), "at least one source is required".into());
    }
    if config.tables.is_empty() && config.table_templates.is_empty() {
        add(
            "tables".into(),
            "at least one table (or table template) is required".into(),
        );
    }

    let mut source_names = HashSet::new();
    for (i, source) in config.sources.iter().enumerate() {
        let key = format!("sources[{i}]");
        if source.name().trim().is_empty() {
            add(format!("{key}.name"), "must not be empty".into());
        } else if !source_names.insert(source.name()) {
            add(
                format!("{key}.name"),
                format!("`{}` is used twice", source.name()),
            );
        }
        match source {
            SourceConfig::Kafka(k) => {
                if k.brokers.trim().is_empty() {
                    add(
                        format!("{key}.brokers"),
                        "must list at least one broker".into(),
                    );
                }
                match (&k.topic_pattern, k.topics.is_empty()) {
                    (Some(_), false) => add(
                        format!("{key}.topic_pattern"),
                        "give either `topics` or `topic_pattern`, not both".into(),
                    ),
                    (Some(pattern), true) => {
                        if let Err(e) = regex::Regex::new(pattern) {
                            add(format!("{key}.topic_pattern"), format!("not a regex: {e}"));
                        }
                        if !config.table_templates.iter().any(|t| t.source == k.name) {
                            add(
                                format!("{key}.topic_pattern"),
                                format!("no `[[table_templates]]` entry takes the topics of source `{}`", k.name),
                            );
                        }
                    }
                    (None, _) => {
                        if k.topics.is_empty() || k.topics.iter().any(|t| t.trim().is_empty()) {
                            add(
                                format!("{key}.topics"),
                                "must list non-empty topic names (or give `topic_pattern`)".into(),
                            );
                        }
                    }
                }
                if k.group_id.trim().is_empty() {
                    add(format!("{key}.group_id"), "must not be empty".into());
                }
                super::validate_format::check_kafka_format(
                    k,
                    &source.format_spec(),
                    &key,
                    &mut add,
                );
                for reserved in crate::source::kafka::RESERVED_PROPERTIES {
                    if k.properties.contains_key(*reserved) {
                        add(
                            format!("{key}.properties.\"{reserved}\""),
                            "is set by sluice (positions live in the table); remove it".into(),
                        );
                    }
                }
            }
            SourceConfig::Kinesis(k) => {
                if k.stream.trim().is_empty() {
                    add(format!("{key}.stream"), "must name a Kinesis stream".into());
                }
                if let Some(endpoint) = &k.endpoint {
                    if url::Url::parse(endpoint).is_err() {
                        add(
                            format!("{key}.endpoint"),
                            format!("`{endpoint}` is not a URL (e.g. `https://kinesis.eu-west-1.amazonaws.com`)"),
                        );
                    }
                }
                match (&k.access_key_id, &k.secret_access_key) {
                    (Some(_), None) => add(
                        format!("{key}.secret_access_key"),
                        "is required when access_key_id is set".into(),
                    ),
                    (None, Some(_)) => add(
                        format!("{key}.access_key_id"),
                        "is required when secret_access_key is set".into(),
                    ),
                    _ => {}
                }
                if k.lease_ttl.0 < std::time::Duration::from_secs(5) {
                    add(format!("{key}.lease_ttl"), "must be at least 5s".into());
                }
            }
            SourceConfig::File(f) => {
                if f.format == Format::Protobuf {
                    match crate::decode::protobuf_message(&source.format_spec()) {
                        Ok(message) => {
                            if let Err(reason) = crate::decode::protobuf::check_message(&message) {
                                add(format!("{key}.message"), reason);
                            }
                        }
                        Err(reason) => add(format!("{key}.format"), reason),
                    }
                } else if f.descriptor_set.is_some() || f.message.is_some() {
                    add(
                        format!("{key}.descriptor_set"),
                        "`descriptor_set` and `message` go with `format = \"protobuf\"`".into(),
                    );
                }
                if f.path.trim().is_empty() {
                    add(
                        format!("{key}.path"),
                        "must name a file, directory or glob".into(),
                    );
                }
            }
        }
    }

    let mut table_names = HashSet::new();
    let mut feeds: HashMap<&str, &str> = HashMap::new();
    for (i, table) in config.tables.iter().enumerate() {
        let key = format!("tables[{i}]");
        if table.name.trim().is_empty() || table.name.contains('/') {
            add(
                format!("{key}.name"),
                "must be a non-empty name without `/`".into(),
            );
        } else if !table_names.insert(table.name.as_str()) {
            add(
                format!("{key}.name"),
                format!("`{}` is used twice", table.name),
            );
        }
        if table.source.is_empty() {
            add(format!("{key}.source"), "names no source".into());
        }
        for (j, name) in table.source.iter().enumerate() {
            let at = if table.source.len() == 1 {
                format!("{key}.source")
            } else {
                format!("{key}.source[{j}]")
            };
            let pattern_source = config.sources.iter().any(|s| {
                matches!(s, SourceConfig::Kafka(k) if &k.name == name && k.topic_pattern.is_some())
            });
            if !source_names.contains(name.as_str()) {
                add(at, format!("unknown source `{name}`"));
            } else if pattern_source {
                add(
                    at,
                    format!("source `{name}` subscribes by `topic_pattern`: its tables come from `[[table_templates]]`"),
                );
            } else if let Some(other) = feeds.insert(name.as_str(), table.name.as_str()) {
                add(at, format!("source `{name}` already feeds table `{other}`"));
            }
        }
        let schema_typed = config
            .sources_for(table)
            .any(|s| s.format_spec().carries_schema());
        if schema_typed
            && config
                .sources_for(table)
                .any(|s| !s.format_spec().carries_schema())
        {
            add(
                format!("{key}.source"),
                "mixes JSON and schema-carrying sources; a table takes one kind".into(),
            );
        }
        if schema_typed && table.evolve != crate::config::Evolve::None {
            add(
                format!("{key}.evolve"),
                "applies to JSON tables; an Avro table grows with its writer schemas by itself"
                    .into(),
            );
        }
        let changes = config
            .sources_for(table)
            .filter(|s| s.format_spec().format == Format::Debezium)
            .count();
        if changes > 0 && changes < config.sources_for(table).count() {
            add(
                format!("{key}.source"),
                "mixes change events (`format = \"debezium\"`) with other formats; a table takes one kind".into(),
            );
        }
        if changes > 0 && table.evolve != crate::config::Evolve::None {
            add(
                format!("{key}.evolve"),
                "applies to JSON tables, not to change events".into(),
            );
        }
        if changes > 0 {
            for (j, column) in table.columns.iter().enumerate() {
                if column.name.starts_with("cdc_") {
                    add(
                        format!("{key}.columns[{j}].name"),
                        format!(
                            "`{}`: names starting with `cdc_` are the change columns sluice adds",
                            column.name
                        ),
                    );
                }
            }
        } else if table.before_image {
            add(
                format!("{key}.before_image"),
                "applies to tables of change events (`format = \"debezium\"`)".into(),
            );
        }
        if changes > 0 && schema_typed {
            if !table.derived.is_empty() {
                add(
                    format!("{key}.derived"),
                    "derived columns are not available on tables of Avro change events yet".into(),
                );
            }
            if !table.metadata_columns.is_empty() {
                add(
                    format!("{key}.metadata_columns"),
                    "metadata columns are not available on tables of Avro change events yet".into(),
                );
            }
        }
        for (at, reason) in mirror_problems(table, changes > 0) {
            add(format!("{key}.{at}"), reason);
        }
        for problem in table_problems(table, schema_typed) {
            add(format!("{key}.{}", problem.key), problem.reason);
        }
    }
    for (i, template) in config.table_templates.iter().enumerate() {
        let key = format!("table_templates[{i}]");
        let pattern_source = config.sources.iter().any(|s| {
            matches!(s, SourceConfig::Kafka(k) if k.name == template.source && k.topic_pattern.is_some())
        });
        if !pattern_source {
            add(
                format!("{key}.source"),
                format!(
                    "`{}` is not a Kafka source with `topic_pattern`",
                    template.source
                ),
            );
        }
        for (field, reason) in template.problems() {
            add(format!("{key}.{field}"), reason);
        }
        let schema_typed = config
            .sources
            .iter()
            .any(|s| s.name() == template.source && s.format_spec().carries_schema());
        for problem in table_problems(&template.shape(), schema_typed) {
            add(format!("{key}.{}", problem.key), problem.reason);
        }
    }
    for name in &source_names {
        let templated = config.table_templates.iter().any(|t| t.source == *name);
        if !feeds.contains_key(name) && !templated {
            add("sources".into(), format!("source `{name}` feeds no table"));
        }
    }
    out
}

/// Problems within one table section; keys are relative to the table.
pub(crate) fn table_problems(table: &TableConfig, schema_typed: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |key: String, reason: String| out.push(Problem { key, reason });
    let mut types: HashMap<&str, DataType> = HashMap::new();

    if table.columns.is_empty() {
        if schema_typed {
            // Columns come from the source's schema; they are checked at start.
            return out;
        }
        add(
            "columns".into(),
            "at least one column is required (or a source with `format = \"avro\"`, whose schema types the table)".into(),
        );
    }
    for (j, column) in table.columns.iter().enumerate() {
        if column.name.trim().is_empty() {
            add(format!("columns[{j}].name"), "must not be empty".into());
            continue;
        }
        if let Some(reason) = crate::table::names::name_problem(&column.name) {
            add(
                format!("columns[{j}].name"),
                format!(
                    "`{}` cannot be a column name Spark and BigQuery read without column mapping ({reason}); name the column and keep the records' field: `{{ name = \"...\", field = \"{}\", ... }}`",
                    column.name,
                    column.field()
                ),
            );
        }
        if let Some(other) = table
            .columns
            .iter()
            .take(j)
            .find(|c| c.name != column.name && c.name.eq_ignore_ascii_case(&column.name))
        {
            add(
                format!("columns[{j}].name"),
                format!(
                    "`{}` and `{}` are one column to readers that ignore case (Spark, BigQuery)",
                    column.name, other.name
                ),
            );
        }
        match parse_type(&column.type_name) {
            Ok(ty) => {
                if types.insert(column.name.as_str(), ty).is_some() {
                    add(
                        format!("columns[{j}].name"),
                        format!("`{}` is declared twice", column.name),
                    );
                }
            }
            Err(e) => add(format!("columns[{j}].type"), e),
        }
    }
    let (top, nested) = table
        .key
        .split_once('.')
        .map_or((table.key.as_str(), None), |(top, rest)| (top, Some(rest)));
    let key_type = types.get(top).and_then(|ty| match nested {
        None => Some(ty.clone()),
        Some(rest) => {
            let DataType::Struct(fields) = ty else {
                return None;
            };
            crate::table::schema::field_at(fields, rest).map(|f| f.data_type().clone())
        }
    });
    match key_type.as_ref() {
        None => add(
            "key".into(),
            format!("`{}` is not a declared column", table.key),
        ),
        Some(DataType::Utf8 | DataType::Int64 | DataType::Int32 | DataType::Int16) => {}
        Some(other) => add(
            "key".into(),
            format!(
                "`{}` has type {other}; a key must be a string or integer",
                table.key
            ),
        ),
    }
    for (j, derived) in table.derived.iter().enumerate() {
        if types.contains_key(derived.name.as_str()) {
            add(
                format!("derived[{j}].name"),
                format!("`{}` is already a column", derived.name),
            );
        }
        match types.get(derived.from.as_str()) {
            Some(DataType::Timestamp(..)) => {}
            Some(other) => add(
                format!("derived[{j}].from"),
                format!(
                    "`{}` has type {other}; `{:?}` needs a timestamp",
                    derived.from, derived.transform
                ),
            ),
            None => add(
                format!("derived[{j}].from"),
                format!("`{}` is not a declared column", derived.from),
            ),
        }
        let ty = match derived.transform {
            Transform::Date => DataType::Date32,
            Transform::Hour => DataType::Int32,
        };
        types.insert(derived.name.as_str(), ty);
    }
    for column in &table.metadata_columns {
        if types.contains_key(column.column_name()) {
            add(
                "metadata_columns".into(),
                format!("`{}` clashes with a column", column.column_name()),
            );
        }
    }
    for (j, part) in table.partition_by.iter().enumerate() {
        match types.get(part.as_str()) {
            None => add(
                format!("partition_by[{j}]"),
                format!("`{part}` is neither a declared nor a derived column"),
            ),
            Some(ty) if ty.is_nested() || matches!(ty, DataType::Timestamp(..) | DataType::Binary | DataType::Float32 | DataType::Float64) => add(
                format!("partition_by[{j}]"),
                format!("`{part}` has type {ty}; partition by a string, integer, boolean or date (derive `date` from a timestamp)"),
            ),
            Some(_) => {}
        }
        if part == &table.key {
            add(
                format!("partition_by[{j}]"),
                "the key column cannot be a partition column (one directory per user)".into(),
            );
        }
    }
    for (j, column) in table.zorder_by.iter().enumerate() {
        match types.get(column.as_str()) {
            None => add(
                format!("zorder_by[{j}]"),
                format!("`{column}` is not a column"),
            ),
            Some(_) if table.partition_by.contains(column) => add(
                format!("zorder_by[{j}]"),
                format!("`{column}` is a partition column; Z-order by data columns"),
            ),
            Some(ty) if !crate::maintain::zorder::key::supported(ty) => add(
                format!("zorder_by[{j}]"),
                format!("cannot Z-order by `{column}` of type {ty}"),
            ),
            Some(_) => {}
        }
    }
    for (name, value) in &table.properties {
        let at = format!("properties.\"{name}\"");
        if !name.starts_with("delta.") {
            add(
                at,
                "only Delta table properties (`delta.*`) can be set".into(),
            );
        } else if name.ends_with("Duration") && crate::table::parse_interval(value).is_none() {
            add(
                at,
                format!("`{value}` is not an interval such as `interval 7 days`"),
            );
        } else if !crate::table::SAFE_PROPERTIES.contains(&name.as_str()) {
            add(
                at,
                format!(
                    "is not one sluice can keep readable by Spark and BigQuery; allowed: {}",
                    crate::table::SAFE_PROPERTIES.join(", ")
                ),
            );
        }
    }
    if table.partition_by.len() == types.len() {
        add(
            "partition_by".into(),
            "at least one column must stay out of the partitioning".into(),
        );
    }
    out
}

/// What is wrong with a table's `mode` and `primary_key` (`changes`: the
/// table reads change events).
fn mirror_problems(table: &TableConfig, changes: bool) -> Vec<(String, String)> {
    use crate::config::TableMode;
    let mut out = Vec::new();
    if table.mode == TableMode::Append {
        if !table.primary_key.is_empty() {
            out.push((
                "primary_key".into(),
                "applies to mirror tables (`mode = \"mirror\"`)".into(),
            ));
        }
        if table.deletion_vectors == Some(true) {
            out.push((
                "deletion_vectors".into(),
                "applies to mirror tables (`mode = \"mirror\"`): other tables only append, and erasure removes rows physically".into(),
            ));
        }
        return out;
    }
    if !changes {
        out.push((
            "mode".into(),
            "`mirror` applies to tables of change events (`format = \"debezium\"`)".into(),
        ));
        return out;
    }
    if table.primary_key.is_empty() {
        out.push((
            "primary_key".into(),
            "a mirror table needs the columns that identify a row, e.g. `primary_key = [\"id\"]`"
                .into(),
        ));
    }
    if table.before_image {
        out.push((
            "before_image".into(),
            "applies to mutation-log tables; a mirror table keeps the latest image only".into(),
        ));
    }
    for (j, name) in table.primary_key.iter().enumerate() {
        if table.columns.is_empty() {
            break; // typed by the envelope's schema: checked at start
        }
        match table.columns.iter().find(|c| &c.name == name) {
            None => out.push((
                format!("primary_key[{j}]"),
                format!("`{name}` is not a declared column"),
            )),
            Some(c)
                if !matches!(
                    c.type_name.as_str(),
                    "long" | "bigint" | "int" | "integer" | "short" | "string"
                ) =>
            {
                out.push((
                    format!("primary_key[{j}]"),
                    format!(
                        "`{name}` has type {}; a primary key column is a string or an integer",
                        c.type_name
                    ),
                ))
            }
            Some(_) if table.partition_by.contains(name) => out.push((
                format!("primary_key[{j}]"),
                format!("`{name}` is a partition column (that would make a directory per key)"),
            )),
            Some(_) => {}
        }
    }
    out
}
