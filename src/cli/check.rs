//! `sluice check TABLE --for bigquery|spark|all`: whether those readers can
//! read a Delta table (sluice's or another writer's); one line per finding,
//! exit status 1 when a reader would fail.

use super::CliError;
use crate::check::{check, Target};

/// Arguments of `sluice check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Table location: a path or URL.
    pub table: String,
    /// The readers to judge the table for.
    #[arg(long = "for", value_enum, default_value_t = Readers::All)]
    pub readers: Readers,
    /// Read at most this many data files' Parquet footers.
    #[arg(long, default_value_t = 1000)]
    pub max_files: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--for` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Readers {
    /// BigQuery (BigLake Delta Lake tables).
    Bigquery,
    /// Spark with delta-spark 3.
    Spark,
    /// Both.
    All,
}

/// Checks the table and prints the findings.
pub async fn run(args: CheckArgs) -> Result<(), CliError> {
    let targets = match args.readers {
        Readers::Bigquery => vec![Target::Bigquery],
        Readers::Spark => vec![Target::Spark],
        Readers::All => vec![Target::Bigquery, Target::Spark],
    };
    let table = super::open_table(&args.table).await?;
    let report = check(&table, &targets, args.max_files)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render());
    }
    if report.fails() {
        return Err(CliError::Findings(format!(
            "{}: a reader would fail (see the errors above)",
            args.table
        )));
    }
    Ok(())
}
