//! Typing and presence in `connect`: who is typing, who is online.
//!
//! The connect view is a stream of lines, not a screen, so "bob is typing…" cannot sit in
//! a status bar and fade. It is a notice printed when bob *starts* typing; it counts as
//! shown for [`TYPING_SHOWN`] after his last typing event (or until his message arrives),
//! and only after that can a new one be printed. Presence is a notice when a member comes
//! online or goes offline, and `(online: alice, bob)` after the history, when anyone
//! besides oneself is there (alone, it would say nothing worth a line). Notices go to
//! stderr like the others, so the `[HH:MM] name: text` lines on stdout stay as they were.
//!
//! The other way round, while the user edits a line at the terminal (see
//! `input::KeysTyped`), `connect` calls `SendTyping` at most every [`TYPING_EVERY`]; the
//! server forwards at most one call per 2 s anyway.

use std::{collections::HashMap, time::Duration};

use grpc_chat_proto::chat::v1::{Presence, SendTypingRequest, Typing};
use tokio::time::Instant;

use crate::{
    client::{authed_request, Client, Service},
    error::{CliError, Op},
    output::clean,
};

/// How often, at most, the CLI says the user is typing while they keep typing.
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
/// How long a "typing" notice counts as current after the last typing event.
pub const TYPING_SHOWN: Duration = Duration::from_secs(5);

/// Tells the chat's other members that the user is typing.
pub async fn send_typing(client: &mut Client, chat_id: i64) -> Result<bool, CliError> {
    let chat = client.chat.clone();
    let resp = client
        .authed(Service::Chat, Op::Chat(chat_id), |t| {
            let mut chat = chat.clone();
            let req = authed_request(SendTypingRequest { chat_id }, &t);
            async move { chat.send_typing(req).await }
        })
        .await?;
    Ok(resp.forwarded)
}

/// What the connect view knows of typing and presence.
#[derive(Default)]
pub struct Live {
    /// Members shown as typing, until when.
    typing: HashMap<i64, Instant>,
    /// When the user's own typing may next be told to the server.
    next_told: Option<Instant>,
}

impl Live {
    /// A member is typing: the notice to print, when it is news.
    pub fn typing(&mut self, t: &Typing, now: Instant) -> Option<String> {
        let shown = self.typing.insert(t.user_id, now + TYPING_SHOWN);
        match shown {
            Some(until) if until > now => None,
            _ => Some(format!("({} is typing…)", clean(&t.username))),
        }
    }

    /// A member's message arrived: their typing is over.
    pub fn spoke(&mut self, user_id: i64) {
        self.typing.remove(&user_id);
    }

    /// A presence event: the notice to print, if any.
    pub fn presence(&mut self, p: &Presence) -> Option<String> {
        if p.snapshot {
            if p.online_members.len() < 2 {
                return None;
            }
            let names: Vec<String> = p
                .online_members
                .iter()
                .map(|m| clean(&m.username))
                .collect();
            return Some(format!("(online: {})", names.join(", ")));
        }
        let name = clean(&p.username);
        if p.online {
            Some(format!("({name} is online)"))
        } else {
            self.typing.remove(&p.user_id);
            Some(format!("({name} went offline)"))
        }
    }

    /// Whether the user's typing should be told to the server now (and if so, it is
    /// counted as told).
    pub fn tell(&mut self, now: Instant) -> bool {
        match self.next_told {
            Some(at) if at > now => false,
            _ => {
                self.next_told = Some(now + TYPING_EVERY);
                true
            }
        }
    }

    /// The user sent a line: their next keystroke starts a new message, told at once.
    pub fn sent(&mut self) {
        self.next_told = None;
    }
}

#[cfg(test)]
mod tests {
    use grpc_chat_proto::chat::v1::OnlineMember;

    use super::*;

    fn typing(user_id: i64, name: &str) -> Typing {
        Typing {
            chat_id: 1,
            user_id,
            username: name.into(),
        }
    }

    #[test]
    fn typing_is_said_once_while_it_lasts() {
        let mut live = Live::default();
        let t0 = Instant::now();
        let bob = typing(2, "bob");
        assert_eq!(live.typing(&bob, t0).as_deref(), Some("(bob is typing…)"));
        assert_eq!(live.typing(&bob, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            live.typing(&bob, t0 + Duration::from_secs(6)),
            None,
            "kept alive"
        );
        assert!(
            live.typing(&bob, t0 + Duration::from_secs(12)).is_some(),
            "expired"
        );
        live.spoke(2);
        assert!(live.typing(&bob, t0 + Duration::from_secs(13)).is_some());
    }

    #[test]
    fn presence_notices() {
        let mut live = Live::default();
        let member = |id, name: &str| OnlineMember {
            user_id: id,
            username: name.into(),
        };
        let snapshot = |members| Presence {
            chat_id: 1,
            snapshot: true,
            online_members: members,
            ..Default::default()
        };
        assert_eq!(live.presence(&snapshot(vec![member(1, "alice")])), None);
        assert_eq!(
            live.presence(&snapshot(vec![member(1, "alice"), member(2, "bob")]))
                .as_deref(),
            Some("(online: alice, bob)")
        );
        let change = |online| Presence {
            chat_id: 1,
            user_id: 2,
            username: "bob\u{1b}[2J".into(),
            online,
            ..Default::default()
        };
        assert_eq!(
            live.presence(&change(true)).as_deref(),
            Some("(bob[2J is online)")
        );
        assert_eq!(
            live.presence(&change(false)).as_deref(),
            Some("(bob[2J went offline)")
        );
    }

    #[test]
    fn own_typing_is_told_every_few_seconds() {
        let mut live = Live::default();
        let t0 = Instant::now();
        assert!(live.tell(t0));
        assert!(!live.tell(t0 + Duration::from_secs(1)));
        assert!(live.tell(t0 + TYPING_EVERY));
        live.sent();
        assert!(live.tell(t0 + TYPING_EVERY + Duration::from_millis(10)));
    }
}
