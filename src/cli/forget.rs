//! `sluice forget ...`: file, apply, verify and report GDPR erasure requests.

use std::path::PathBuf;

use super::CliError;
use crate::config::Config;
use crate::erase::keys::{read_keys_file, SubjectKey};
use crate::erase::{self, receipt, TableChoice};

/// Arguments of `sluice forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The TOML config file (lake root and tables).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: ForgetAction,
}

/// `sluice forget` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ForgetAction {
    /// Record erasure requests in the ledger (idempotent per key and tables).
    Request(RequestArgs),
    /// Delete pending keys from their tables now, and purge requests past the retention.
    Apply(ApplyArgs),
    /// Check that a request's key is gone from every row and every object; record the result.
    Verify(VerifyArgs),
    /// List requests with their state and deadline, flagging those at risk.
    Status(StatusArgs),
    /// Print an auditor's JSON receipt for a request.
    Receipt(ReceiptArgs),
}

/// Arguments of `sluice forget request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// A key as `column=value` (repeatable).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// A file of keys, one `column=value` per line (`#` comments allowed).
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Target tables, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    pub tables: Vec<String>,
    /// Target every configured table that has the key's column.
    #[arg(long)]
    pub all: bool,
    /// Why (e.g. the ticket id); recorded in the ledger.
    #[arg(long)]
    pub reason: String,
    /// Print the filed requests as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sluice forget apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// How long to wait when another erasure run (a `serve`/`ingest`
    /// worker's loop, or another `apply`) holds the lease.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sluice forget verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The request id (or a unique prefix).
    pub id: String,
    /// Read every live file, not only those whose statistics admit the key.
    #[arg(long)]
    pub full: bool,
    /// The key (`column=value`), to verify again a request that keeps only
    /// a keyed hash and was verified before; it must match the hash.
    #[arg(long, value_parser = SubjectKey::parse)]
    pub key: Option<SubjectKey>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sluice forget status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this request (id or unique prefix).
    pub id: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sluice forget receipt`.
#[derive(Debug, clap::Args)]
pub struct ReceiptArgs {
    /// The request id (or a unique prefix).
    pub id: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("serializable")
}

/// Runs a `forget` subcommand.
pub async fn run(args: ForgetArgs) -> Result<(), CliError> {
    let path = args
        .config
        .ok_or_else(|| CliError::Usage("sluice forget needs --config FILE".into()))?;
    let config = Config::load(&path)?;
    match args.action {
        ForgetAction::Request(a) => request(&config, a).await,
        ForgetAction::Apply(a) => apply(&config, a).await,
        ForgetAction::Verify(a) => verify(&config, a).await,
        ForgetAction::Status(a) => status(&config, a).await,
        ForgetAction::Receipt(a) => {
            let mut ledger = erase::open_ledger(&config).await?;
            let requests = ledger.requests().await?;
            let request = erase::find_request(&requests, &a.id)?;
            println!("{}", json(&receipt::receipt(request, now_ms())));
            Ok(())
        }
    }
}

async fn request(config: &Config, args: RequestArgs) -> Result<(), CliError> {
    let mut keys = args
        .keys
        .iter()
        .map(|k| SubjectKey::parse(k).map_err(|e| CliError::Usage(format!("--key: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.keys_file {
        keys.extend(read_keys_file(file)?);
    }
    let tables = match (args.all, args.tables.is_empty()) {
        (true, _) => TableChoice::All,
        (false, false) => TableChoice::Named(args.tables.clone()),
        (false, true) => {
            return Err(CliError::Usage(
                "name the tables to erase from with --tables a,b or --all".into(),
            ))
        }
    };
    let filed = erase::file_requests(config, &keys, &tables, &args.reason, now_ms()).await?;
    if args.json {
        println!("{}", json(&filed));
        return Ok(());
    }
    for f in &filed {
        let note = if f.new { "filed" } else { "already filed" };
        println!(
            "{}  {}  {note}  tables: {}",
            f.id,
            f.key,
            f.tables.join(", ")
        );
    }
    let new = filed.iter().filter(|f| f.new).count();
    println!(
        "{new} new request(s), {} already filed; deadline in {}",
        filed.len() - new,
        config.erasure.deadline
    );
    Ok(())
}

async fn apply(config: &Config, args: ApplyArgs) -> Result<(), CliError> {
    let worker = format!("cli-{}", crate::ingest::worker_id());
    let run = erase::apply_under_lease(config, &worker, args.wait).await?;
    if args.json {
        println!("{}", json(&run));
        return Ok(());
    }
    if run.applied.is_empty() {
        println!("no pending erasure requests");
    }
    for t in &run.applied {
        let commit = t.version.map_or_else(
            || "no commit needed".to_string(),
            |v| format!("version {v}"),
        );
        println!(
            "{}: {} request(s), {} key(s): {} of {} files in range, {} read, {} rewritten ({:.1} MiB), {} rows deleted, {commit} ({:.1}s)",
            t.table,
            t.requests,
            t.keys,
            t.files_in_range,
            t.files_total,
            t.files_read,
            t.files_rewritten,
            t.bytes_rewritten as f64 / (1 << 20) as f64,
            t.rows_deleted,
            t.seconds
        );
    }
    for p in &run.purged {
        println!(
            "{}: purged {} request(s): {} files vacuumed, log cut at checkpoint {} ({} log files deleted)",
            p.table,
            p.requests.len(),
            p.files_vacuumed,
            p.checkpoint_version,
            p.log_files_deleted
        );
        for (id, hits) in &p.held {
            println!(
                "{}: request {id} stays deleted, the key is still in {} object(s) (e.g. {}); the next run purges again",
                p.table,
                hits.len(),
                hits[0]
            );
        }
    }
    Ok(())
}

async fn verify(config: &Config, args: VerifyArgs) -> Result<(), CliError> {
    let result =
        erase::verify_request_with_key(config, &args.id, args.full, now_ms(), args.key.as_ref())
            .await?;
    if args.json {
        println!("{}", json(&result));
    } else {
        for t in &result.tables {
            let verdict = if t.passed { "clean" } else { "KEY FOUND" };
            println!(
                "{}: {verdict}: {} live files read, {} objects ({:.1} MiB) scanned",
                t.table,
                t.live_files_checked,
                t.objects_scanned,
                t.bytes_scanned as f64 / (1 << 20) as f64
            );
            for hit in &t.hits {
                println!("  {}: {}", hit.object, hit.found);
            }
        }
        println!(
            "request {}: {}",
            result.request_id,
            if result.passed {
                "verified"
            } else {
                "verification failed (recorded)"
            }
        );
    }
    if result.passed {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "request {} is not erased everywhere yet",
            result.request_id
        )))
    }
}

async fn status(config: &Config, args: StatusArgs) -> Result<(), CliError> {
    let mut ledger = erase::open_ledger(config).await?;
    let requests = ledger.requests().await?;
    let selected: Vec<&erase::ledger::Request> = match &args.id {
        Some(id) => vec![erase::find_request(&requests, id)?],
        None => requests.iter().collect(),
    };
    let now = now_ms();
    let retention = config.maintenance.vacuum_retention.0;
    let rows: Vec<receipt::StatusRow> = selected
        .iter()
        .map(|r| receipt::status_row(r, now, retention))
        .collect();
    if args.json {
        println!("{}", json(&rows));
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:<9}  {:<20}  {:>9}  risk",
        "id", "key", "state", "deadline", "days left"
    );
    for row in &rows {
        println!(
            "{:<36}  {:<24}  {:<9}  {:<20}  {:>9}  {}",
            row.id,
            row.key,
            format!("{:?}", row.state).to_lowercase(),
            row.deadline,
            row.days_left,
            row.risk
        );
    }
    let risky = rows
        .iter()
        .filter(|r| r.risk == "at_risk" || r.risk == "overdue")
        .count();
    if risky > 0 {
        println!("{risky} request(s) at risk of missing their deadline");
    }
    Ok(())
}
