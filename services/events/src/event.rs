//! [`ChatEvent`], the one type both ends of the bus agree on, and its bytes.
//!
//! The payload of a stored event is the `ConnectResponse` a `Connect` stream would send for
//! it, protobuf-encoded: chat-service's streams forward it as it is, and the notifier reads
//! the same bytes without knowing anything else of chat-service. Ephemeral events
//! ([`ChatEvent::Live`]) have payloads of their own (`live.rs`) and never travel on the
//! stored subjects, so decoding one from there is an error.

use anyhow::Context;
use prost::Message as _;

use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};

use crate::live::LiveEvent;

/// The NATS header that carries a new message's membership version: how many times the
/// chat's membership had changed when the message was stored (chat-service's
/// `chats.members_version`, which every join and leave bumps under the chat's row lock, as
/// the message insert takes it). It travels beside the payload, not in it, because the
/// payload is what `Connect` streams send to clients. The notifier's member cache answers
/// for a message only when it was read at this version or later, so a member removed
/// before a message was stored never gets its email.
pub const MEMBERS_VERSION_HEADER: &str = "Chat-Members-Version";

/// One live event of a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// A message was stored, under the chat's membership version (see
    /// [`MEMBERS_VERSION_HEADER`]) when the publisher knows it.
    MessageCreated(pb::Message, Option<i64>),
    /// A message was deleted; its text is gone.
    MessageDeleted {
        /// The chat it was in.
        chat_id: i64,
        /// Its sequence number in the chat.
        seq: i64,
    },
    /// A message's text was replaced: the message as it is after the edit.
    MessageEdited(pb::Message),
    /// A chat was deleted with everything in it.
    ChatDeleted {
        /// The chat that is gone.
        chat_id: i64,
    },
    /// A user became a member.
    MemberAdded {
        /// The chat joined.
        chat_id: i64,
        /// Who joined.
        member: pb::Member,
    },
    /// A member left or was removed.
    MemberRemoved {
        /// The chat left.
        chat_id: i64,
        /// Who is no longer a member.
        user_id: i64,
    },
    /// A message got its link preview (stored with it by then).
    MessagePreviewed {
        /// The message's chat.
        chat_id: i64,
        /// The message's sequence number.
        seq: i64,
        /// The preview of its first https URL.
        preview: pb::LinkPreview,
    },
    /// Typing and presence: never stored, off the stored subjects (see the module doc).
    Live(LiveEvent),
}

impl ChatEvent {
    /// The chat the event is about; its subject and fan-out are the chat's.
    pub fn chat_id(&self) -> i64 {
        match self {
            ChatEvent::MessageCreated(m, _) | ChatEvent::MessageEdited(m) => m.chat_id,
            ChatEvent::MessageDeleted { chat_id, .. }
            | ChatEvent::ChatDeleted { chat_id }
            | ChatEvent::MemberAdded { chat_id, .. }
            | ChatEvent::MemberRemoved { chat_id, .. }
            | ChatEvent::MessagePreviewed { chat_id, .. } => *chat_id,
            ChatEvent::Live(e) => e.chat_id(),
        }
    }

    /// The event's name, the last part of its subject (`message_created`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ChatEvent::MessageCreated(..) => "message_created",
            ChatEvent::MessageDeleted { .. } => "message_deleted",
            ChatEvent::MessageEdited(_) => "message_edited",
            ChatEvent::ChatDeleted { .. } => "chat_deleted",
            ChatEvent::MemberAdded { .. } => "member_added",
            ChatEvent::MemberRemoved { .. } => "member_removed",
            ChatEvent::MessagePreviewed { .. } => "message_previewed",
            ChatEvent::Live(e) => e.kind(),
        }
    }

    /// The event as a `Connect` stream sends it.
    pub fn to_response(&self) -> pb::ConnectResponse {
        let event = match self {
            ChatEvent::MessageCreated(m, _) => Event::Message(m.clone()),
            ChatEvent::MessageDeleted { chat_id, seq } => {
                Event::MessageDeleted(pb::MessageDeleted {
                    chat_id: *chat_id,
                    seq: *seq,
                })
            }
            ChatEvent::MessageEdited(m) => Event::MessageEdited(pb::MessageEdited {
                message: Some(m.clone()),
            }),
            ChatEvent::ChatDeleted { chat_id } => {
                Event::ChatDeleted(pb::ChatDeleted { chat_id: *chat_id })
            }
            ChatEvent::MemberAdded { chat_id, member } => Event::MemberAdded(pb::MemberAdded {
                chat_id: *chat_id,
                member: Some(member.clone()),
            }),
            ChatEvent::MemberRemoved { chat_id, user_id } => {
                Event::MemberRemoved(pb::MemberRemoved {
                    chat_id: *chat_id,
                    user_id: *user_id,
                })
            }
            ChatEvent::MessagePreviewed {
                chat_id,
                seq,
                preview,
            } => Event::MessagePreviewed(pb::MessagePreviewed {
                chat_id: *chat_id,
                seq: *seq,
                link_preview: Some(preview.clone()),
            }),
            ChatEvent::Live(e) => {
                return pb::ConnectResponse {
                    event: e.to_event(),
                }
            }
        };
        pb::ConnectResponse { event: Some(event) }
    }

    /// A new message's membership version, when it has one.
    pub fn members_version(&self) -> Option<i64> {
        match self {
            ChatEvent::MessageCreated(_, v) => *v,
            _ => None,
        }
    }

    /// The bytes published on the bus: the `ConnectResponse` it becomes, protobuf-encoded.
    /// A message's membership version is not in them: see [`MEMBERS_VERSION_HEADER`].
    pub fn encode(&self) -> Vec<u8> {
        self.to_response().encode_to_vec()
    }

    /// Reads what [`encode`](Self::encode) wrote; an error for an empty or ephemeral event,
    /// which never travels on the stored subjects.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Self> {
        let resp = pb::ConnectResponse::decode(bytes).context("decoding a chat event")?;
        match resp.event {
            Some(Event::Message(m)) => Ok(ChatEvent::MessageCreated(m, None)),
            Some(Event::MessageDeleted(d)) => Ok(ChatEvent::MessageDeleted {
                chat_id: d.chat_id,
                seq: d.seq,
            }),
            Some(Event::ChatDeleted(d)) => Ok(ChatEvent::ChatDeleted { chat_id: d.chat_id }),
            Some(Event::MessageEdited(pb::MessageEdited { message: Some(m) })) => {
                Ok(ChatEvent::MessageEdited(m))
            }
            Some(Event::MemberAdded(pb::MemberAdded {
                chat_id,
                member: Some(member),
            })) => Ok(ChatEvent::MemberAdded { chat_id, member }),
            Some(Event::MemberRemoved(r)) => Ok(ChatEvent::MemberRemoved {
                chat_id: r.chat_id,
                user_id: r.user_id,
            }),
            Some(Event::MessagePreviewed(pb::MessagePreviewed {
                chat_id,
                seq,
                link_preview: Some(preview),
            })) => Ok(ChatEvent::MessagePreviewed {
                chat_id,
                seq,
                preview,
            }),
            Some(Event::MessageEdited(_))
            | Some(Event::MemberAdded(_))
            | Some(Event::MessagePreviewed(_))
            | Some(Event::HistoryEnd(_))
            | None => {
                anyhow::bail!("not a chat event")
            }
            // Never published on the stored subjects.
            Some(Event::Typing(_)) | Some(Event::Presence(_)) => {
                anyhow::bail!("an ephemeral event on a stored subject")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = [
            ChatEvent::MessageCreated(
                pb::Message {
                    chat_id: 3,
                    seq: 7,
                    text: "привет 👋".into(),
                    ..Default::default()
                },
                None,
            ),
            ChatEvent::MessageDeleted { chat_id: 3, seq: 7 },
            ChatEvent::MessageEdited(pb::Message {
                chat_id: 3,
                seq: 7,
                text: "исправлено".into(),
                edited_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ChatEvent::ChatDeleted { chat_id: 3 },
            ChatEvent::MemberAdded {
                chat_id: 3,
                member: pb::Member {
                    user_id: 9,
                    username: "carol".into(),
                    joined_at: None,
                },
            },
            ChatEvent::MemberRemoved {
                chat_id: 3,
                user_id: 9,
            },
            ChatEvent::MessagePreviewed {
                chat_id: 3,
                seq: 7,
                preview: pb::LinkPreview {
                    url: "https://example.com/".into(),
                    title: "Example".into(),
                    ..Default::default()
                },
            },
        ];
        for e in events {
            assert_eq!(ChatEvent::decode(&e.encode()).unwrap(), e);
        }
        assert!(ChatEvent::decode(b"\xff\xff").is_err());
    }
}
