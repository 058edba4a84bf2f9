//! `sluice compact TABLE`: bin-pack small files into files near a target size.

use super::CliError;
use crate::config::ByteSize;
use crate::maintain::compact::{compact, planned_bytes, CompactOptions, DEFAULT_TARGET_SIZE};
use crate::maintain::files::parse_partition_filter;

/// Arguments of `sluice compact`.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// Output file size.
    #[arg(long, default_value_t = ByteSize(DEFAULT_TARGET_SIZE), value_parser = parse_size)]
    pub target_size: ByteSize,
    /// Files at or above this size are left alone (default: 3/4 of the target).
    #[arg(long, value_parser = parse_size)]
    pub min_file_size: Option<ByteSize>,
    /// Only partitions with these values, e.g. `--partition date=2024-05-01`.
    #[arg(long)]
    pub partition: Vec<String>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses a size argument.
pub fn parse_size(text: &str) -> Result<ByteSize, String> {
    ByteSize::parse(text)
}

/// Runs the compaction and prints its metrics.
pub async fn run(args: CompactArgs) -> Result<(), CliError> {
    let mut table = super::open_table(&args.table).await?;
    let options = CompactOptions {
        target_size: args.target_size.0,
        min_file_size: args
            .min_file_size
            .map_or(args.target_size.0 * 3 / 4, |s| s.0),
        partition_filter: parse_partition_filter(&args.partition).map_err(CliError::Usage)?,
        key_column: None,
    };
    let total = planned_bytes(&table, &options)?;
    let bar = super::progress_bar(total, "{bytes}/{total_bytes} compacted");
    let metrics = compact(&mut table, &options, &|done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics).expect("json"));
    } else {
        println!(
            "compacted {} partitions: {} files ({}) -> {} files ({}) in {} commits, {} bins aborted by concurrent commits, {:.1}s",
            metrics.partitions,
            metrics.files_in,
            ByteSize(metrics.bytes_in),
            metrics.files_out,
            ByteSize(metrics.bytes_out),
            metrics.bins_committed,
            metrics.bins_aborted,
            metrics.seconds
        );
    }
    Ok(())
}
