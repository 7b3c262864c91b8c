//! The `chat` terminal client as a library; `main.rs` only parses the command line and
//! calls [`run`].
//!
//! The pieces: `args` (the command line, shared by the prompt), `client` (connections,
//! tokens kept fresh), `session` (the token file), `commands` (what each command does),
//! `connect` (the live stream), `input` (reading lines beside a stream), `repl` (the prompt),
//! `output` (how things look) and `error` (every failure as one readable line).

pub mod args;
pub mod client;
pub mod commands;
pub mod connect;
pub mod error;
pub mod input;
pub mod output;
pub mod repl;
pub mod session;

use std::process::ExitCode;

use args::Cli;
use client::{Client, Servers};
use commands::App;
use output::note;

/// Runs one command, or the prompt when none is given.
pub async fn run(cli: Cli) -> ExitCode {
    let client = match Servers::from_args(&cli.servers).and_then(Client::new) {
        Ok(c) => c,
        Err(e) => {
            note(&format!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut app = App::new(client);
    let ok = match cli.command {
        Some(command) => match app.run(command).await {
            Ok(()) => true,
            Err(e) => {
                note(&format!("error: {e}"));
                false
            }
        },
        None => repl::run(&mut app).await,
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
