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

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use grpc_chat_proto::chat::v1::{connect_response::Event, ConnectRequest, ConnectResponse};
use tokio::time::{sleep_until, Instant};
use tonic::{Code, Status, Streaming};

use crate::{
    client::{with_bearer, Client, Service},
    error::{CliError, ErrorKind, Op},
    input::{Input, InputEvent},
    live::{send_typing, Live},
    messages::{mark_read, send},
    output::{clean, message_line, preview_event_line, Printer},
};

/// The longest pause of [`REOPEN`] before its jitter.
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// The pauses before reopening a lost stream: 200 ms doubling to 2 s, each stretched by up
/// to as much again at random, so the clients a restarted server dropped do not all come
/// back in the same instant.
const REOPEN: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_max_delay(LONGEST_PAUSE)
    .without_max_times()
    .with_jitter();
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
    // The server reads a history_limit of 0 as "its default" (50): `--history 0` asks for
    // one and shows none of it, so that it means what it says.
    let state = match open(client, chat_id, 0, history.max(1)).await {
        Ok(s) => State::Live(Box::new(s)),
        Err(OpenError::Fatal(e)) => return Err(e),
        Err(OpenError::Transient(why)) => return Err(CliError::of(ErrorKind::Unavailable, why)),
    };
    let mut connection = Connection {
        printer: input.printer(),
        prompt: if input.interactive() {
            format!("#{chat_id}> ")
        } else {
            String::new()
        },
        keys: input.keys(),
        client,
        input,
        chat_id,
        quiet_history: history == 0,
        view: View::default(),
        live: Live::default(),
        marks,
        state,
        pauses: REOPEN.build(),
        outage: false,
        leave_by: None,
    };
    connection.run().await
}

/// One `connect` session's state: the stream (or the wait to reopen it), what has been
/// shown, and whether the user is on the way out.
struct Connection<'a> {
    client: &'a mut Client,
    input: &'a mut Input,
    printer: Printer,
    prompt: String,
    keys: std::sync::Arc<crate::input::KeysTyped>,
    chat_id: i64,
    /// `--history 0`: the history is read (to know where it ends) but not shown.
    quiet_history: bool,
    view: View,
    live: Live,
    marks: &'a mut Marks,
    state: State,
    /// The pauses before the next reopening tries ([`REOPEN`]), started again on success.
    pauses: ExponentialBackoff,
    /// Whether the loss of the stream has been said (once per outage).
    outage: bool,
    /// When leaving gives up waiting for the user's own messages to come back.
    leave_by: Option<Instant>,
}

impl Connection<'_> {
    /// Waits for the next thing to happen and handles it, until the user has left (and
    /// what they sent has been shown) or an error ends the stream.
    async fn run(&mut self) -> Result<(), CliError> {
        loop {
            if self.left() {
                return Ok(());
            }
            match self.next_event().await {
                Ev::Mark => {
                    self.marks
                        .flush(self.client, &self.printer, self.chat_id)
                        .await
                }
                Ev::Typed => {
                    // Best effort: a typing notice that does not go out is no loss.
                    if self.live.tell(Instant::now()) {
                        let _ = send_typing(self.client, self.chat_id).await;
                    }
                }
                Ev::Leave if self.leave_by.is_some() => return Ok(()),
                Ev::Leave | Ev::Input(InputEvent::Eof | InputEvent::Interrupted) => self.leave(),
                Ev::Input(InputEvent::Line(line)) => self.typed_line(&line).await,
                Ev::Stream(Ok(Some(resp))) => {
                    self.reconnected();
                    if let Some(event) = resp.event {
                        self.show(event)?;
                    }
                }
                Ev::Stream(Ok(None)) => self.lost(),
                Ev::Stream(Err(status)) => {
                    if let Some(fatal) = fatal(self.client, &status, self.chat_id) {
                        return Err(fatal);
                    }
                    self.lost();
                }
                Ev::Retry => self.reopen().await?,
            }
        }
    }

    /// Whether leaving is complete: everything sent has come back, the drain ran out, or
    /// there is no stream to wait on.
    fn left(&self) -> bool {
        let Some(deadline) = self.leave_by else {
            return false;
        };
        let caught_up = self.view.history_done && self.view.last_seq >= self.view.sent_max;
        caught_up || Instant::now() >= deadline || matches!(self.state, State::Down { .. })
    }

    fn leave(&mut self) {
        self.leave_by = Some(Instant::now() + DRAIN);
    }

    async fn next_event(&mut self) -> Ev {
        let leaving = self.leave_by.is_some();
        let far = Instant::now() + Duration::from_secs(3600);
        let leave_by = self.leave_by.unwrap_or(far);
        let mark_due = self.marks.due;
        match &mut self.state {
            State::Live(stream) => tokio::select! {
                r = stream.message() => Ev::Stream(r),
                l = self.input.next(&self.prompt), if !leaving => Ev::Input(l),
                _ = tokio::signal::ctrl_c(), if !leaving => Ev::Leave,
                _ = sleep_until(leave_by), if leaving => Ev::Leave,
                _ = sleep_until(mark_due.unwrap_or(far)), if mark_due.is_some() => Ev::Mark,
                _ = self.keys.typed(), if !leaving => Ev::Typed,
            },
            State::Down { retry_at } => tokio::select! {
                _ = sleep_until(*retry_at) => Ev::Retry,
                l = self.input.next(&self.prompt), if !leaving => Ev::Input(l),
                _ = tokio::signal::ctrl_c() => Ev::Leave,
            },
        }
    }

    /// A line typed at the prompt: a `/command`, or a message to send.
    async fn typed_line(&mut self, line: &str) {
        let text = match typed(line) {
            Typed::Nothing => return,
            Typed::Leave => return self.leave(),
            Typed::Help => {
                return self.printer.note(
                    "Type a message and press Enter to send it. /leave returns to the prompt; start a message with // to send one that begins with /.",
                )
            }
            Typed::Unknown(cmd) => {
                return self.printer.note(&format!(
                    "error: unknown command {cmd} (/leave returns, /help explains)"
                ))
            }
            Typed::Text(t) => t,
        };
        self.live.sent();
        match send(self.client, self.chat_id, text).await {
            Ok(m) => self.view.sent_max = self.view.sent_max.max(m.seq),
            Err(e) => self.printer.note(&format!("error: {e}")),
        }
    }

    /// The stream answered: an outage, if there was one, is over.
    fn reconnected(&mut self) {
        if self.outage {
            self.outage = false;
            self.printer.note("(reconnected)");
        }
        self.pauses = REOPEN.build();
    }

    /// Whether a message of the history (or after it) is to be printed.
    fn showing(&self) -> bool {
        self.view.history_done || !self.quiet_history
    }

    /// Shows one event of the stream; the chat's deletion ends the session.
    fn show(&mut self, event: Event) -> Result<(), CliError> {
        let printer = &self.printer;
        match event {
            Event::Message(m) if m.seq > self.view.last_seq => {
                self.view.last_seq = m.seq;
                if !m.sender_deleted {
                    self.view
                        .names
                        .insert(m.sender_id, m.sender_username.clone());
                }
                self.live.spoke(m.sender_id);
                if self.showing() {
                    printer.say(&message_line(&m));
                    self.marks.shown(m.seq);
                }
            }
            Event::Message(_) => {}
            Event::HistoryEnd(h) => self.history_end(h.last_seq),
            // A message already shown was edited: shown again, as it is now
            // (its line says "(edited)").
            Event::MessageEdited(e) => {
                if let Some(m) = e.message.filter(|m| m.seq <= self.view.last_seq) {
                    if self.showing() {
                        printer.say(&message_line(&m));
                    }
                }
            }
            // A link preview of a message already shown: under it when it is the
            // last one shown, else naming it.
            Event::MessagePreviewed(p) if p.seq <= self.view.last_seq => {
                if let Some(preview) = p.link_preview.filter(|_| self.showing()) {
                    printer.say(&preview_event_line(p.seq, self.view.last_seq, &preview));
                }
            }
            Event::MessagePreviewed(_) => {}
            Event::MessageDeleted(d) => printer.note(&format!("(message #{} was deleted)", d.seq)),
            Event::ChatDeleted(_) => {
                return Err(CliError::of(
                    ErrorKind::ChatDeleted,
                    format!("chat {} was deleted", self.chat_id),
                ));
            }
            Event::MemberAdded(a) => {
                if let Some(m) = a.member {
                    printer.note(&format!("({} joined the chat)", clean(&m.username)));
                    self.view.names.insert(m.user_id, m.username);
                }
            }
            // The stream's own user is told by the status that follows.
            Event::MemberRemoved(r)
                if self.client.session().map(|s| s.user_id) == Some(r.user_id) => {}
            Event::MemberRemoved(r) => {
                let who = self
                    .view
                    .names
                    .get(&r.user_id)
                    .map(|n| clean(n))
                    .unwrap_or_else(|| format!("user #{}", r.user_id));
                printer.note(&format!("({who} left the chat)"));
            }
            Event::Typing(t) => {
                if let Some(notice) = self.live.typing(&t, Instant::now()) {
                    printer.note(&notice);
                }
            }
            Event::Presence(p) => {
                if let Some(notice) = self.live.presence(&p) {
                    printer.note(&notice);
                }
            }
        }
        Ok(())
    }

    fn history_end(&mut self, last_seq: i64) {
        self.view.last_seq = self.view.last_seq.max(last_seq);
        if !self.view.history_done {
            self.view.history_done = true;
            if self.input.interactive() {
                self.printer.note(&format!(
                    "(connected to chat {}: type to send, /leave to return)",
                    self.chat_id
                ));
            }
        }
    }

    /// The stream ended or broke: said once per outage, and reopened after a pause.
    fn lost(&mut self) {
        if !self.outage {
            self.outage = true;
            self.printer.note(&lost_notice(self.view.last_seq));
        }
        self.wait_to_reopen();
    }

    /// No stream until the next pause of [`REOPEN`] has passed.
    fn wait_to_reopen(&mut self) {
        let pause = self.pauses.next().unwrap_or(LONGEST_PAUSE);
        let retry_at = Instant::now() + pause;
        self.state = State::Down { retry_at };
    }

    /// Reopens the stream after the last message shown; a refusal that will not change
    /// ends the session.
    async fn reopen(&mut self) -> Result<(), CliError> {
        let resume_limit = 500;
        match open(self.client, self.chat_id, self.view.last_seq, resume_limit).await {
            Ok(s) => self.state = State::Live(Box::new(s)),
            Err(OpenError::Fatal(e)) => return Err(e),
            // Still away: wait longer, without saying it again.
            Err(OpenError::Transient(_)) => self.wait_to_reopen(),
        }
        Ok(())
    }
}

/// A stream error that ends `connect` instead of reconnecting.
fn fatal(client: &Client, status: &Status, chat_id: i64) -> Option<CliError> {
    let error = client.error(status, Service::Chat, Op::Chat(chat_id));
    match error.kind() {
        ErrorKind::ChatDeleted | ErrorKind::MembershipEnded | ErrorKind::HiddenChat => Some(error),
        ErrorKind::Refused
            if matches!(
                status.code(),
                Code::NotFound | Code::PermissionDenied | Code::InvalidArgument
            ) =>
        {
            Some(error)
        }
        // Anything else (a lagging client, a restarting server, an expired token) is cured
        // by reopening, which also refreshes the token.
        _ => None,
    }
}

/// The line said once per outage: the live messages stopped and will come back by
/// themselves. Whatever the status said ("live events interrupted; reconnect with
/// after_seq=3", a transport error) is for programs, and this loop already does what it
/// asks: the line says it in a person's words.
fn lost_notice(last_seq: i64) -> String {
    if last_seq > 0 {
        format!(
            "(connection to live messages lost; reconnecting by itself and catching up after message #{last_seq}...)"
        )
    } else {
        "(connection to live messages lost; reconnecting by itself...)".to_owned()
    }
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

/// Token troubles are final; an unreachable or unavailable auth server is worth retrying.
fn classify(e: CliError) -> OpenError {
    if e.kind().retryable() {
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
