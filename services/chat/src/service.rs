//! The ChatService RPCs. Every call arrives through the token interceptor, so a `Caller` is
//! always in the request; membership is checked against storage on every call, and a
//! non-member is told the chat does not exist.

use std::{pin::Pin, sync::Arc, time::Duration};

use base64::Engine as _;
use chrono::Utc;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use chat_common::{error::invalid_field, Caller, Shutdown};
use chat_events::ChatEvent;
use grpc_chat_proto::chat::v1::{self as pb, chat_service_server::ChatService};

use crate::{
    convert::{chat_to_pb, member_to_pb, message_to_pb},
    directory::Directory,
    domain::{self, page_size, ChatId, IdempotencyKey, MessageText, Title},
    error::ChatError,
    hub::{Hub, Subscription},
    members,
    outbox::Outbox,
    presence::LiveEvent,
    preview::{LinkPreviews, Services},
    store::{
        Added, ChatCursor, ChatRecord, ChatStore, Edited, HistoryFrom, Inserted, MemberRecord,
        MessageRecord, NewMessage,
    },
    stream,
};

/// The `ChatService` gRPC service: parses requests, checks membership, stores through the
/// [`ChatStore`] and hands events to the outbox. Cheap to clone.
#[derive(Clone)]
pub struct ChatApi {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ChatStore>,
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    directory: Directory,
    /// How long after sending a sender may edit a message; None: no limit.
    edit_window: Option<Duration>,
    shutdown: Shutdown,
    /// Link previews, when they are on.
    previews: Option<LinkPreviews>,
}

/// What a stream gets when the replica cannot follow the chat's events.
fn live_events_unavailable(e: anyhow::Error) -> ChatError {
    ChatError::Unavailable(format!("live events are unavailable: {e}"))
}

fn encode_cursor(c: &ChatRecord) -> String {
    let raw = format!("{}:{}", c.last_activity_at.timestamp_micros(), c.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(token: &str) -> Result<Option<ChatCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid_field("page_token", "is not a token from a previous response");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Some(ChatCursor {
        last_activity_micros: micros.parse().map_err(|_| bad())?,
        id: id.parse().map_err(|_| bad())?,
    }))
}

impl ChatApi {
    /// The service over `store`, streaming through `hub` and resolving users with `directory`.
    /// Edits are allowed for `edit_window` after sending (None: always); deleted accounts are
    /// applied every `deletions_every`; previews are made when `previews` is set. Background
    /// work stops on `shutdown`.
    pub fn new(
        store: Arc<dyn ChatStore>,
        hub: Arc<Hub>,
        directory: Directory,
        edit_window: Option<Duration>,
        deletions_every: Duration,
        shutdown: Shutdown,
        previews: Option<LinkPreviews>,
    ) -> Self {
        let outbox = Outbox::start(store.clone(), hub.bus().clone(), shutdown.clone());
        crate::deletions::Deletions {
            store: store.clone(),
            outbox: outbox.clone(),
            bus: hub.bus().clone(),
            directory: directory.clone(),
        }
        .start(deletions_every, shutdown.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                hub,
                outbox,
                directory,
                edit_window,
                shutdown,
                previews,
            }),
        }
    }

    /// Starts the link preview of a message just stored (or just edited), when previews
    /// are on; never waits for it.
    fn preview_later(&self, chat: ChatId, seq: i64, text: &str) {
        if let Some(previews) = &self.inner.previews {
            let services = Services {
                store: self.inner.store.clone(),
                outbox: self.inner.outbox.clone(),
                shutdown: self.inner.shutdown.clone(),
            };
            previews.schedule(&services, chat, seq, text);
        }
    }

    /// The chat, when the caller may see it: members, and services for any chat.
    async fn visible_chat(&self, caller: &Caller, chat: ChatId) -> Result<ChatRecord, ChatError> {
        let found = match caller {
            Caller::User { id, .. } => self.inner.store.chat_for_member(chat, *id).await?,
            Caller::Service { .. } => self.inner.store.chat(chat).await?,
        };
        found.ok_or(ChatError::ChatNotFound(chat.0))
    }

    /// Who created `chat`; NOT_FOUND when it is gone.
    async fn creator(&self, chat: ChatId) -> Result<i64, ChatError> {
        let found = self.inner.store.chat(chat).await?;
        Ok(found.ok_or(ChatError::ChatNotFound(chat.0))?.creator_id)
    }

    /// `user_id`'s membership of `chat`; NOT_FOUND, as for any chat one cannot see, when
    /// there is none.
    async fn member(&self, chat: ChatId, user_id: i64) -> Result<MemberRecord, ChatError> {
        self.inner
            .store
            .member(chat, user_id)
            .await?
            .ok_or(ChatError::ChatNotFound(chat.0))
    }

    /// NOT_FOUND unless the caller can see `chat`, as [`ChatApi::visible_chat`], for calls
    /// that need no more than that: of a user only their membership row is read, not the
    /// chat with its counts (whose unread count grows with everything they have not read).
    async fn check_visible(&self, caller: &Caller, chat: ChatId) -> Result<(), ChatError> {
        match caller {
            Caller::User { id, .. } => self.member(chat, *id).await.map(drop),
            Caller::Service { .. } => self.visible_chat(caller, chat).await.map(drop),
        }
    }

    /// Joins `chat`'s fan-out for a stream of `user_id`, a member, and returns the
    /// subscription with the first page of history when it was read here. Where the chat's
    /// fan-out already runs on this replica, joining costs nothing outside the process, so it
    /// comes first and one read checks the membership and takes the page (the subscription
    /// of a non-member is dropped unused). Elsewhere the membership is checked first, so that
    /// nobody makes the replica subscribe to a chat they are not in, and the stream reads
    /// the page after the join.
    async fn join_as_member(
        &self,
        chat: ChatId,
        user_id: i64,
        from: HistoryFrom,
    ) -> Result<(Subscription, Option<Vec<MessageRecord>>), ChatError> {
        let running = self
            .inner
            .hub
            .join_running(chat, Some(user_id))
            .await
            .map_err(live_events_unavailable)?;
        if let Some(sub) = running {
            return match self
                .inner
                .store
                .history_for_member(chat, user_id, from)
                .await?
            {
                Some(page) => Ok((sub, Some(page))),
                None => Err(ChatError::ChatNotFound(chat.0)),
            };
        }
        self.member(chat, user_id).await?;
        Ok((self.join(chat, Some(user_id)).await?, None))
    }

    /// A subscription to `chat`'s fan-out.
    async fn join(&self, chat: ChatId, user_id: Option<i64>) -> Result<Subscription, ChatError> {
        self.inner
            .hub
            .join(chat, user_id)
            .await
            .map_err(live_events_unavailable)
    }

    /// Who the caller is online as in `chat` while a stream is open: users by their id and
    /// name (tokens from before names were in them have none, so it is read), services not.
    async fn online_as(
        &self,
        caller: &Caller,
        chat: ChatId,
    ) -> Result<Option<(i64, String)>, ChatError> {
        match caller {
            Caller::User { id, username, .. } if username.is_empty() => {
                Ok(Some((*id, self.member(chat, *id).await?.username)))
            }
            Caller::User { id, username, .. } => Ok(Some((*id, username.clone()))),
            Caller::Service { .. } => Ok(None),
        }
    }

    /// The id and name a message is sent under: the calling user's, or for a service
    /// the member it names. Membership is checked by the insert itself (one round trip),
    /// and a name the token does not carry (a service's member, a token from before names
    /// were in tokens) is left empty for the insert to take from the membership.
    fn sender(caller: Caller, on_behalf_of: i64) -> Result<(i64, String), Status> {
        match caller {
            Caller::User { id, username, .. } => Ok((id, username)),
            Caller::Service { .. } if on_behalf_of <= 0 => Err(invalid_field(
                "on_behalf_of_user_id",
                "a service must name the member it sends for",
            )),
            Caller::Service { .. } => Ok((on_behalf_of, String::new())),
        }
    }

    /// Refuses a user whose account was deleted (see `deletions.rs`): for the calls that
    /// make memberships, which nothing else would stop.
    async fn require_account(&self, user_id: i64) -> Result<(), ChatError> {
        if self.inner.store.is_deleted(user_id).await? {
            return Err(ChatError::AccountDeleted);
        }
        Ok(())
    }

    /// Publishes an event that has no outbox row (a chat's deletion) to every replica.
    async fn publish(&self, event: ChatEvent) {
        members::publish_direct(self.inner.hub.bus().as_ref(), &event).await;
    }

    /// Removes `user_id` from `chat` and announces it: see [`members::remove`].
    async fn remove(&self, chat: ChatId, user_id: i64) -> Result<bool, ChatError> {
        members::remove(
            self.inner.store.as_ref(),
            &self.inner.outbox,
            self.inner.hub.bus().as_ref(),
            chat,
            user_id,
        )
        .await
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::ConnectResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for ChatApi {
    #[tracing::instrument(skip_all)]
    async fn create_chat(
        &self,
        request: Request<pb::CreateChatRequest>,
    ) -> Result<Response<pb::CreateChatResponse>, Status> {
        let (user_id, username) = Caller::require_user(&request)?;
        let req = request.into_inner();
        let title = Title::parse(&req.title)?;
        let identifiers = domain::members(&req.members)?;
        self.require_account(user_id).await?;
        let mut members = self.inner.directory.resolve(&identifiers).await?;
        members.retain(|(id, _)| *id != user_id);
        members.insert(0, (user_id, username));
        let chat = self
            .inner
            .store
            .create_chat(user_id, &title, &members)
            .await
            .map_err(ChatError::from)?;
        tracing::info!(chat_id = chat.id, members = members.len(), "chat created");
        Ok(Response::new(pb::CreateChatResponse {
            chat: Some(chat_to_pb(&chat)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_chat(
        &self,
        request: Request<pb::DeleteChatRequest>,
    ) -> Result<Response<pb::DeleteChatResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let chat_id = ChatId::parse(request.get_ref().chat_id)?;
        let chat = self.visible_chat(&caller, chat_id).await?;
        if let Caller::User { id, .. } = caller {
            if chat.creator_id != id {
                return Err(ChatError::PermissionDenied(
                    "only the chat's creator may delete it".into(),
                )
                .into());
            }
        }
        if self
            .inner
            .store
            .delete_chat(chat_id)
            .await
            .map_err(ChatError::from)?
        {
            self.publish(ChatEvent::ChatDeleted { chat_id: chat_id.0 })
                .await;
            tracing::info!(chat_id = chat_id.0, "chat deleted");
        }
        Ok(Response::new(pb::DeleteChatResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_chats(
        &self,
        request: Request<pb::ListChatsRequest>,
    ) -> Result<Response<pb::ListChatsResponse>, Status> {
        let (user_id, _) = Caller::require_user(&request)?;
        let req = request.into_inner();
        let limit = page_size("page_size", req.page_size, 100, 500)?;
        let cursor = decode_cursor(&req.page_token)?;
        let mut chats = self
            .inner
            .store
            .list_chats(user_id, limit + 1, cursor)
            .await
            .map_err(ChatError::from)?;
        let more = chats.len() as i64 > limit;
        chats.truncate(limit as usize);
        let next_page_token = match (more, chats.last()) {
            (true, Some(last)) => encode_cursor(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListChatsResponse {
            chats: chats.iter().map(chat_to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let chat_id = ChatId::parse(request.get_ref().chat_id)?;
        // The chat (with its membership version) first, the members after, in a later
        // snapshot: the list is never older than the version it goes out with, so the
        // notifier, which trusts a list for messages up to its version, never trusts one
        // that still holds a member who left before such a message.
        let chat = self.visible_chat(&caller, chat_id).await?;
        let members = self
            .inner
            .store
            .list_members(chat_id)
            .await
            .map_err(ChatError::from)?;
        Ok(Response::new(pb::ListMembersResponse {
            members: members.into_iter().map(member_to_pb).collect(),
            members_version: chat.members_version,
            chat: Some(chat_to_pb(&chat)),
        }))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        let text = MessageText::parse(req.text)?;
        let key = IdempotencyKey::parse(&req.idempotency_key)?;
        let (sender_id, sender_username) = Self::sender(caller, req.on_behalf_of_user_id)?;
        let write = chat_common::otel_span!(
            "store",
            otel.name = "insert_message",
            db.operation.name = "insert_message",
            chat.id = chat_id.0,
            message.seq = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let inserted = self
            .inner
            .store
            .insert_message(NewMessage {
                chat_id,
                sender_id,
                sender_username: &sender_username,
                text: &text,
                idempotency_key: key.as_ref(),
            })
            .instrument(write.clone())
            .await
            .inspect_err(|e| chat_common::trace::record_error(&write, e))
            .map_err(ChatError::from)?;
        if let Inserted::New(m, _) | Inserted::Duplicate(m) = &inserted {
            write.record("message.seq", m.seq);
        }
        let (message, event) = match inserted {
            Inserted::New(m, event) => (message_to_pb(&m), Some((event, m.members_version))),
            Inserted::Duplicate(m) => (message_to_pb(&m), None),
            Inserted::NoChat => return Err(ChatError::ChatNotFound(chat_id.0).into()),
        };
        let duplicate = event.is_none();
        if let Some((event, members_version)) = event {
            metrics::counter!("chat_messages_stored_total").increment(1);
            self.inner
                .outbox
                .publish(
                    &ChatEvent::MessageCreated(message.clone(), members_version),
                    event,
                )
                .await;
            self.preview_later(chat_id, message.seq, &message.text);
        }
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message),
            duplicate,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        if req.seq <= 0 {
            return Err(invalid_field("seq", "must be a positive sequence number"));
        }
        // A user's membership row first (not the chat with its unread count, which grows
        // with everything they have not read); the chat's creator only when someone other
        // than the author deletes.
        self.check_visible(&caller, chat_id).await?;
        let not_found = ChatError::MessageNotFound {
            chat_id: chat_id.0,
            seq: req.seq,
        };
        let message = self
            .inner
            .store
            .message(chat_id, req.seq)
            .await
            .map_err(ChatError::from)?
            .ok_or(not_found)?;
        if let Caller::User { id, .. } = caller {
            if message.sender_id != id && self.creator(chat_id).await? != id {
                return Err(ChatError::PermissionDenied(
                    "only the message's author or the chat's creator may delete it".into(),
                )
                .into());
            }
        }
        if message.deleted {
            return Ok(Response::new(pb::DeleteMessageResponse {}));
        }
        let deleted = self
            .inner
            .store
            .delete_message(chat_id, req.seq)
            .await
            .map_err(ChatError::from)?;
        if let Some(event) = deleted.and_then(|d| d.event) {
            let deletion = ChatEvent::MessageDeleted {
                chat_id: chat_id.0,
                seq: req.seq,
            };
            self.inner.outbox.publish(&deletion, event).await;
        }
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id, seq = request.get_ref().seq))]
    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        if req.seq <= 0 {
            return Err(invalid_field("seq", "must be a positive sequence number"));
        }
        let text = MessageText::parse(req.text)?;
        self.check_visible(&caller, chat_id).await?;
        let not_found = || ChatError::MessageNotFound {
            chat_id: chat_id.0,
            seq: req.seq,
        };
        let message = self
            .inner
            .store
            .message(chat_id, req.seq)
            .await
            .map_err(ChatError::from)?
            .filter(|m| !m.deleted)
            .ok_or_else(not_found)?;
        let is_sender = matches!(caller, Caller::User { id, .. } if id == message.sender_id);
        if !is_sender {
            return Err(ChatError::PermissionDenied(
                "only the message's sender may edit it".into(),
            )
            .into());
        }
        let unchanged = |m: &MessageRecord| {
            Response::new(pb::EditMessageResponse {
                message: Some(message_to_pb(m)),
                unchanged: true,
            })
        };
        // A retry of an edit that went through: the same answer, whatever the time.
        if message.text == text.as_str() {
            return Ok(unchanged(&message));
        }
        if let Some(window) = self.inner.edit_window {
            let age = Utc::now().signed_duration_since(message.created_at);
            if age.to_std().is_ok_and(|age| age > window) {
                return Err(ChatError::FailedPrecondition(format!(
                    "message {} can no longer be edited: messages can be edited for {} s after they are sent",
                    req.seq,
                    window.as_secs()
                ))
                .into());
            }
        }
        let edited = self
            .inner
            .store
            .edit_message(chat_id, req.seq, &text)
            .await
            .map_err(ChatError::from)?;
        match edited {
            Edited::Changed(m, event) => {
                let message = message_to_pb(&m);
                metrics::counter!("chat_messages_edited_total").increment(1);
                self.inner
                    .outbox
                    .publish(&ChatEvent::MessageEdited(message.clone()), event)
                    .await;
                self.preview_later(chat_id, message.seq, &message.text);
                Ok(Response::new(pb::EditMessageResponse {
                    message: Some(message),
                    unchanged: false,
                }))
            }
            Edited::Unchanged(m) => Ok(unchanged(&m)),
            // Deleted since it was read.
            Edited::NotFound => Err(not_found().into()),
        }
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id, seq = request.get_ref().seq))]
    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let (user_id, _) = Caller::require_user(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        if req.seq < 0 {
            return Err(invalid_field("seq", "sequence numbers are not negative"));
        }
        let chat = self
            .inner
            .store
            .chat_for_member(chat_id, user_id)
            .await
            .map_err(ChatError::from)?
            .ok_or(ChatError::ChatNotFound(chat_id.0))?;
        // last_seq only grows, so a seq within it now is within it at the update too.
        if req.seq > chat.last_seq {
            return Err(ChatError::OutOfRange(format!(
                "seq {} is beyond the newest message of chat {} (seq {})",
                req.seq, chat_id.0, chat.last_seq
            ))
            .into());
        }
        let stored = self
            .inner
            .store
            .mark_read(chat_id, user_id, req.seq)
            .await
            .map_err(ChatError::from)?
            // Left the chat (or it was deleted) since it was read.
            .ok_or(ChatError::ChatNotFound(chat_id.0))?;
        Ok(Response::new(pb::MarkReadResponse {
            last_read_seq: stored,
        }))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn add_members(
        &self,
        request: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        let (user_id, _) = Caller::require_user(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        let identifiers = domain::members(&req.members)?;
        self.require_account(user_id).await?;
        let mut chat = self
            .inner
            .store
            .chat_for_member(chat_id, user_id)
            .await
            .map_err(ChatError::from)?
            .ok_or(ChatError::ChatNotFound(chat_id.0))?;
        let mut users = self.inner.directory.resolve(&identifiers).await?;
        users.sort();
        let added = self
            .inner
            .store
            .add_members(chat_id, &users, domain::MAX_MEMBERS as i64)
            .await
            .map_err(ChatError::from)?;
        let (added, count) = match added {
            Added::Members(added, count) => (added, count),
            Added::TooMany { members } => {
                return Err(ChatError::ResourceExhausted(format!(
                    "chat {} has {members} members; a chat has at most {}",
                    chat_id.0,
                    domain::MAX_MEMBERS
                ))
                .into())
            }
            // Deleted since it was read.
            Added::NoChat => return Err(ChatError::ChatNotFound(chat_id.0).into()),
        };
        let mut out = Vec::with_capacity(added.len());
        for (member, event) in added {
            let member = member_to_pb(member);
            let announce = ChatEvent::MemberAdded {
                chat_id: chat_id.0,
                member: member.clone(),
            };
            self.inner.outbox.publish(&announce, event).await;
            out.push(member);
        }
        tracing::info!(chat_id = chat_id.0, added = out.len(), "members added");
        chat.member_count = i32::try_from(count).unwrap_or(i32::MAX);
        Ok(Response::new(pb::AddMembersResponse {
            added: out,
            chat: Some(chat_to_pb(&chat)),
        }))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id, user_id = request.get_ref().user_id))]
    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        if req.user_id <= 0 {
            return Err(invalid_field("user_id", "must be a positive user id"));
        }
        // Administrators may act on any chat; everyone else only on their own.
        let chat = match &caller {
            Caller::User {
                role: chat_common::Role::Admin,
                ..
            } => self
                .inner
                .store
                .chat(chat_id)
                .await
                .map_err(ChatError::from)?
                .ok_or(ChatError::ChatNotFound(chat_id.0))?,
            _ => self.visible_chat(&caller, chat_id).await?,
        };
        if let Caller::User { id, role, .. } = &caller {
            let allowed =
                *id == req.user_id || *id == chat.creator_id || *role == chat_common::Role::Admin;
            if !allowed {
                return Err(ChatError::PermissionDenied(
                    "only the chat's owner or an administrator may remove other members".into(),
                )
                .into());
            }
        }
        let removed = self.remove(chat_id, req.user_id).await?;
        Ok(Response::new(pb::RemoveMemberResponse { removed }))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn leave_chat(
        &self,
        request: Request<pb::LeaveChatRequest>,
    ) -> Result<Response<pb::LeaveChatResponse>, Status> {
        let (user_id, _) = Caller::require_user(&request)?;
        let chat_id = ChatId::parse(request.get_ref().chat_id)?;
        if !self.remove(chat_id, user_id).await? {
            return Err(ChatError::ChatNotFound(chat_id.0).into());
        }
        Ok(Response::new(pb::LeaveChatResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        let limit = page_size("page_size", req.page_size, 50, 500)?;
        if req.after_seq < 0 || req.before_seq < 0 {
            return Err(invalid_field(
                "after_seq",
                "sequence numbers are not negative",
            ));
        }
        self.check_visible(&caller, chat_id).await?;
        let store = &self.inner.store;
        let mut messages = if req.after_seq > 0 {
            store
                .messages_after(chat_id, req.after_seq, None, limit + 1)
                .await
        } else {
            let before = (req.before_seq > 0).then_some(req.before_seq);
            store.messages_before(chat_id, before, limit + 1).await
        }
        .map_err(ChatError::from)?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(message_to_pb).collect(),
            has_more,
        }))
    }

    type ConnectStream = ConnectStream;

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn connect(
        &self,
        request: Request<pb::ConnectRequest>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let caller = Caller::from_request(&request)?;
        let req = request.into_inner();
        let chat_id = ChatId::parse(req.chat_id)?;
        if req.after_seq < 0 {
            return Err(invalid_field("after_seq", "must not be negative"));
        }
        let history_limit = page_size("history_limit", req.history_limit, 50, 500)?;
        let mut opened = stream::Opened {
            chat_id,
            me: caller.user_id(),
            who: None,
            after_seq: req.after_seq,
            history_limit,
            live: req.typing_and_presence,
        };
        // Join first, read history second (stream.rs says why).
        let (sub, first) = match &caller {
            Caller::User { id, .. } => {
                self.join_as_member(chat_id, *id, opened.history_from())
                    .await?
            }
            Caller::Service { .. } => {
                self.visible_chat(&caller, chat_id).await?;
                (self.join(chat_id, None).await?, None)
            }
        };
        opened.who = self.online_as(&caller, chat_id).await?;
        let stream = stream::run(
            opened,
            first,
            self.inner.store.clone(),
            sub,
            self.inner.hub.presence().clone(),
            self.inner.shutdown.clone(),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn send_typing(
        &self,
        request: Request<pb::SendTypingRequest>,
    ) -> Result<Response<pb::SendTypingResponse>, Status> {
        let (user_id, username) = Caller::require_user(&request)?;
        let chat_id = ChatId::parse(request.get_ref().chat_id)?;
        let member = self.member(chat_id, user_id).await?;
        let presence = self.inner.hub.presence();
        if !presence.typing().allow(user_id, chat_id.0) {
            return Ok(Response::new(pb::SendTypingResponse { forwarded: false }));
        }
        let username = if username.is_empty() {
            member.username
        } else {
            username
        };
        let typing = ChatEvent::Live(LiveEvent::Typing(pb::Typing {
            chat_id: chat_id.0,
            user_id,
            username,
        }));
        if let Err(e) = self.inner.hub.bus().publish(&typing).await {
            tracing::warn!(chat_id = chat_id.0, error = %e, "publishing a typing event failed");
            return Err(ChatError::Unavailable(
                "the typing event could not be passed on; try again".into(),
            )
            .into());
        }
        metrics::counter!("chat_typing_forwarded_total").increment(1);
        Ok(Response::new(pb::SendTypingResponse { forwarded: true }))
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any page token is refused or read; never a panic, never another code.
        #[test]
        fn page_tokens(raw in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,40}"]) {
            if let Err(s) = decode_cursor(&raw) {
                prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            }
        }

        /// A token this service hands out reads back as the cursor it was made from.
        #[test]
        fn page_tokens_round_trip(micros in any::<i64>(), id in any::<i64>()) {
            let raw = format!("{micros}:{id}");
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            let cursor = decode_cursor(&token).unwrap().unwrap();
            prop_assert_eq!((cursor.last_activity_micros, cursor.id), (micros, id));
        }
    }
}
