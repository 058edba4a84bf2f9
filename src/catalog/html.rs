//! The catalog as one self-contained HTML page for people: an overview
//! table (one row per table, linking to its section), then a section per
//! table with what it is, where it comes from and how it stands. No
//! scripts, no external resources; every value is escaped.

use super::text::age;
use super::{Catalog, TableEntry};
use crate::config::ByteSize;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1a1a1a}\
table{border-collapse:collapse;margin:.5rem 0}\
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}section{margin-top:2rem;border-top:2px solid #333}\
.bad{color:#b00020;font-weight:600}.muted{color:#666}dt{font-weight:600}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}";

/// The whole page.
pub fn render(catalog: &Catalog) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>sluice catalog: {root}</title><style>{STYLE}</style></head><body>\n\
<h1>Lake <code>{root}</code></h1>\n<p class=\"muted\">Read {read_at}; {n} table(s).</p>\n",
        root = escape(&catalog.root),
        read_at = escape(&catalog.read_at),
        n = catalog.tables.len(),
    );
    out.push_str(
        "<table id=\"overview\"><thead><tr><th>table</th><th>kind</th><th>owner</th>\
<th>description</th><th>rows</th><th>size</th><th>newest event</th><th>complete</th>\
<th>open erasures</th></tr></thead><tbody>\n",
    );
    for t in &catalog.tables {
        let a = &t.administrative;
        out.push_str(&format!(
            "<tr><td><a href=\"#{id}\">{name}</a></td><td>{kind}</td><td>{owner}</td>\
<td>{description}</td><td>{rows}</td><td>{size}</td><td>{fresh}</td><td>{complete}</td>\
<td>{erasures}</td></tr>\n",
            id = anchor(&t.name),
            name = escape(&t.name),
            kind = escape(&t.kind),
            owner = escape(t.descriptive.owner.as_deref().unwrap_or("")),
            description = escape(t.descriptive.description.as_deref().unwrap_or("")),
            rows = a.rows,
            size = ByteSize(a.bytes),
            fresh = a
                .freshness_seconds
                .map(|s| format!("{} ago", age(s)))
                .unwrap_or_default(),
            complete = complete_cell(t),
            erasures = a.open_erasures.len(),
        ));
    }
    out.push_str("</tbody></table>\n");
    for bad in &catalog.unreadable {
        out.push_str(&format!(
            "<p class=\"bad\">{} at {} cannot be read: {}</p>\n",
            escape(&bad.name),
            escape(&bad.url),
            escape(&bad.reason)
        ));
    }
    if !catalog.refused_topics.is_empty() {
        out.push_str(
            "<h2>Refused topics</h2><table id=\"refused\"><thead><tr><th>topic</th><th>source</th>\
<th>since</th><th>reason</th></tr></thead><tbody>\n",
        );
        for r in &catalog.refused_topics {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td></tr>\n",
                escape(&r.topic),
                escape(&r.source),
                escape(&r.at),
                escape(&r.reason)
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    for t in &catalog.tables {
        out.push_str(&section(t));
    }
    out.push_str("</body></html>\n");
    out
}

/// An element id for a table name (letters, digits, `-`, `_`).
fn anchor(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("t-{safe}")
}

fn complete_cell(t: &TableEntry) -> &'static str {
    match (
        t.administrative.partitions.is_empty(),
        t.administrative.complete,
    ) {
        (true, _) => "",
        (false, true) => "yes",
        (false, false) => "<span class=\"bad\">no</span>",
    }
}

fn row(out: &mut String, label: &str, value: &str) {
    if !value.is_empty() {
        out.push_str(&format!("<dt>{label}</dt><dd>{value}</dd>\n"));
    }
}

fn section(t: &TableEntry) -> String {
    let (d, s, a) = (&t.descriptive, &t.structural, &t.administrative);
    let opt = |v: &Option<String>| escape(v.as_deref().unwrap_or("-"));
    let mut out = format!(
        "<section id=\"{}\"><h2>{}</h2><p class=\"muted\">{}{} &middot; <code>{}</code></p>\n",
        anchor(&t.name),
        escape(&t.name),
        escape(&t.kind),
        if t.configured { ", configured" } else { "" },
        escape(&t.url)
    );
    if let Some(description) = &d.description {
        out.push_str(&format!(
            "<p class=\"description\">{}</p>\n",
            escape(description)
        ));
    }
    out.push_str("<h3>Descriptive</h3><dl>\n");
    row(&mut out, "owner", &opt(&d.owner));
    row(&mut out, "tags", &escape(&d.tags.join(", ")));
    row(&mut out, "schema", &opt(&d.schema_source));
    row(
        &mut out,
        "schemas seen",
        &escape(&d.schema_versions.join(", ")),
    );
    out.push_str("</dl>\n");
    out.push_str("<h3>Structural</h3><dl>\n");
    row(&mut out, "sources", &escape(&s.sources.join(", ")));
    row(
        &mut out,
        "partitioned by",
        &escape(&s.partition_columns.join(", ")),
    );
    if !s.zorder_columns.is_empty() {
        let share = s
            .zordered_share
            .map(|x| format!(" ({:.0}% of bytes ordered)", x * 100.0))
            .unwrap_or_default();
        row(
            &mut out,
            "Z-ordered by",
            &format!("{}{share}", escape(&s.zorder_columns.join(", "))),
        );
    }
    row(&mut out, "key", &opt(&s.key));
    if !s.primary_key.is_empty() {
        row(
            &mut out,
            "mirror of",
            &format!("one row per {}", escape(&s.primary_key.join(", "))),
        );
    }
    if let Some(template) = &s.template {
        let fields: Vec<String> = s
            .convention
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect();
        row(
            &mut out,
            "template",
            &format!("<code>{}</code> ({})", escape(template), fields.join(", ")),
        );
    }
    let related: Vec<String> = s
        .related
        .iter()
        .map(|r| format!("<a href=\"#{}\">{}</a>", anchor(r), escape(r)))
        .collect();
    row(&mut out, "related", &related.join(", "));
    out.push_str("</dl>\n");
    out.push_str("<h3>Administrative</h3><dl>\n");
    if let (Some(column), Some(first), Some(last)) =
        (&a.event_time_column, &a.first_event, &a.last_event)
    {
        row(
            &mut out,
            "events",
            &format!(
                "{} .. {} (<code>{}</code>)",
                escape(first),
                escape(last),
                escape(column)
            ),
        );
    }
    if let Some(fresh) = a.freshness_seconds {
        row(
            &mut out,
            "freshness",
            &format!("newest event {} old", age(fresh)),
        );
    }
    row(
        &mut out,
        "size",
        &format!(
            "{} rows in {} files ({}), {} small{}",
            a.rows,
            a.files,
            ByteSize(a.bytes),
            a.small_files,
            super::hidden_note(a.hidden_rows)
        ),
    );
    row(
        &mut out,
        "commits",
        &format!(
            "version {}; {} in the last 24 h; last {}",
            a.version,
            a.commits_last_24h,
            opt(&a.last_commit)
        ),
    );
    row(
        &mut out,
        "maintenance",
        &format!(
            "compaction {}, Z-order {}, vacuum {}, checkpoint {}",
            opt(&a.last_compaction),
            opt(&a.last_zorder),
            opt(&a.last_vacuum),
            a.last_checkpoint
                .map_or("-".to_string(), |v| format!("at version {v}"))
        ),
    );
    out.push_str("</dl>\n");
    if !a.partitions.is_empty() {
        out.push_str(&format!(
            "<p>Complete: {}; {} dead-lettered, {} suppressed.</p>\n\
<table class=\"partitions\"><thead><tr><th>source partition</th><th>position</th>\
<th>commits</th><th>received</th><th>committed</th><th>dead</th><th>suppressed</th>\
<th>lineage</th></tr></thead><tbody>\n",
            complete_cell(t),
            a.dead_lettered,
            a.suppressed
        ));
        for p in &a.partitions {
            let ok = p.contiguous && p.counts_add_up;
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td></tr>\n",
                escape(&p.app_id),
                p.position.map_or("-".into(), |v| v.to_string()),
                p.commits,
                p.received,
                p.committed,
                p.dead_lettered,
                p.suppressed,
                if ok {
                    "ok"
                } else {
                    "<span class=\"bad\">gaps</span>"
                }
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    if !a.open_erasures.is_empty() {
        out.push_str(
            "<h3>Open erasure requests</h3><table class=\"erasures\"><thead><tr><th>request</th>\
<th>state</th><th>deadline</th></tr></thead><tbody>\n",
        );
        for e in &a.open_erasures {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}{}</td></tr>\n",
                escape(&e.id),
                escape(&e.state),
                escape(&e.deadline),
                if e.overdue {
                    " <span class=\"bad\">overdue</span>"
                } else {
                    ""
                }
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str(
        "<h3>Columns</h3><table class=\"columns\"><thead><tr><th>column</th><th>type</th>\
<th>nullable</th><th>comment</th></tr></thead><tbody>\n",
    );
    for c in &d.columns {
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            escape(&c.name),
            escape(&c.data_type),
            if c.nullable { "yes" } else { "no" },
            escape(c.comment.as_deref().unwrap_or(""))
        ));
    }
    out.push_str("</tbody></table></section>\n");
    out
}
