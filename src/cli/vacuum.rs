//! `sluice vacuum TABLE`: delete removed and orphaned files past the retention.

use std::time::Duration;

use super::CliError;
use crate::maintain::vacuum::{vacuum, VacuumOptions};

/// Arguments of `sluice vacuum`.
#[derive(Debug, clap::Args)]
pub struct VacuumArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// Keep files removed (or written) more recently than this.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// List what would be deleted without deleting it.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a retention below the table's deletedFileRetentionDuration.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Vacuums the table and prints the report.
pub async fn run(args: VacuumArgs) -> Result<(), CliError> {
    let table = super::open_table(&args.table).await?;
    let options = VacuumOptions {
        retention: args.retention,
        dry_run: args.dry_run,
        force_short_retention: args.force,
        clock: None,
    };
    let (_, report) = vacuum(table, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        let verb = if report.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        println!(
            "{verb} {} files and {} Kinesis position sidecars ({:.1}s)",
            report.files.len(),
            report.position_sidecars,
            report.seconds
        );
        for file in &report.files {
            println!("  {file}");
        }
    }
    Ok(())
}
