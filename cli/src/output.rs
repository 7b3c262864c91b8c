//! How things look on the terminal, and where they are written.
//!
//! Results go to stdout, notices (reconnecting, how to leave) and errors to stderr, so that
//! `chat history 3 > log.txt` keeps only messages. Text from other users is printed with
//! control characters removed: a message must not be able to move the cursor, recolour or
//! retitle the reader's terminal.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Local, TimeZone};
use grpc_chat_proto::chat::v1::{Chat, Member, Message};

/// One chat message: `[13:45] alice: hi` (with the date when it is not from today).
/// Continuation lines of a multi-line text are indented under the first.
pub fn message_line(m: &Message) -> String {
    let when = m
        .created_at
        .as_ref()
        .and_then(|t| Local.timestamp_opt(t.seconds, 0).single())
        .map(|t| stamp(t, Local::now()))
        .unwrap_or_else(|| "--:--".to_owned());
    let prefix = format!("[{when}] {}: ", clean(&m.sender_username));
    let pad = " ".repeat(prefix.chars().count());
    let text = clean_multiline(&m.text).replace('\n', &format!("\n{pad}"));
    format!("{prefix}{text}")
}

fn stamp(t: DateTime<Local>, now: DateTime<Local>) -> String {
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// One line of `chats`: `#3  Weekend plans  (3 members, 12 messages)`.
pub fn chat_line(c: &Chat) -> String {
    let title = if c.title.trim().is_empty() {
        "(no title)".to_owned()
    } else {
        clean(&c.title)
    };
    let plural = |n: i64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "#{}  {}  ({}, {})",
        c.id,
        title,
        plural(c.member_count.into(), "member"),
        plural(c.last_seq, "message")
    )
}

pub fn member_line(m: &Member) -> String {
    format!("{} (user ID {})", clean(&m.username), m.user_id)
}

/// Removes control characters (escape sequences included), keeping the text otherwise
/// intact: every script and emoji passes.
pub fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

fn clean_multiline(s: &str) -> String {
    s.chars()
        .filter(|c| *c == '\n' || *c == '\t' || !c.is_control())
        .collect()
}

/// Writes a result line to stdout. A closed stdout (`chat history 3 | head -1`) is not an
/// error worth a panic.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes a notice or an error to stderr.
pub fn note(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Prints while a line is being typed: through rustyline's external printer at a terminal
/// (the text appears above the line being edited instead of through it), plainly otherwise.
#[derive(Clone, Default)]
pub struct Printer {
    external: Option<Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>>,
}

impl Printer {
    pub fn external(p: Box<dyn rustyline::ExternalPrinter + Send>) -> Self {
        Self {
            external: Some(Arc::new(Mutex::new(p))),
        }
    }

    pub fn say(&self, line: &str) {
        if !self.external_print(line) {
            say(line);
        }
    }

    pub fn note(&self, line: &str) {
        if !self.external_print(line) {
            note(line);
        }
    }

    fn external_print(&self, line: &str) -> bool {
        match &self.external {
            Some(p) => match p.lock() {
                Ok(mut p) => p.print(format!("{line}\n")).is_ok(),
                Err(_) => false,
            },
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str, seconds: i64) -> Message {
        Message {
            chat_id: 1,
            seq: 1,
            sender_id: 1,
            sender_username: "alice".into(),
            text: text.into(),
            created_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        }
    }

    #[test]
    fn message_of_today() {
        let now = Local::now();
        let line = message_line(&msg("Привет 👋", now.timestamp()));
        assert_eq!(line, format!("[{}] alice: Привет 👋", now.format("%H:%M")));
    }

    #[test]
    fn old_message_has_its_date() {
        let line = message_line(&msg("hi", 0));
        assert!(line.starts_with("[19"), "{line}");
    }

    #[test]
    fn escapes_are_removed_and_lines_indented() {
        let now = Local::now().timestamp();
        let line = message_line(&msg("a\u{1b}[31mred\nnext", now));
        assert!(
            line.ends_with("alice: a[31mred\n               next"),
            "{line}"
        );
    }
}
