//! `sluice generate`: write demo ride events as NDJSON (optionally gzipped),
//! for backfills, replays and benchmarks.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use super::CliError;
use crate::demo::events::RideEvents;

/// Arguments of `sluice generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output file (`.gz` compresses).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Share of malformed records.
    #[arg(long, default_value_t = 0.0)]
    pub bad_ratio: f64,
    /// Distinct riders.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Random seed (same seed, same events).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Writes the events.
pub fn run(args: GenerateArgs) -> Result<(), CliError> {
    let file = std::fs::File::create(&args.out)
        .map_err(|e| CliError::Usage(format!("--out {}: {e}", args.out.display())))?;
    let mut out: Box<dyn Write> = if args.out.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(BufWriter::with_capacity(1 << 20, file))
    };
    let mut events = RideEvents::new(args.seed, args.users, args.bad_ratio);
    let mut bytes = 0u64;
    for _ in 0..args.count {
        let event = events.next_event();
        bytes += event.payload.len() as u64 + 1;
        out.write_all(&event.payload)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    eprintln!(
        "wrote {} events ({}) to {}",
        args.count,
        crate::config::ByteSize(bytes),
        args.out.display()
    );
    Ok(())
}
