//! A small SMTP server inside the test process, so tests see exactly what lettre sends
//! over a real socket: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, no TLS, no AUTH.
//! It can be switched to refuse mail permanently (5xx) or temporarily (4xx) to play a
//! broken mail server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How the server answers `MAIL FROM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// `250`: every mail accepted and recorded.
    Accept,
    /// `550`: refused for good.
    RefusePermanently,
    /// `451`: try again later.
    RefuseTemporarily,
}

/// One email as received.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address, without the angle brackets.
    pub from: String,
    /// Every `RCPT TO` address, in order, without the angle brackets.
    pub to: Vec<String>,
    /// Headers and body as sent (dot-unstuffed).
    pub data: String,
}

#[derive(Default)]
struct State {
    mails: Vec<ReceivedMail>,
    refused: usize,
}

/// A running test SMTP server; stops when dropped.
pub struct TestSmtp {
    /// The loopback address it listens on.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mode: tokio::sync::watch::Sender<SmtpMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestSmtp {
    /// Starts a server on a free loopback port, answering in `mode`.
    pub async fn start(mode: SmtpMode) -> Self {
        let listener = crate::free_listener().await;
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (mode_tx, mode_rx) = tokio::sync::watch::channel(mode);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let st = st.clone();
                let mode = mode_rx.clone();
                tokio::spawn(async move {
                    let _ = session(socket, st, mode).await;
                });
            }
        });
        Self {
            addr,
            state,
            mode: mode_tx,
            task,
        }
    }

    /// Changes how the following `MAIL FROM`s are answered; sessions already open switch too.
    pub fn set_mode(&self, mode: SmtpMode) {
        let _ = self.mode.send(mode);
    }

    /// Every email accepted so far.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.state.lock().expect("smtp state").mails.clone()
    }

    /// How many `MAIL FROM` were refused.
    pub fn refused(&self) -> usize {
        self.state.lock().expect("smtp state").refused
    }

    /// Waits until at least `n` emails arrived (panics after 20 s).
    pub async fn wait_for(&self, n: usize) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} emails, got {}: {mails:?}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The recipients of every email received so far, sorted.
    pub fn recipients(&self) -> Vec<String> {
        let mut all: Vec<String> = self.mails().into_iter().flat_map(|m| m.to).collect();
        all.sort();
        all
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg.rfind('>').unwrap_or(arg.len());
    arg.get(start..end).unwrap_or("").trim().to_owned()
}

async fn session(
    socket: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    mode: tokio::sync::watch::Receiver<SmtpMode>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 testkit ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-testkit\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 testkit\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            match *mode.borrow() {
                SmtpMode::Accept => {
                    from = address(&line[10..]);
                    to.clear();
                    b"250 OK\r\n"
                }
                SmtpMode::RefusePermanently => {
                    state.lock().expect("smtp state").refused += 1;
                    b"550 5.7.1 mail refused by test server\r\n"
                }
                SmtpMode::RefuseTemporarily => {
                    state.lock().expect("smtp state").refused += 1;
                    b"451 4.3.0 try again later\r\n"
                }
            }
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line[8..]));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push('\n');
            }
            state.lock().expect("smtp state").mails.push(ReceivedMail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 OK queued\r\n"
        } else if upper == "RSET" {
            to.clear();
            b"250 OK\r\n"
        } else if upper == "NOOP" {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
