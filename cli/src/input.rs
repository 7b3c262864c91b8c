//! Reading lines from the user without blocking the async side.
//!
//! Reading stdin blocks, and while connected the CLI must read typed lines and print
//! arriving messages at the same time. So one thread owns stdin and reads a line whenever
//! it is asked to, with the prompt it is given; the async side asks and awaits the answer
//! on a channel, which it can do inside `select!` next to a stream.
//!
//! The thread reads only when asked (not ahead), so a command's output is printed before the
//! next prompt. At a terminal it uses rustyline (editing, history, Ctrl-C as a key); when
//! stdin is a pipe or a file it reads plain lines and prints no prompt, so scripts and tests
//! can drive the CLI.
//!
//! At a terminal the editor also reports typing: its hint hook runs after every edit of
//! the line, and while `connect` has armed [`KeysTyped`] a non-empty line that is not a
//! `/command` wakes it (`connect` then tells the server, at most every few seconds).
//! Piped input types nothing.

use std::{
    io::{BufRead, IsTerminal},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc, Arc,
    },
};

use tokio::sync::{mpsc, Notify};

use crate::output::Printer;

/// What the user did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEvent {
    /// A line the user entered.
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// Ctrl-D, or the end of piped input.
    Eof,
}

/// Lines from stdin, one per request.
pub struct Input {
    requests: std_mpsc::Sender<String>,
    events: mpsc::UnboundedReceiver<InputEvent>,
    /// A line was asked for and not yet received (the asking future was dropped, for
    /// example by `select!`); the next ask waits for that line instead of asking again.
    outstanding: bool,
    eof: bool,
    interactive: bool,
    printer: Printer,
    keys: Arc<KeysTyped>,
}

/// Wakes whoever armed it when the user edits the line at the terminal.
#[derive(Default)]
pub struct KeysTyped {
    armed: AtomicBool,
    typed: Notify,
}

impl KeysTyped {
    /// Starts (true) or stops (false) reporting typing.
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::Release);
    }

    /// Resolves at the next edit after arming (or one made since the last call).
    pub async fn typed(&self) {
        self.typed.notified().await
    }

    fn edited(&self, line: &str) {
        let trimmed = line.trim_start();
        if self.armed.load(Ordering::Acquire) && !trimmed.is_empty() && !trimmed.starts_with('/') {
            self.typed.notify_one();
        }
    }
}

/// The editor's helper: nothing but the hint hook, which never hints and reports typing.
struct TypingHelper(Arc<KeysTyped>);

impl rustyline::hint::Hinter for TypingHelper {
    type Hint = String;

    fn hint(&self, line: &str, _pos: usize, _ctx: &rustyline::Context<'_>) -> Option<String> {
        self.0.edited(line);
        None
    }
}

impl rustyline::completion::Completer for TypingHelper {
    type Candidate = String;
}
impl rustyline::highlight::Highlighter for TypingHelper {}
impl rustyline::validate::Validator for TypingHelper {}
impl rustyline::Helper for TypingHelper {}

type LineEditor = rustyline::Editor<TypingHelper, rustyline::history::DefaultHistory>;

impl Input {
    /// Starts the reader thread.
    pub fn start() -> Self {
        let (requests, rx) = std_mpsc::channel::<String>();
        let (tx, events) = mpsc::unbounded_channel();
        let interactive = std::io::stdin().is_terminal();
        let mut printer = Printer::default();
        let keys = Arc::new(KeysTyped::default());
        let editor = if interactive {
            LineEditor::new().ok().map(|mut e| {
                e.set_helper(Some(TypingHelper(keys.clone())));
                e
            })
        } else {
            None
        };
        let interactive = editor.is_some();
        if let Some(mut editor) = editor {
            if let Ok(p) = editor.create_external_printer() {
                printer = Printer::external(Box::new(p));
            }
            std::thread::spawn(move || read_with_editor(editor, rx, tx));
        } else {
            std::thread::spawn(move || read_plain(rx, tx));
        }
        Self {
            requests,
            events,
            outstanding: false,
            eof: false,
            interactive,
            printer,
            keys,
        }
    }

    /// Typing at the terminal (never fires for piped input).
    pub fn keys(&self) -> Arc<KeysTyped> {
        self.keys.clone()
    }

    /// Whether a person is typing at a terminal (prompts shown, passwords read without echo).
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// Prints safely while a line may be being typed.
    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// The next line. Cancel-safe: dropping the future loses no line.
    pub async fn next(&mut self, prompt: &str) -> InputEvent {
        if self.eof {
            return InputEvent::Eof;
        }
        if !self.outstanding {
            if self.requests.send(prompt.to_owned()).is_err() {
                self.eof = true;
                return InputEvent::Eof;
            }
            self.outstanding = true;
        }
        let event = self.events.recv().await.unwrap_or(InputEvent::Eof);
        self.outstanding = false;
        if event == InputEvent::Eof {
            self.eof = true;
        }
        event
    }

    /// Reads a password: without echo at a terminal, as the next line otherwise.
    pub async fn password(&mut self, prompt: &str) -> Option<String> {
        if self.interactive && !self.outstanding {
            let prompt = prompt.to_owned();
            return tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt).ok())
                .await
                .ok()
                .flatten();
        }
        match self.next("").await {
            InputEvent::Line(l) => Some(l),
            _ => None,
        }
    }
}

fn read_with_editor(
    mut editor: LineEditor,
    requests: std_mpsc::Receiver<String>,
    events: mpsc::UnboundedSender<InputEvent>,
) {
    use rustyline::error::ReadlineError;
    while let Ok(prompt) = requests.recv() {
        let event = match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                InputEvent::Line(line)
            }
            Err(ReadlineError::Interrupted) => InputEvent::Interrupted,
            Err(_) => InputEvent::Eof,
        };
        let end = event == InputEvent::Eof;
        if events.send(event).is_err() || end {
            return;
        }
    }
}

fn read_plain(requests: std_mpsc::Receiver<String>, events: mpsc::UnboundedSender<InputEvent>) {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    while requests.recv().is_ok() {
        let mut line = Vec::new();
        let event = match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => InputEvent::Eof,
            Ok(_) => {
                let line = String::from_utf8_lossy(&line);
                InputEvent::Line(line.trim_end_matches(['\n', '\r']).to_owned())
            }
        };
        let end = event == InputEvent::Eof;
        if events.send(event).is_err() || end {
            return;
        }
    }
}
