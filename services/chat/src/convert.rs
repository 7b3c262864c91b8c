//! Records of the store as the messages of the chat contract. One place, so that a
//! message reads the same in an answer, in a stream and in an event another replica
//! relays, and so that the modules that send them (the API, the streams, the fan-out, the
//! outbox relay) need not import each other for it.

use chat_common::convert::timestamp;
use grpc_chat_proto::chat::v1 as pb;

use link_preview::Preview;

use crate::store::{ChatRecord, MemberRecord, MessageRecord};

/// A stored message as the contract's `Message`; an empty sender name is a deleted
/// account's.
pub(crate) fn message_to_pb(m: &MessageRecord) -> pb::Message {
    pb::Message {
        chat_id: m.chat_id,
        seq: m.seq,
        sender_id: m.sender_id,
        sender_username: m.sender_username.clone(),
        text: m.text.clone(),
        created_at: Some(timestamp(m.created_at)),
        edited_at: m.edited_at.map(timestamp),
        sender_deleted: m.sender_username.is_empty(),
        link_preview: m.link_preview.as_ref().map(preview_to_pb),
    }
}

/// A membership as the contract's `Member`.
pub(crate) fn member_to_pb(m: MemberRecord) -> pb::Member {
    pb::Member {
        user_id: m.user_id,
        username: m.username,
        joined_at: Some(timestamp(m.joined_at)),
    }
}

/// A chat as the caller sees it (with their unread count).
pub(crate) fn chat_to_pb(c: &ChatRecord) -> pb::Chat {
    pb::Chat {
        id: c.id,
        title: c.title.clone(),
        creator_id: c.creator_id,
        created_at: Some(timestamp(c.created_at)),
        last_seq: c.last_seq,
        member_count: c.member_count,
        last_read_seq: c.last_read_seq,
        unread_count: c.unread_count,
    }
}

/// A link preview as the contract's `LinkPreview`.
pub(crate) fn preview_to_pb(p: &Preview) -> pb::LinkPreview {
    pb::LinkPreview {
        url: p.url.clone(),
        title: p.title.clone(),
        description: p.description.clone(),
        image_url: p.image_url.clone(),
        site_name: p.site_name.clone(),
    }
}
