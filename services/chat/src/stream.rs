//! One `Connect` stream after its checks: the history, then the live events, in seq order
//! with no gap and no duplicate.
//!
//! The stream joins the chat's fan-out before it reads the history, so whatever commits
//! after the join arrives live and whatever committed before is in the history; the
//! overlap is dropped by seq ([`Cursor::sent_upto`]). What each live event means for this
//! stream (send it, skip it, end the stream) is decided by [`Cursor::deliver`], a plain
//! function of the event and of what was sent, so that the async part only moves items.
//!
//! The stream itself is the state machine tonic polls: no task and no channel per stream,
//! which is most of what an idle stream would otherwise keep in memory. A client that goes
//! away drops it, and with it the subscription and its presence.

use std::sync::Arc;

use chat_common::{
    error::{reasons, with_reason},
    Shutdown,
};
use chat_events::ChatEvent;
use futures::Stream;
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use tonic::{Code, Status};

use crate::{
    convert::message_to_pb,
    domain::ChatId,
    hub::{Ended, Subscription},
    presence::{self, Presence},
    store::{ChatStore, HistoryFrom, MessageRecord},
};

/// The most messages one read of the history returns; a resumed stream reads on until
/// it has caught up.
const PAGE: i64 = 500;

/// What a stream was asked for and who asks.
pub(crate) struct Opened {
    /// The chat.
    pub chat_id: ChatId,
    /// The caller's user id (none for a service).
    pub me: Option<i64>,
    /// The caller's id and name while they are online in the chat (users only).
    pub who: Option<(i64, String)>,
    /// Resume after this seq (0: start with the latest `history_limit` messages).
    pub after_seq: i64,
    /// How many of the latest messages a fresh stream starts with.
    pub history_limit: i64,
    /// Whether typing and presence events are wanted.
    pub live: bool,
}

impl Opened {
    /// Where its history starts: a page after `after_seq` when resuming, else the latest
    /// `history_limit` messages.
    pub fn history_from(&self) -> HistoryFrom {
        if self.after_seq > 0 {
            HistoryFrom::After(self.after_seq, PAGE)
        } else {
            HistoryFrom::Latest(self.history_limit)
        }
    }
}

/// The items of one stream: its history, `HistoryEnd`, a presence snapshot when asked
/// for, then live events until the client leaves, the server shuts down, or an event
/// ends the stream (the chat deleted, the caller removed, the stream fell behind).
/// `first` is the history's first page when the caller read it already (after the join),
/// else the stream reads it.
pub(crate) fn run(
    opened: Opened,
    first: Option<Vec<MessageRecord>>,
    store: Arc<dyn ChatStore>,
    mut sub: Subscription,
    presence: Arc<Presence>,
    shutdown: Shutdown,
) -> impl Stream<Item = Result<pb::ConnectResponse, Status>> + Send {
    async_stream::stream! {
        let _active = ActiveStream::new();
        let _here = match &opened.who {
            Some((id, name)) => {
                Some(presence.enter_announced(opened.chat_id.0, *id, name.clone()).await)
            }
            None => None,
        };
        let mut cursor = Cursor {
            chat_id: opened.chat_id,
            me: opened.me,
            live: opened.live,
            snapshot_at: 0,
            sent_upto: opened.after_seq,
        };
        let mut page = match first {
            Some(page) => Ok(page),
            None => store.history(opened.chat_id, opened.history_from()).await,
        };
        loop {
            let batch = match page {
                Ok(b) => b,
                Err(e) => {
                    yield Err(chat_common::error::internal(&e));
                    return;
                }
            };
            let full = batch.len() as i64 == PAGE && opened.after_seq > 0;
            for m in &batch {
                cursor.sent_upto = cursor.sent_upto.max(m.seq);
                yield Ok(response(Event::Message(message_to_pb(m))));
            }
            if !full {
                break;
            }
            page = store.messages_after(opened.chat_id, cursor.sent_upto, None, PAGE).await;
        }
        yield Ok(response(Event::HistoryEnd(pb::HistoryEnd { last_seq: cursor.sent_upto })));
        if opened.live {
            // Presence changes up to the snapshot's are in it.
            let (online, at) = sub.online().await;
            cursor.snapshot_at = at;
            let me_named = opened.who.as_ref().map(|(id, name)| (*id, name.as_str()));
            yield Ok(response(Event::Presence(presence::snapshot(opened.chat_id.0, online, me_named))));
        }
        loop {
            let event = tokio::select! {
                _ = shutdown.wait() => {
                    yield Err(Status::unavailable("server is shutting down; reconnect"));
                    break;
                }
                e = sub.rx.recv() => e,
            };
            let Some(event) = event else {
                yield Err(ended(sub.ended(), cursor.sent_upto));
                break;
            };
            match cursor.deliver(&event) {
                Delivery::Skip => {}
                Delivery::Send(r) => yield Ok(r),
                Delivery::End(last, status) => {
                    yield Ok(last);
                    yield Err(status);
                    break;
                }
            }
        }
    }
}

fn response(event: Event) -> pb::ConnectResponse {
    pb::ConnectResponse { event: Some(event) }
}

/// The status that ends a stream whose fan-out closed it.
fn ended(why: Ended, sent_upto: i64) -> Status {
    match why {
        Ended::Overflow => with_reason(
            Code::ResourceExhausted,
            format!("stream fell behind; reconnect with after_seq={sent_upto}"),
            reasons::STREAM_BEHIND,
        ),
        Ended::Unavailable => Status::unavailable(format!(
            "live events interrupted; reconnect with after_seq={sent_upto}"
        )),
    }
}

/// What one live event means for one stream.
#[derive(Debug)]
enum Delivery {
    /// Nothing for this stream.
    Skip,
    /// One response to send.
    Send(pb::ConnectResponse),
    /// A last response, then the status that ends the stream.
    End(pb::ConnectResponse, Status),
}

/// Where one stream stands: what it has sent and what it wants.
struct Cursor {
    chat_id: ChatId,
    me: Option<i64>,
    live: bool,
    /// The presence snapshot's position: changes up to it are in the snapshot.
    snapshot_at: u64,
    /// The highest seq sent; a message at or below it is not sent again.
    sent_upto: i64,
}

impl Cursor {
    fn deliver(&mut self, event: &ChatEvent) -> Delivery {
        match event {
            ChatEvent::MessageCreated(m, _) if m.seq > self.sent_upto => {
                self.sent_upto = m.seq;
                Delivery::Send(response(Event::Message(m.clone())))
            }
            ChatEvent::MessageCreated(..) => Delivery::Skip,
            ChatEvent::ChatDeleted { chat_id } => Delivery::End(
                response(Event::ChatDeleted(pb::ChatDeleted { chat_id: *chat_id })),
                with_reason(
                    Code::NotFound,
                    format!("chat {chat_id} was deleted"),
                    reasons::CHAT_DELETED,
                ),
            ),
            // Only for a message this stream sent: one it has yet to send is read from
            // storage with its new text (or its preview).
            ChatEvent::MessageEdited(m) if m.seq > self.sent_upto => Delivery::Skip,
            ChatEvent::MessagePreviewed { seq, .. } if *seq > self.sent_upto => Delivery::Skip,
            e @ ChatEvent::MemberRemoved { user_id, .. } if Some(*user_id) == self.me => {
                Delivery::End(
                    e.to_response(),
                    with_reason(
                        Code::NotFound,
                        format!("you are no longer a member of chat {}", self.chat_id.0),
                        reasons::MEMBERSHIP_ENDED,
                    ),
                )
            }
            e @ (ChatEvent::MessageEdited(_)
            | ChatEvent::MessagePreviewed { .. }
            | ChatEvent::MessageDeleted { .. }
            | ChatEvent::MemberAdded { .. }
            | ChatEvent::MemberRemoved { .. }) => Delivery::Send(e.to_response()),
            ChatEvent::Live(_) if !self.live => Delivery::Skip,
            ChatEvent::Live(e) => match e.for_stream(self.me, self.snapshot_at) {
                Some(event) => Delivery::Send(response(event)),
                None => Delivery::Skip,
            },
        }
    }
}

/// Counts a live stream in `chat_streams_active` for as long as it exists.
struct ActiveStream;

impl ActiveStream {
    fn new() -> Self {
        metrics::gauge!("chat_streams_active").increment(1.0);
        Self
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::gauge!("chat_streams_active").decrement(1.0);
    }
}
