//! What an email says and how it leaves: the [`EmailSender`] seam with two implementations,
//! [`smtp::SmtpEmailSender`] (lettre) and [`StubEmailSender`] (logs and keeps emails, for
//! development and tests), chosen at start-up from `EMAIL_SENDER`.
//!
//! Each email goes to one recipient only, so no member sees another's address. The chat
//! title, the sender's name and the text are user input: they are stripped of control
//! characters in the subject (no header tricks) and HTML-escaped in the HTML part.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;

pub mod smtp;

/// One email to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The one recipient's address.
    pub to_address: String,
    /// The recipient's display name for the To header.
    pub to_name: String,
    /// One line, already stripped of control characters.
    pub subject: String,
    /// The plain-text part.
    pub text_body: String,
    /// The HTML part, user input escaped.
    pub html_body: String,
}

/// What the notifier knows about a message when it writes the email.
#[derive(Debug, Clone)]
pub struct MessageContent<'a> {
    /// The chat the message was sent to.
    pub chat_id: i64,
    /// As the chat's owner named it: user input.
    pub chat_title: &'a str,
    /// Who sent the message: user input.
    pub sender_username: &'a str,
    /// The message itself: user input.
    pub text: &'a str,
}

/// Why an email was not sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The server refused it for good (5xx, a bad address): retrying will not help.
    #[error("refused permanently: {0}")]
    Permanent(String),
    /// A temporary refusal (4xx), a timeout or a lost connection: worth retrying.
    #[error("temporary failure: {0}")]
    Transient(String),
}

/// Delivers one email; implementations do not retry, the notifier does by the error's kind.
#[async_trait]
pub trait EmailSender: Send + Sync + 'static {
    /// Sends `email`; Ok once the server accepted it.
    async fn send(&self, email: &Email) -> Result<(), SendError>;
}

/// Keeps one line of user input fit for a header: no control characters, bounded length.
fn header_safe(s: &str, max_chars: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > max_chars {
        let mut cut: String = trimmed.chars().take(max_chars).collect();
        cut.push('…');
        cut
    } else {
        trimmed.to_owned()
    }
}

/// Escapes text for HTML element content and attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The email telling `to_name` about a message.
pub fn render(message: &MessageContent<'_>, to_address: &str, to_name: &str) -> Email {
    let sender = header_safe(message.sender_username, 64);
    let chat = if message.chat_title.trim().is_empty() {
        format!("chat #{}", message.chat_id)
    } else {
        format!("“{}”", header_safe(message.chat_title, 80))
    };
    let subject = format!("{sender} in {chat}");
    let text_body = format!(
        "Hi {to_name},\n\n{sender} wrote in {chat}:\n\n{text}\n\n-- \nYou get this email because you are a member of this chat.\n",
        text = message.text,
    );
    let html_body = format!(
        "<p>Hi {to},</p>\n<p><strong>{sender}</strong> wrote in {chat}:</p>\n<blockquote style=\"white-space: pre-wrap\">{text}</blockquote>\n<p style=\"color:#888\">You get this email because you are a member of this chat.</p>\n",
        to = html_escape(to_name),
        sender = html_escape(&sender),
        chat = html_escape(&chat),
        text = html_escape(message.text),
    );
    Email {
        to_address: to_address.to_owned(),
        to_name: to_name.to_owned(),
        subject,
        text_body,
        html_body,
    }
}

/// Logs every email and keeps it for inspection; sends nothing. For development
/// (`EMAIL_SENDER=stub`) and tests.
#[derive(Clone, Default)]
pub struct StubEmailSender {
    sent: Arc<Mutex<VecDeque<Email>>>,
    record: Option<std::sync::mpsc::Sender<String>>,
}

/// Emails the stub keeps in memory; older ones are only in the record file, if any.
const STUB_KEPT: usize = 1000;

impl StubEmailSender {
    /// A stub that keeps emails in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stub that also appends every email as one JSON line to `path`, so a person (or a
    /// test driving another process) can see what would have been sent.
    ///
    /// One thread of its own writes the file, whole lines at a time, and flushes whenever it
    /// has nothing queued: a busy server "sends" tens of thousands of emails a second, and
    /// a blocking task per email cost more than the rest of the delivery. The line is queued
    /// when `send` returns and on disk a moment later; a file that cannot be written is
    /// logged, since the record is a convenience and the email counts as sent.
    pub fn with_record_file(path: std::path::PathBuf) -> Self {
        let (lines, queue) = std::sync::mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("stub-email-record".into())
            .spawn(move || write_records(&path, queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the stub email record writer failed");
        }
        Self {
            record: Some(lines),
            ..Self::default()
        }
    }

    /// Every email "sent" so far, oldest first.
    pub fn sent(&self) -> Vec<Email> {
        match self.sent.lock() {
            Ok(s) => s.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }
}

#[async_trait]
impl EmailSender for StubEmailSender {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        tracing::info!(to = %email.to_address, subject = %email.subject, "stub email (not sent)");
        if let Some(lines) = &self.record {
            let line = serde_json::json!({
                "to": email.to_address,
                "to_name": email.to_name,
                "subject": email.subject,
                "text": email.text_body,
            });
            // The writer only stops with the process.
            let _ = lines.send(line.to_string());
        }
        let mut sent = match self.sent.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if sent.len() >= STUB_KEPT {
            sent.pop_front();
        }
        sent.push_back(email.clone());
        Ok(())
    }
}

/// Appends every queued line to `path` until the stub is dropped.
fn write_records(path: &std::path::Path, queue: std::sync::mpsc::Receiver<String>) {
    use std::io::Write;
    let mut file = None;
    while let Ok(first) = queue.recv() {
        if file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "opening the stub email record failed");
                    continue;
                }
            }
        }
        let Some(out) = file.as_mut() else { continue };
        let mut written = writeln!(out, "{first}");
        while written.is_ok() {
            match queue.try_recv() {
                Ok(line) => written = writeln!(out, "{line}"),
                Err(_) => break,
            }
        }
        if let Err(e) = written.and_then(|()| out.flush()) {
            tracing::error!(path = %path.display(), error = %e, "writing the stub email record failed");
            file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stub_records_every_email_as_a_json_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sent.jsonl");
        let stub = StubEmailSender::with_record_file(path.clone());
        let m = MessageContent {
            chat_id: 1,
            chat_title: "t",
            sender_username: "alice",
            text: "hi",
        };
        for to in ["a@example.com", "b@example.com", "c@example.com"] {
            stub.send(&render(&m, to, "x")).await.expect("sent");
        }
        let mut lines = Vec::new();
        for _ in 0..200 {
            lines = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() >= 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let to: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["to"].to_string()
            })
            .collect();
        assert_eq!(
            to,
            [
                "\"a@example.com\"",
                "\"b@example.com\"",
                "\"c@example.com\""
            ]
        );
        assert_eq!(stub.sent().len(), 3);
    }

    #[test]
    fn email_names_chat_and_sender_and_escapes_text() {
        let m = MessageContent {
            chat_id: 3,
            chat_title: "Team\r\nBcc: evil@example.com",
            sender_username: "alice",
            text: "<script>alert(1)</script> & more",
        };
        let e = render(&m, "bob@example.com", "bob");
        assert!(!e.subject.contains('\n') && !e.subject.contains('\r'));
        assert!(e.subject.contains("alice") && e.subject.contains("Team"));
        assert!(e
            .html_body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(!e.html_body.contains("<script>"));
        assert!(e.text_body.contains("<script>alert(1)</script> & more"));
        assert_eq!(e.to_address, "bob@example.com");
    }

    #[test]
    fn untitled_chat_is_named_by_id() {
        let m = MessageContent {
            chat_id: 42,
            chat_title: " ",
            sender_username: "alice",
            text: "hi",
        };
        assert_eq!(render(&m, "b@x", "b").subject, "alice in chat #42");
    }
}
