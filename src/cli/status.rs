//! `sluice status TABLE_URI`: version, files, small files, last commit, and
//! the recorded position of every source partition with a lineage check.

use super::CliError;
use crate::config::defaults;
use crate::status::{table_status, TableStatus};

/// Arguments of `sluice status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Files below this size count as small.
    #[arg(long, default_value_t = defaults::SMALL_FILE_BYTES)]
    pub small_file_bytes: u64,
}

/// Prints the status of one table.
pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    let url = crate::table::resolve_existing(&args.table)?;
    let status = table_status(&url, &Default::default(), args.small_file_bytes).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Human-readable status.
pub fn render(s: &TableStatus) -> String {
    let mut out = String::new();
    let size = crate::config::ByteSize(s.bytes);
    out.push_str(&format!("table        {}\n", s.url));
    out.push_str(&format!("version      {}\n", s.version));
    out.push_str(&format!(
        "files        {} ({size}), {} small\n",
        s.files, s.small_files
    ));
    out.push_str(&format!(
        "rows         {}{}\n",
        s.rows,
        crate::catalog::hidden_note(s.hidden_rows)
    ));
    if let Some(t) = &s.last_commit_time {
        out.push_str(&format!("last commit  {t}\n"));
    }
    if let Some(m) = &s.merges {
        let rewritten = crate::config::ByteSize(m.sums.bytes_rewritten);
        let unmatched = match m.sums.unmatched {
            0 => String::new(),
            n => format!(", {n} partial updates without a row"),
        };
        let marked = match m.sums.files_marked {
            0 => String::new(),
            n => format!("; {n} files given deletion vectors"),
        };
        out.push_str(&format!(
            "merges       {} ({} mutations of {} keys: {} upserted, {} deleted, {} stale{unmatched}; {} rows replaced; {} files rewritten, {rewritten}{marked})\n",
            m.commits,
            m.sums.mutations,
            m.sums.keys,
            m.sums.upserted,
            m.sums.deleted,
            m.sums.stale,
            m.sums.removed,
            m.sums.files_rewritten,
        ));
    }
    for (field, count) in &s.unknown_fields {
        out.push_str(&format!(
            "unknown field `{field}` in {count} record(s) (not a column; `evolve = \"add_columns\"` adds it)\n"
        ));
    }
    if s.partitions.is_empty() {
        out.push_str("no source positions recorded\n");
        return out;
    }
    out.push_str("\nsource partition                              position   commits  received  committed  dead  lineage\n");
    for p in &s.partitions {
        let check = if p.contiguous && p.counts_add_up {
            "ok".to_string()
        } else if p.gaps.is_empty() && p.counts_add_up {
            "GAPS (records trimmed, below)".to_string()
        } else {
            format!("GAPS {:?} counts_ok={}", p.gaps, p.counts_add_up)
        };
        out.push_str(&format!(
            "{:<45} {:>8} {:>9} {:>9} {:>10} {:>5}  {check}\n",
            p.app_id,
            p.position.map_or("-".into(), |v| v.to_string()),
            p.commits,
            p.received,
            p.committed,
            p.dead_lettered
        ));
        if p.skipped > 0 || p.suppressed > 0 {
            out.push_str(&format!(
                "{:<45} {} suppressed (erasure), {} skipped (tombstones)\n",
                "", p.suppressed, p.skipped
            ));
        }
        for note in &p.trimmed {
            out.push_str(&format!("{:<45} lost: {note}\n", ""));
        }
        let named = |ids: &std::collections::BTreeSet<u32>| {
            ids.iter()
                .map(|id| match s.schemas.get(id) {
                    Some(label) => format!("{label} (id {id})"),
                    None => format!("id {id}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !p.schema_ids.is_empty() {
            out.push_str(&format!("{:<45} schemas {}\n", "", named(&p.schema_ids)));
        }
        if !p.refused_schema_ids.is_empty() {
            out.push_str(&format!(
                "{:<45} refused schemas {}\n",
                "",
                named(&p.refused_schema_ids)
            ));
        }
    }
    out
}
