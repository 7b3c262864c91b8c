//! `chat`: parse the command line, run it on a Tokio runtime, exit with its status.

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use chat_cli::{
    args::Cli,
    output::note,
    repl::{clap_error_line, clap_usage},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            note(&format!(
                "error: {} (see `chat --help`)",
                clap_error_line(&e)
            ));
            if let Some(usage) = clap_usage(&e) {
                note(&usage);
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note(&format!("error: cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(chat_cli::run(cli));
    // The stdin reader thread may be blocked in a read; do not wait for it.
    runtime.shutdown_background();
    code
}
