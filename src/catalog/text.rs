//! The catalog as text, a block per table.

use super::{Catalog, TableEntry};
use crate::config::ByteSize;

/// Every table, a block each; unreadable tables at the end.
pub fn render(catalog: &Catalog) -> String {
    let mut out = format!(
        "lake {} (read {}): {} table(s)\n",
        catalog.root,
        catalog.read_at,
        catalog.tables.len()
    );
    for table in &catalog.tables {
        out.push('\n');
        out.push_str(&block(table));
    }
    for bad in &catalog.unreadable {
        out.push_str(&format!(
            "\n{}  UNREADABLE at {}: {}\n",
            bad.name, bad.url, bad.reason
        ));
    }
    for refused in &catalog.refused_topics {
        out.push_str(&format!(
            "\ntopic {} (source {})  REFUSED since {}: {}\n",
            refused.topic, refused.source, refused.at, refused.reason
        ));
    }
    out
}

/// Age in a few words: `42 s`, `7 min`, `3 h`, `2 d`.
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

fn block(t: &TableEntry) -> String {
    let (d, s, a) = (&t.descriptive, &t.structural, &t.administrative);
    let mut out = format!(
        "{}  {}{}\n",
        t.name,
        t.kind.replace('_', " "),
        if t.configured { ", configured" } else { "" }
    );
    let line = |out: &mut String, label: &str, text: String| {
        out.push_str(&format!("  {label:<12} {text}\n"));
    };
    if let Some(description) = &d.description {
        line(&mut out, "about", description.clone());
    }
    line(
        &mut out,
        "owner",
        format!(
            "{}{}",
            or_dash(&d.owner),
            if d.tags.is_empty() {
                String::new()
            } else {
                format!("; tags {}", d.tags.join(", "))
            }
        ),
    );
    let mut schema = or_dash(&d.schema_source).to_string();
    if !d.schema_versions.is_empty() {
        schema.push_str(&format!("; seen {}", d.schema_versions.join(", ")));
    }
    line(&mut out, "schema", schema);
    if !s.sources.is_empty() {
        line(&mut out, "sources", s.sources.join(", "));
    }
    let mut layout = Vec::new();
    if !s.partition_columns.is_empty() {
        layout.push(format!("partitioned by {}", s.partition_columns.join(", ")));
    }
    if !s.zorder_columns.is_empty() {
        let share = s
            .zordered_share
            .map(|x| format!(" ({:.0}% of bytes ordered)", x * 100.0))
            .unwrap_or_default();
        layout.push(format!(
            "Z-ordered by {}{share}",
            s.zorder_columns.join(", ")
        ));
    }
    if let Some(key) = &s.key {
        layout.push(format!("key {key}"));
    }
    if !s.primary_key.is_empty() {
        layout.push(format!("mirror: one row per {}", s.primary_key.join(", ")));
    }
    if !layout.is_empty() {
        line(&mut out, "layout", layout.join("; "));
    }
    if let Some(template) = &s.template {
        let fields: Vec<String> = s
            .convention
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line(
            &mut out,
            "template",
            format!("{template} ({})", fields.join(", ")),
        );
    }
    if !s.related.is_empty() {
        line(&mut out, "related", s.related.join(", "));
    }
    if let (Some(column), Some(first), Some(last)) =
        (&a.event_time_column, &a.first_event, &a.last_event)
    {
        let fresh = a
            .freshness_seconds
            .map(|f| format!(", newest {} old", age(f)))
            .unwrap_or_default();
        line(
            &mut out,
            "events",
            format!("{first} .. {last} ({column}){fresh}"),
        );
    }
    line(
        &mut out,
        "size",
        format!(
            "{} rows in {} files ({}), {} small{}",
            a.rows,
            a.files,
            ByteSize(a.bytes),
            a.small_files,
            super::hidden_note(a.hidden_rows)
        ),
    );
    line(
        &mut out,
        "commits",
        format!(
            "version {}, {} in the last 24 h, last {}",
            a.version,
            a.commits_last_24h,
            or_dash(&a.last_commit)
        ),
    );
    if !a.partitions.is_empty() {
        line(
            &mut out,
            "complete",
            format!(
                "{} ({} source partition(s); {} dead-lettered, {} suppressed)",
                if a.complete {
                    "yes"
                } else {
                    "NO: see `sluice status`"
                },
                a.partitions.len(),
                a.dead_lettered,
                a.suppressed
            ),
        );
    }
    line(
        &mut out,
        "maintenance",
        format!(
            "compaction {}, Z-order {}, vacuum {}, checkpoint {}",
            or_dash(&a.last_compaction),
            or_dash(&a.last_zorder),
            or_dash(&a.last_vacuum),
            a.last_checkpoint
                .map_or("-".to_string(), |v| format!("at version {v}"))
        ),
    );
    if !a.open_erasures.is_empty() {
        let open: Vec<String> = a
            .open_erasures
            .iter()
            .map(|e| {
                format!(
                    "{} {}, due {}{}",
                    e.id,
                    e.state,
                    e.deadline,
                    if e.overdue { " (OVERDUE)" } else { "" }
                )
            })
            .collect();
        line(&mut out, "erasure", open.join("; "));
    }
    out.push_str("  columns\n");
    for c in &d.columns {
        let depth = c.name.matches('.').count();
        out.push_str(&format!(
            "    {:indent$}{:<width$} {}{}{}\n",
            "",
            c.name.rsplit('.').next().unwrap_or(&c.name),
            c.data_type,
            if c.nullable { "" } else { " not null" },
            c.comment
                .as_ref()
                .map(|c| format!("  -- {c}"))
                .unwrap_or_default(),
            indent = depth * 2,
            width = 24usize.saturating_sub(depth * 2),
        ));
    }
    out
}
