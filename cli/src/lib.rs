//! The `chat` terminal client as a library; `main.rs` only parses the command line and
//! calls [`run`].
//!
//! The pieces: `args` (the command line, shared by the prompt), `client` (connections,
//! tokens kept fresh), `session` (the token file), `commands` (what each command does),
//! `connect` (the live stream), `live` (typing and presence in it), `input` (reading lines
//! beside a stream), `repl` (the prompt),
//! `output` (how things look), `error` (every failure as one readable line), `pending`
//! (the keys of sends whose outcome is not known yet) and `trace` (`--trace`: the trace a
//! command starts).

#![warn(missing_docs)]

pub mod args;
pub mod client;
pub mod commands;
pub mod connect;
pub mod error;
pub mod input;
pub mod live;
pub mod messages;
pub mod output;
pub mod pending;
pub mod repl;
pub mod session;
pub mod trace;

use std::process::ExitCode;

use args::Cli;
use client::{Client, Servers};
use commands::App;
use output::note;

/// Runs one command, or the prompt when none is given.
pub async fn run(cli: Cli) -> ExitCode {
    let client = match Servers::from_args(&cli.servers).and_then(|s| Client::new(s, cli.trace)) {
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
    app.client.tracer.flush().await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
