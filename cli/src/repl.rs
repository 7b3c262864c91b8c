//! The interactive prompt: read a line, parse it with the same clap definitions as the
//! command line, run it, print its result or its one-line error, repeat.
//!
//! A failed command never ends the prompt; `exit`, Ctrl-D or the end of piped input does.
//! The exit status of a piped session is that of its last command, so a script can still
//! tell whether it worked.

use clap::{error::ErrorKind, Parser};

use crate::{
    args::{PromptCommand, PromptLine},
    commands::App,
    input::InputEvent,
    output::{note, say},
};

/// Runs the prompt until `exit`; returns whether the last command succeeded.
pub async fn run(app: &mut App) -> bool {
    let interactive = app.input().interactive();
    if interactive {
        say(&format!(
            "chat ({}): type `help` for commands, `exit` to leave.",
            app.client.servers.chat.uri
        ));
    }
    let prompt = if interactive { "chat> " } else { "" };
    let mut ok = true;
    loop {
        let event = tokio::select! {
            e = app.input().next(prompt) => e,
            _ = tokio::signal::ctrl_c() => InputEvent::Eof,
        };
        let line = match event {
            InputEvent::Line(l) => l,
            InputEvent::Interrupted => continue,
            InputEvent::Eof => return ok,
        };
        let words = match shell_words::split(&line) {
            Ok(w) => w,
            Err(_) => {
                note("error: unbalanced quotes");
                ok = false;
                continue;
            }
        };
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let command = match PromptLine::try_parse_from(&words) {
            Ok(p) => p.command,
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                say(e.render().to_string().trim_end());
                continue;
            }
            Err(e) => {
                note(&format!("error: {} (try `help`)", clap_error_line(&e)));
                ok = false;
                continue;
            }
        };
        let command = match command {
            PromptCommand::Exit => return ok,
            PromptCommand::Run(c) => c,
        };
        let result = tokio::select! {
            r = app.run(command) => r,
            _ = tokio::signal::ctrl_c() => {
                note("(interrupted)");
                Ok(())
            }
        };
        ok = match result {
            Ok(()) => true,
            Err(e) => {
                note(&format!("error: {e}"));
                false
            }
        };
    }
}

/// The first line of a clap error, without its `error: ` prefix.
pub fn clap_error_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid command");
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_owned()
}
