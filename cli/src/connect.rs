//! `connect`: a chat's history, then its live messages, while typed lines are sent to it.
//!
//! The server guarantees seq order with no gap and no duplicate within one stream; across a
//! dropped stream the CLI keeps that promise itself. It remembers the last seq it printed,
//! reopens the stream with `after_seq` set to it (backing off while the server is away) and
//! skips anything at or below it, so a reconnect shows every missed message exactly once.
//!
//! The loop waits on three things at once: the stream (or the reconnect timer), the next
//! typed line, and Ctrl-C. On leaving (`/leave`, Ctrl-C, end of input) it waits briefly
//! until the history and the user's own sent messages have been shown, so piped use
//! (`printf 'connect 3\nhi\n' | chat`) prints the same as typing does.
//!
//! Messages it shows are marked read on the server (`MarkRead`), batched: at most one call
//! per [`MARK_EVERY`] while messages arrive, and one more on the way out for the rest.
//! Only shown messages count: `--history 0` marks nothing of the history it hides.
//!
//! Typing and presence (who is typing, who is online) are notices; `live.rs` decides
//! which, and this loop also tells the server when the user types at the terminal.

use std::time::Duration;

use grpc_chat_proto::{
    chat::v1::{connect_response::Event, ConnectRequest, ConnectResponse},
    reasons,
};
use tokio::time::{sleep_until, Instant};
use tonic::{Code, Status, Streaming};

use crate::{
    client::{with_bearer, Client, Service},
    commands::{mark_read, send},
    error::{CliError, Op},
    input::{Input, InputEvent},
    live::{send_typing, Live},
    output::{clean, message_line, preview_event_line, Printer},
};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// How long leaving waits for the user's own messages to come back over the stream.
const DRAIN: Duration = Duration::from_secs(3);
/// How often, at most, shown messages are marked read while they arrive.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// Why a stream could not be (re)opened.
enum OpenError {
    /// Try again later.
    Transient(String),
    /// Give up: not a member, logged out, ...
    Fatal(CliError),
}

enum State {
    Live(Box<Streaming<ConnectResponse>>),
    Down { retry_at: Instant },
}

// One at a time, moved once from the select into the match: its size costs nothing,
// and boxing the common case (a stream item) would allocate for each.
#[allow(clippy::large_enum_variant)]
enum Ev {
    Stream(Result<Option<ConnectResponse>, Status>),
    Input(InputEvent),
    Retry,
    Leave,
    Mark,
    /// The user edited the line at the terminal.
    Typed,
}

/// What has been shown.
#[derive(Default)]
struct View {
    last_seq: i64,
    history_done: bool,
    /// The highest seq of a message this session sent.
    sent_max: i64,
    /// Members' names by user id, from the messages and joins seen, to name who leaves.
    names: std::collections::HashMap<i64, String>,
}

/// The read marker this session moves as it shows messages.
#[derive(Default)]
struct Marks {
    /// The highest seq shown.
    shown: i64,
    /// The highest seq the server has been told of.
    marked: i64,
    /// When the next call is due, while shown messages wait to be marked.
    due: Option<Instant>,
    /// Whether a failed call was reported (once is enough).
    warned: bool,
}

impl Marks {
    fn shown(&mut self, seq: i64) {
        self.shown = self.shown.max(seq);
        if self.shown > self.marked && self.due.is_none() {
            self.due = Some(Instant::now() + MARK_EVERY);
        }
    }

    /// Tells the server what was shown since the last call. A failure is said once and
    /// left for the next call (a later message, or leaving) to make good.
    async fn flush(&mut self, client: &mut Client, printer: &Printer, chat_id: i64) {
        self.due = None;
        if self.shown <= self.marked {
            return;
        }
        match mark_read(client, chat_id, self.shown).await {
            Ok(stored) => self.marked = stored.max(self.shown),
            Err(e) if !self.warned => {
                self.warned = true;
                printer.note(&format!("(could not mark messages read: {e})"));
            }
            Err(_) => {}
        }
    }
}

/// `connect`: shows the last `history` messages, then new ones as they arrive, and sends the lines
/// typed, until `/leave` or Ctrl-C; messages shown are marked read as it goes. A dropped stream is
/// resumed; an error that ends it (the chat deleted, the user removed) is returned.
pub async fn run(
    client: &mut Client,
    input: &mut Input,
    chat_id: i64,
    history: u32,
) -> Result<(), CliError> {
    let mut marks = Marks::default();
    let keys = input.keys();
    keys.arm(true);
    let result = stream(client, input, chat_id, history, &mut marks).await;
    keys.arm(false);
    // Ended by an error (the chat deleted, no longer a member): nothing left to mark.
    if result.is_ok() {
        marks.flush(client, &input.printer(), chat_id).await;
    }
    result
}

async fn stream(
    client: &mut Client,
    input: &mut Input,
    chat_id: i64,
    history: u32,
    marks: &mut Marks,
) -> Result<(), CliError> {
    // The time zone's warning, if any, before the prompt and the stream start printing.
    crate::output::zone();
    let printer = input.printer();
    let prompt = if input.interactive() {
        format!("#{chat_id}> ")
    } else {
        String::new()
    };
    let mut view = View::default();
    let mut live = Live::default();
    let keys = input.keys();
    // The server reads a history_limit of 0 as "its default" (50): `--history 0` asks for
    // one and shows none of it, so that it means what it says.
    let quiet_history = history == 0;
    let mut state = match open(client, chat_id, 0, history.max(1)).await {
        Ok(s) => State::Live(Box::new(s)),
        Err(OpenError::Fatal(e)) => return Err(e),
        Err(OpenError::Transient(why)) => return Err(CliError::new(why)),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut outage = false;
    let mut leave_by: Option<Instant> = None;

    loop {
        if let Some(deadline) = leave_by {
            let caught_up = view.history_done && view.last_seq >= view.sent_max;
            if caught_up || Instant::now() >= deadline || matches!(state, State::Down { .. }) {
                return Ok(());
            }
        }
        let leaving = leave_by.is_some();
        let far = Instant::now() + Duration::from_secs(3600);
        let ev = match &mut state {
            State::Live(stream) => tokio::select! {
                r = stream.message() => Ev::Stream(r),
                l = input.next(&prompt), if !leaving => Ev::Input(l),
                _ = tokio::signal::ctrl_c(), if !leaving => Ev::Leave,
                _ = sleep_until(leave_by.unwrap_or(far)), if leaving => Ev::Leave,
                _ = sleep_until(marks.due.unwrap_or(far)), if marks.due.is_some() => Ev::Mark,
                _ = keys.typed(), if !leaving => Ev::Typed,
            },
            State::Down { retry_at } => tokio::select! {
                _ = sleep_until(*retry_at) => Ev::Retry,
                l = input.next(&prompt), if !leaving => Ev::Input(l),
                _ = tokio::signal::ctrl_c() => Ev::Leave,
            },
        };
        match ev {
            Ev::Mark => marks.flush(client, &printer, chat_id).await,
            Ev::Typed => {
                // Best effort: a typing notice that does not go out is no loss.
                if live.tell(Instant::now()) {
                    let _ = send_typing(client, chat_id).await;
                }
            }
            Ev::Leave => {
                if leaving {
                    return Ok(());
                }
                leave_by = Some(Instant::now() + DRAIN);
            }
            Ev::Input(InputEvent::Eof | InputEvent::Interrupted) => {
                leave_by = Some(Instant::now() + DRAIN);
            }
            Ev::Input(InputEvent::Line(line)) => {
                let text = match typed(&line) {
                    Typed::Nothing => continue,
                    Typed::Leave => {
                        leave_by = Some(Instant::now() + DRAIN);
                        continue;
                    }
                    Typed::Help => {
                        printer.note(
                            "Type a message and press Enter to send it. /leave returns to the prompt; start a message with // to send one that begins with /.",
                        );
                        continue;
                    }
                    Typed::Unknown(cmd) => {
                        printer.note(&format!(
                            "error: unknown command {cmd} (/leave returns, /help explains)"
                        ));
                        continue;
                    }
                    Typed::Text(t) => t,
                };
                live.sent();
                match send(client, chat_id, text).await {
                    Ok(m) => view.sent_max = view.sent_max.max(m.seq),
                    Err(e) => printer.note(&format!("error: {e}")),
                }
            }
            Ev::Stream(Ok(Some(resp))) => {
                if outage {
                    outage = false;
                    printer.note("(reconnected)");
                }
                backoff = FIRST_BACKOFF;
                match resp.event {
                    Some(Event::Message(m)) if m.seq > view.last_seq => {
                        view.last_seq = m.seq;
                        if !m.sender_deleted {
                            view.names.insert(m.sender_id, m.sender_username.clone());
                        }
                        live.spoke(m.sender_id);
                        if view.history_done || !quiet_history {
                            printer.say(&message_line(&m));
                            marks.shown(m.seq);
                        }
                    }
                    Some(Event::Message(_)) => {}
                    Some(Event::HistoryEnd(h)) => {
                        view.last_seq = view.last_seq.max(h.last_seq);
                        if !view.history_done {
                            view.history_done = true;
                            if input.interactive() {
                                printer.note(&format!(
                                    "(connected to chat {chat_id}: type to send, /leave to return)"
                                ));
                            }
                        }
                    }
                    // A message already shown was edited: shown again, as it is now
                    // (its line says "(edited)").
                    Some(Event::MessageEdited(e)) => {
                        if let Some(m) = e.message.filter(|m| m.seq <= view.last_seq) {
                            if view.history_done || !quiet_history {
                                printer.say(&message_line(&m));
                            }
                        }
                    }
                    // A link preview of a message already shown: under it when it is the
                    // last one shown, else naming it.
                    Some(Event::MessagePreviewed(p)) if p.seq <= view.last_seq => {
                        if let Some(preview) = p.link_preview {
                            if view.history_done || !quiet_history {
                                printer.say(&preview_event_line(p.seq, view.last_seq, &preview));
                            }
                        }
                    }
                    Some(Event::MessagePreviewed(_)) => {}
                    Some(Event::MessageDeleted(d)) => {
                        printer.note(&format!("(message #{} was deleted)", d.seq));
                    }
                    Some(Event::ChatDeleted(_)) => {
                        return Err(CliError::new(format!("chat {chat_id} was deleted")));
                    }
                    Some(Event::MemberAdded(a)) => {
                        if let Some(m) = a.member {
                            printer.note(&format!("({} joined the chat)", clean(&m.username)));
                            view.names.insert(m.user_id, m.username);
                        }
                    }
                    // The stream's own user is told by the status that follows.
                    Some(Event::MemberRemoved(r))
                        if client.session().map(|s| s.user_id) == Some(r.user_id) => {}
                    Some(Event::MemberRemoved(r)) => {
                        let who = view
                            .names
                            .get(&r.user_id)
                            .map(|n| clean(n))
                            .unwrap_or_else(|| format!("user #{}", r.user_id));
                        printer.note(&format!("({who} left the chat)"));
                    }
                    None => {}
                    Some(Event::Typing(t)) => {
                        if let Some(notice) = live.typing(&t, Instant::now()) {
                            printer.note(&notice);
                        }
                    }
                    Some(Event::Presence(p)) => {
                        if let Some(notice) = live.presence(&p) {
                            printer.note(&notice);
                        }
                    }
                }
            }
            Ev::Stream(Ok(None)) => {
                lost(&printer, &mut outage, view.last_seq);
                state = down(&mut backoff);
            }
            Ev::Stream(Err(status)) => {
                if let Some(fatal) = fatal(client, &status, chat_id) {
                    return Err(fatal);
                }
                lost(&printer, &mut outage, view.last_seq);
                state = down(&mut backoff);
            }
            Ev::Retry => {
                let resume_limit = 500;
                match open(client, chat_id, view.last_seq, resume_limit).await {
                    Ok(s) => state = State::Live(Box::new(s)),
                    Err(OpenError::Fatal(e)) => return Err(e),
                    Err(OpenError::Transient(_)) => state = down(&mut backoff),
                }
            }
        }
    }
}

/// A stream error that ends `connect` instead of reconnecting.
fn fatal(client: &Client, status: &Status, chat_id: i64) -> Option<CliError> {
    let reason = reasons::reason(status);
    match (status.code(), reason.as_deref()) {
        (_, Some(reasons::CHAT_DELETED)) => {
            Some(CliError::new(format!("chat {chat_id} was deleted")))
        }
        (_, Some(reasons::MEMBERSHIP_ENDED)) => Some(CliError::new(format!(
            "you are no longer a member of chat {chat_id}"
        ))),
        (Code::NotFound | Code::PermissionDenied | Code::InvalidArgument, _) => {
            Some(client.error(status, Service::Chat, Op::Chat(chat_id)))
        }
        // Anything else (a lagging client, a restarting server, an expired token) is cured
        // by reopening, which also refreshes the token.
        _ => None,
    }
}

/// Says once per outage that the live messages stopped and that they will come back by
/// themselves. Whatever the status said ("live events interrupted; reconnect with
/// after_seq=3", a transport error) is for programs, and this loop already does what it
/// asks: the line says it in a person's words.
fn lost(printer: &Printer, outage: &mut bool, last_seq: i64) {
    if !*outage {
        *outage = true;
        printer.note(&lost_notice(last_seq));
    }
}

fn lost_notice(last_seq: i64) -> String {
    if last_seq > 0 {
        format!(
            "(connection to live messages lost; reconnecting by itself and catching up after message #{last_seq}...)"
        )
    } else {
        "(connection to live messages lost; reconnecting by itself...)".to_owned()
    }
}

fn down(backoff: &mut Duration) -> State {
    let retry_at = Instant::now() + *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    State::Down { retry_at }
}

/// Opens the stream, refreshing the token once if the server rejects it.
async fn open(
    client: &mut Client,
    chat_id: i64,
    after_seq: i64,
    history_limit: u32,
) -> Result<Streaming<ConnectResponse>, OpenError> {
    let request = |token: &str| {
        with_bearer(
            tonic::Request::new(ConnectRequest {
                chat_id,
                after_seq,
                history_limit: history_limit.min(500) as i32,
                typing_and_presence: true,
            }),
            token,
        )
    };
    let token = client.access_token().await.map_err(classify)?;
    let mut chat = client.chat.clone();
    let result = match chat.connect(request(&token)).await {
        Err(s) if s.code() == Code::Unauthenticated => {
            let token = client.refresh().await.map_err(classify)?;
            chat.connect(request(&token)).await
        }
        other => other,
    };
    match result {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => match fatal(client, &s, chat_id) {
            Some(e) => Err(OpenError::Fatal(e)),
            None if s.code() == Code::Unauthenticated => Err(OpenError::Fatal(client.error(
                &s,
                Service::Chat,
                Op::Chat(chat_id),
            ))),
            None => Err(OpenError::Transient(
                client
                    .error(&s, Service::Chat, Op::Chat(chat_id))
                    .to_string(),
            )),
        },
    }
}

/// Token troubles are final; an unreachable auth server is worth retrying.
fn classify(e: CliError) -> OpenError {
    if e.message().starts_with("cannot reach") || e.message().contains("unavailable") {
        OpenError::Transient(e.to_string())
    } else {
        OpenError::Fatal(e)
    }
}

enum Typed {
    Nothing,
    Leave,
    Help,
    Unknown(String),
    Text(String),
}

fn typed(line: &str) -> Typed {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Typed::Nothing;
    }
    if let Some(rest) = trimmed.strip_prefix("//") {
        return Typed::Text(format!("/{rest}"));
    }
    match trimmed {
        "/leave" | "/quit" | "/exit" => Typed::Leave,
        "/help" | "/?" => Typed::Help,
        _ if trimmed.starts_with('/') => {
            Typed::Unknown(trimmed.split_whitespace().next().unwrap_or("").to_owned())
        }
        _ => Typed::Text(line.trim_end().to_owned()),
    }
}
