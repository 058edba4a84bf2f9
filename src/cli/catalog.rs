//! `sluice catalog --config FILE` (or `--root PATH|URL` for a lake without
//! a config at hand): every table of the lake and what it is (see
//! [`crate::catalog`]), as text, JSON (`--json`) or an HTML page
//! (`--html FILE`).

use std::path::PathBuf;

use super::CliError;
use crate::catalog;
use crate::config::{defaults, Config};

/// Arguments of `sluice catalog`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// The TOML config file (lake root, storage options, tables).
    #[arg(long, required_unless_present = "root", conflicts_with = "root")]
    pub config: Option<PathBuf>,
    /// A lake root (path or URL) to list instead: no configured tables,
    /// object store credentials from the environment.
    #[arg(long)]
    pub root: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write an HTML page to this file instead of printing text.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Files below this size count as small.
    #[arg(long, default_value_t = defaults::SMALL_FILE_BYTES)]
    pub small_file_bytes: u64,
}

/// Reads the lake and prints or writes its catalog.
pub async fn run(args: CatalogArgs) -> Result<(), CliError> {
    let config = match (&args.config, &args.root) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(root)) => Config::parse(
            &format!("[lake]\nroot = {}\n", toml::Value::String(root.clone())),
            "--root",
        )?,
        (None, None) => unreachable!("clap requires one"),
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let catalog = catalog::gather::read(&config, args.small_file_bytes, now_ms).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&catalog).expect("the catalog serializes")
        );
    } else if let Some(path) = &args.html {
        std::fs::write(path, catalog::html::render(&catalog))
            .map_err(|e| CliError::Usage(format!("cannot write `{}`: {e}", path.display())))?;
        eprintln!(
            "wrote the catalog of {} table(s) to {}",
            catalog.tables.len(),
            path.display()
        );
    } else {
        print!("{}", catalog::text::render(&catalog));
    }
    Ok(())
}
