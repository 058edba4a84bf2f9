//! `sluice zorder TABLE --by COLS`: cluster rows so point lookups skip files.

use super::compact::parse_size;
use super::CliError;
use crate::config::ByteSize;
use crate::maintain::compact::DEFAULT_TARGET_SIZE;
use crate::maintain::files::parse_partition_filter;
use crate::maintain::zorder::{planned_bytes, zorder, ZOrderOptions};

/// Arguments of `sluice zorder`.
#[derive(Debug, clap::Args)]
pub struct ZOrderArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// Columns to cluster by, comma-separated (e.g. `user_id` or `user_id,city`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub by: Vec<String>,
    /// Output file size.
    #[arg(long, default_value_t = ByteSize(DEFAULT_TARGET_SIZE), value_parser = parse_size)]
    pub target_size: ByteSize,
    /// Memory for sorting; the rest spills to local disk.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub memory_budget: ByteSize,
    /// Most Z-order runs a partition keeps before merging the smallest.
    #[arg(long, default_value_t = 4)]
    pub max_runs: usize,
    /// Only partitions with these values, e.g. `--partition date=2024-05-01`.
    #[arg(long)]
    pub partition: Vec<String>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the Z-order and prints its metrics.
pub async fn run(args: ZOrderArgs) -> Result<(), CliError> {
    let mut table = super::open_table(&args.table).await?;
    let options = ZOrderOptions {
        columns: args.by.iter().map(|c| c.trim().to_string()).collect(),
        target_size: args.target_size.0,
        memory_budget: args.memory_budget.as_usize(),
        max_runs: args.max_runs,
        partition_filter: parse_partition_filter(&args.partition).map_err(CliError::Usage)?,
    };
    let total = planned_bytes(&table, &options)?;
    let bar = super::progress_bar(total, "{bytes}/{total_bytes} z-ordered");
    let metrics = zorder(&mut table, &options, &|done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics).expect("json"));
    } else {
        println!(
            "z-ordered {} partitions by {}: {} files ({}, of which {} already ordered) -> {} files ({}), {} rows, {} runs spilled ({}), {:.1}s",
            metrics.partitions,
            options.columns.join(","),
            metrics.files_in,
            ByteSize(metrics.bytes_in),
            ByteSize(metrics.ordered_bytes_rewritten),
            metrics.files_out,
            ByteSize(metrics.bytes_out),
            metrics.rows,
            metrics.spilled_runs,
            ByteSize(metrics.spilled_bytes),
            metrics.seconds
        );
    }
    Ok(())
}
