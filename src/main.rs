//! The `sluice` command: parse arguments, start logging, run the subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    sluice::telemetry::init_logging(cli.log_format, cli.verbosity());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(sluice::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::from(error.exit_code())
        }
    }
}
