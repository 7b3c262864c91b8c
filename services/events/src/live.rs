//! The ephemeral events of a chat (typing, presence beats and queries, and the online
//! changes a fan-out makes of them): their types, their payloads on the bus, and what a
//! stream sends for each. Apart from chat-service's `presence.rs`, which produces and
//! consumes them, so that the bus can carry them without depending on presence's
//! bookkeeping.

use prost::Message as _;

use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};

/// One replica's online users of one chat (the payload of `<prefix>_live.<chat>.presence`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Beat {
    /// The chat the users are online in.
    #[prost(int64, tag = "1")]
    pub chat_id: i64,
    /// The publishing replica, random per process start.
    #[prost(uint64, tag = "2")]
    pub replica: u64,
    /// Grows with every beat of the replica: an older one is ignored.
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// Everyone online in the chat through this replica; empty: none (a goodbye).
    #[prost(message, repeated, tag = "4")]
    pub users: Vec<pb::OnlineMember>,
}

/// A fan-out that just started asks the replicas for their beats
/// (`<prefix>_live.<chat>.presence_query`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Query {
    /// The chat whose beats are asked for.
    #[prost(int64, tag = "1")]
    pub chat_id: i64,
}

/// An ephemeral event. The first three travel on the bus; `Changed` is made by a fan-out
/// for its own streams and never published.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A member is typing.
    Typing(pb::Typing),
    /// A replica's online users of the chat.
    Beat(Beat),
    /// A fan-out asks for beats.
    Query(Query),
    /// A change of the chat's online set, numbered by the fan-out's roster (see
    /// chat-service's `presence::Roster::online`).
    Changed(u64, pb::Presence),
}

impl LiveEvent {
    /// The chat the event belongs to.
    pub fn chat_id(&self) -> i64 {
        match self {
            LiveEvent::Typing(t) => t.chat_id,
            LiveEvent::Beat(b) => b.chat_id,
            LiveEvent::Query(q) => q.chat_id,
            LiveEvent::Changed(_, p) => p.chat_id,
        }
    }

    /// The last token of its subject.
    pub fn kind(&self) -> &'static str {
        match self {
            LiveEvent::Typing(_) => "typing",
            LiveEvent::Beat(_) => "presence",
            LiveEvent::Query(_) => "presence_query",
            LiveEvent::Changed(..) => "presence_changed",
        }
    }

    /// What a stream sends for it, if anything.
    pub fn to_event(&self) -> Option<Event> {
        match self {
            LiveEvent::Typing(t) => Some(Event::Typing(t.clone())),
            LiveEvent::Changed(_, p) => Some(Event::Presence(p.clone())),
            LiveEvent::Beat(_) | LiveEvent::Query(_) => None,
        }
    }

    /// What a stream of `caller` (None: a service) sends for it: nothing about the
    /// caller's own typing or presence (a stream's own user is in its snapshot), no change
    /// its snapshot (taken at change `snapshot_at`) already holds, and nothing for the
    /// replicas' bookkeeping.
    pub fn for_stream(&self, caller: Option<i64>, snapshot_at: u64) -> Option<Event> {
        let about = match self {
            LiveEvent::Typing(t) => t.user_id,
            LiveEvent::Changed(n, _) if *n <= snapshot_at => return None,
            LiveEvent::Changed(_, p) => p.user_id,
            LiveEvent::Beat(_) | LiveEvent::Query(_) => return None,
        };
        if caller == Some(about) {
            return None;
        }
        self.to_event()
    }

    /// The payload on NATS; `None` for what is never published.
    pub fn encode(&self) -> Option<Vec<u8>> {
        match self {
            LiveEvent::Typing(t) => Some(t.encode_to_vec()),
            LiveEvent::Beat(b) => Some(b.encode_to_vec()),
            LiveEvent::Query(q) => Some(q.encode_to_vec()),
            LiveEvent::Changed(..) => None,
        }
    }

    /// Reads a payload published under `kind`.
    pub fn decode(kind: &str, payload: &[u8]) -> anyhow::Result<Self> {
        Ok(match kind {
            "typing" => LiveEvent::Typing(pb::Typing::decode(payload)?),
            "presence" => LiveEvent::Beat(Beat::decode(payload)?),
            "presence_query" => LiveEvent::Query(Query::decode(payload)?),
            other => anyhow::bail!("unknown live event kind {other:?}"),
        })
    }
}
