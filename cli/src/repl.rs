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
                if let Some(usage) = clap_usage(&e) {
                    note(&usage);
                }
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

/// A clap error as one line, without its `error: ` prefix. The arguments clap lists on
/// the lines below its first (the missing ones) are joined into it: alone, the first line
/// reads "the following required arguments were not provided:" and names none.
pub fn clap_error_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid command");
    let first = first.strip_prefix("error: ").unwrap_or(first).trim();
    let listed: Vec<&str> = lines
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    if listed.is_empty() {
        first.to_owned()
    } else {
        format!("{first} {}", listed.join(" "))
    }
}

/// The command's usage line (`Usage: chat send_message <CHAT_ID> <FROM> <TEXT>...`) when
/// arguments are missing: the shortest way to show what to type.
pub fn clap_usage(e: &clap::Error) -> Option<String> {
    if e.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let rendered = e.render().to_string();
    rendered
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_arguments_are_named_with_the_usage() {
        let e = PromptLine::try_parse_from(["send_message", "1"]).expect_err("incomplete");
        assert_eq!(
            clap_error_line(&e),
            "the following required arguments were not provided: <FROM> <TEXT>..."
        );
        let usage = clap_usage(&e).expect("usage");
        assert!(
            usage.starts_with("Usage:")
                && usage.contains("send_message <CHAT_ID> <FROM> <TEXT>..."),
            "{usage}"
        );
        let e = PromptLine::try_parse_from(["frobnicate"]).expect_err("unknown");
        assert_eq!(clap_error_line(&e), "unrecognized subcommand 'frobnicate'");
        assert_eq!(clap_usage(&e), None);
    }
}
