//! `sluice checkpoint TABLE`: write a checkpoint and clean up expired log files.

use super::CliError;

/// Arguments of `sluice checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// Keep expired log files.
    #[arg(long)]
    pub no_cleanup: bool,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Checkpoints the table and prints what was done.
pub async fn run(args: CheckpointArgs) -> Result<(), CliError> {
    let mut table = super::open_table(&args.table).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let metrics =
        crate::maintain::checkpoint::checkpoint(&mut table, !args.no_cleanup, now).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics).expect("json"));
    } else {
        println!(
            "checkpoint at version {}; {} expired log files deleted ({:.1}s)",
            metrics.version, metrics.log_files_deleted, metrics.seconds
        );
    }
    Ok(())
}
