//! How things look on the terminal, and where they are written.
//!
//! Results go to stdout, notices (reconnecting, how to leave) and errors to stderr, so that
//! `chat history 3 > log.txt` keeps only messages. Text from other users is printed with
//! control characters removed: a message must not be able to move the cursor, recolour or
//! retitle the reader's terminal.

use std::{
    ffi::OsStr,
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use grpc_chat_proto::chat::v1::{Chat, LinkPreview, Member, Message};
use jiff::{tz::TimeZone, Timestamp, Zoned};

/// One chat message: `[13:45] alice: hi` (with the date when it is not from today), and
/// ` (edited)` after the text of an edited one. Continuation lines of a multi-line text
/// are indented under the first; a link preview follows on a line of its own
/// ([`preview_line`]).
pub fn message_line(m: &Message) -> String {
    let when = m
        .created_at
        .as_ref()
        .map(|t| time_of(t.seconds))
        .unwrap_or_else(|| "--:--".to_owned());
    let sender = if m.sender_deleted {
        "(deleted user)".to_owned()
    } else {
        clean(&m.sender_username)
    };
    let prefix = format!("[{when}] {sender}: ");
    let pad = " ".repeat(prefix.chars().count());
    let text = clean_multiline(&m.text).replace('\n', &format!("\n{pad}"));
    let edited = if m.edited_at.is_some() {
        " (edited)"
    } else {
        ""
    };
    let line = format!("{prefix}{text}{edited}");
    match &m.link_preview {
        Some(p) => format!("{line}\n{}", preview_line(p)),
        None => line,
    }
}

/// The line of a link preview that arrives on a stream for message `seq`, when the newest
/// message shown is `last_seq`: under its message when that is the newest, else naming it
/// (`  (#3) ↳ ...`).
pub fn preview_event_line(seq: i64, last_seq: i64, p: &LinkPreview) -> String {
    let line = preview_line(p);
    if seq == last_seq {
        line
    } else {
        format!(
            "  (#{seq}){}",
            line.trim_start_matches(' ').replacen('↳', " ↳", 1)
        )
    }
}

/// A message's link preview, the line under it: `  ↳ Site — Title: description`, each
/// part left out when the page did not say, the description cut to one screen line.
pub fn preview_line(p: &LinkPreview) -> String {
    let head: Vec<String> = [&p.site_name, &p.title]
        .into_iter()
        .map(|s| clean(s.trim()))
        .filter(|s| !s.is_empty())
        .collect();
    let head = head.join(" — ");
    let mut description: String = clean(p.description.trim()).chars().take(200).collect();
    if p.description.chars().count() > 200 {
        description.push('…');
    }
    let body = match (head.is_empty(), description.is_empty()) {
        (false, false) => format!("{head}: {description}"),
        (false, true) => head,
        (true, false) => description,
        (true, true) => clean(&p.url),
    };
    format!("  ↳ {body}")
}

/// A moment (Unix seconds) in the shown zone: `13:45` today, `2026-12-05 13:45` before.
pub fn time_of(unix_seconds: i64) -> String {
    match Timestamp::from_second(unix_seconds) {
        Ok(t) => stamp(
            &t.to_zoned(zone().clone()),
            &Timestamp::now().to_zoned(zone().clone()),
        ),
        Err(_) => "--:--".to_owned(),
    }
}

fn stamp(t: &Zoned, now: &Zoned) -> String {
    if t.date() == now.date() {
        t.strftime("%H:%M").to_string()
    } else {
        t.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// The zone times are shown in: `TZ` when it is set, else the system's (`/etc/localtime`).
/// A `TZ` that names no zone, or a system without one, means UTC, and that is said once
/// on stderr: a silent UTC reads as the wrong time with nothing to tell why.
pub fn zone() -> &'static TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let tz = std::env::var_os("TZ");
        let (zone, warning) = resolve_zone(tz.as_deref(), TimeZone::try_system());
        if let Some(warning) = warning {
            note(&warning);
        }
        zone
    })
}

/// The zone for a `TZ` value (`None`: unset) and what looking the system zone up gave,
/// with the warning to print when it falls back to UTC.
fn resolve_zone(
    tz: Option<&OsStr>,
    system: Result<TimeZone, jiff::Error>,
) -> (TimeZone, Option<String>) {
    match (system, tz) {
        (Ok(zone), _) => (zone, None),
        (Err(_), Some(tz)) => (
            TimeZone::UTC,
            Some(format!(
                "warning: TZ={:?} is not a time zone known here; times are shown in UTC",
                tz.to_string_lossy()
            )),
        ),
        (Err(_), None) => (
            TimeZone::UTC,
            Some(
                "warning: this system's time zone is not known and TZ is not set; times are shown in UTC"
                    .to_owned(),
            ),
        ),
    }
}

/// One line of `chats`: `#3  Weekend plans  (3 members, 12 messages, 2 unread)`.
pub fn chat_line(c: &Chat) -> String {
    let title = if c.title.trim().is_empty() {
        "(no title)".to_owned()
    } else {
        clean(&c.title)
    };
    let plural = |n: i64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "#{}  {}  ({}, {}, {} unread)",
        c.id,
        title,
        plural(c.member_count.into(), "member"),
        plural(c.last_seq, "message"),
        c.unread_count
    )
}

/// One line of `members`: `alice (user ID 7)`.
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
    /// Prints through rustyline's external printer (at a terminal, while the prompt is reading).
    pub fn external(p: Box<dyn rustyline::ExternalPrinter + Send>) -> Self {
        Self {
            external: Some(Arc::new(Mutex::new(p))),
        }
    }

    /// Writes a result line (stdout), above the line being typed when there is one.
    pub fn say(&self, line: &str) {
        if !self.external_print(line) {
            say(line);
        }
    }

    /// Writes a notice (stderr), above the line being typed when there is one.
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
            edited_at: None,
            ..Default::default()
        }
    }

    #[test]
    fn a_link_preview_goes_under_its_message() {
        let now = Timestamp::now().as_second();
        let mut m = msg("see https://example.com/a", now);
        m.link_preview = Some(LinkPreview {
            url: "https://example.com/a".into(),
            title: "A \u{1b}[2Jtitle".into(),
            description: "What it says".into(),
            image_url: String::new(),
            site_name: "Example".into(),
        });
        let line = message_line(&m);
        assert!(
            line.ends_with(
                "alice: see https://example.com/a\n  ↳ Example — A [2Jtitle: What it says"
            ),
            "{line}"
        );
        let only_title = LinkPreview {
            title: "T".into(),
            ..Default::default()
        };
        assert_eq!(preview_line(&only_title), "  ↳ T");
        let long = LinkPreview {
            description: "d".repeat(500),
            ..Default::default()
        };
        assert_eq!(preview_line(&long).chars().count(), 4 + 200 + 1);
        let p = LinkPreview {
            title: "T".into(),
            site_name: "S".into(),
            ..Default::default()
        };
        assert_eq!(preview_event_line(3, 3, &p), "  ↳ S — T");
        assert_eq!(preview_event_line(2, 3, &p), "  (#2) ↳ S — T");
    }

    #[test]
    fn an_edited_message_says_so() {
        let now = Timestamp::now().as_second();
        let mut m = msg("fixed", now);
        assert!(message_line(&m).ends_with("alice: fixed"));
        m.edited_at = Some(prost_types::Timestamp {
            seconds: now,
            nanos: 0,
        });
        assert!(message_line(&m).ends_with("alice: fixed (edited)"));
    }

    #[test]
    fn message_of_today() {
        let now = Timestamp::now().to_zoned(zone().clone());
        let line = message_line(&msg("Привет 👋", now.timestamp().as_second()));
        assert_eq!(
            line,
            format!("[{}] alice: Привет 👋", now.strftime("%H:%M"))
        );
    }

    #[test]
    fn old_message_has_its_date() {
        let line = message_line(&msg("hi", 0));
        assert!(line.starts_with("[19"), "{line}");
    }

    #[test]
    fn escapes_are_removed_and_lines_indented() {
        let now = Timestamp::now().as_second();
        let line = message_line(&msg("a\u{1b}[31mred\nnext", now));
        assert!(
            line.ends_with("alice: a[31mred\n               next"),
            "{line}"
        );
    }

    #[test]
    fn an_unknown_zone_is_utc_and_said() {
        let bad = TimeZone::get("Invalid/Zone");
        assert!(bad.is_err());
        let (zone, warning) = resolve_zone(Some(OsStr::new("Invalid/Zone")), bad);
        assert_eq!(zone, TimeZone::UTC);
        assert_eq!(
            warning.as_deref(),
            Some("warning: TZ=\"Invalid/Zone\" is not a time zone known here; times are shown in UTC")
        );
        let (_, warning) = resolve_zone(None, TimeZone::get("Invalid/Zone"));
        assert!(warning.is_some_and(|w| w.contains("UTC")));
        let (zone, warning) = resolve_zone(None, Ok(TimeZone::fixed(jiff::tz::offset(9))));
        assert_eq!(zone, TimeZone::fixed(jiff::tz::offset(9)));
        assert_eq!(warning, None);
    }
}
