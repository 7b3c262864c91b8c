//! The fan-out's gap repair when storage fails at that moment: a stream must never advance
//! past a seq it has not delivered. Either the repair succeeds on a retry, or the chat's
//! streams end UNAVAILABLE so that clients resume from storage; a later message is never
//! delivered over a hole.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use chat_common::Shutdown;
use chat_events::{ChatEvent, EventBus, LocalBus};
use chat_service::{
    domain::{ChatId, IdempotencyKey, MessageText, Title},
    hub::{Ended, Hub, Subscription},
    store::{
        self, Added, ChatCursor, ChatRecord, ChatStore, Deleted, Edited, EventId, Inserted,
        MemberRecord, MessageRecord, NewMessage, OutboxEvent, Removed,
    },
};
use chat_testkit::TestDb;

/// A real store whose `messages_after` fails its next `failures` calls.
struct FlakyStore {
    inner: Arc<dyn ChatStore>,
    failures: AtomicUsize,
    reads: AtomicUsize,
}

impl FlakyStore {
    fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl ChatStore for FlakyStore {
    async fn create_chat(
        &self,
        creator_id: i64,
        title: &Title,
        members: &[(i64, String)],
    ) -> anyhow::Result<ChatRecord> {
        self.inner.create_chat(creator_id, title, members).await
    }
    async fn chat_for_member(
        &self,
        chat: ChatId,
        user_id: i64,
    ) -> anyhow::Result<Option<ChatRecord>> {
        self.inner.chat_for_member(chat, user_id).await
    }
    async fn chat(&self, chat: ChatId) -> anyhow::Result<Option<ChatRecord>> {
        self.inner.chat(chat).await
    }
    async fn delete_chat(&self, chat: ChatId) -> anyhow::Result<bool> {
        self.inner.delete_chat(chat).await
    }
    async fn list_chats(
        &self,
        user_id: i64,
        limit: i64,
        cursor: Option<ChatCursor>,
    ) -> anyhow::Result<Vec<ChatRecord>> {
        self.inner.list_chats(user_id, limit, cursor).await
    }
    async fn list_members(&self, chat: ChatId) -> anyhow::Result<Vec<MemberRecord>> {
        self.inner.list_members(chat).await
    }
    async fn member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Option<MemberRecord>> {
        self.inner.member(chat, user_id).await
    }
    async fn insert_message(&self, msg: NewMessage<'_>) -> anyhow::Result<Inserted> {
        self.inner.insert_message(msg).await
    }
    async fn delete_message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<Deleted>> {
        self.inner.delete_message(chat, seq).await
    }
    async fn edit_message(
        &self,
        chat: ChatId,
        seq: i64,
        text: &MessageText,
    ) -> anyhow::Result<Edited> {
        self.inner.edit_message(chat, seq, text).await
    }
    async fn mark_read(&self, chat: ChatId, user_id: i64, seq: i64) -> anyhow::Result<Option<i64>> {
        self.inner.mark_read(chat, user_id, seq).await
    }
    async fn message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        self.inner.message(chat, seq).await
    }
    async fn messages_after(
        &self,
        chat: ChatId,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            anyhow::bail!("connection to the database lost (injected)");
        }
        self.inner.messages_after(chat, after, upto, limit).await
    }
    async fn messages_before(
        &self,
        chat: ChatId,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>> {
        self.inner.messages_before(chat, before, limit).await
    }
    async fn last_seq(&self, chat: ChatId) -> anyhow::Result<Option<i64>> {
        self.inner.last_seq(chat).await
    }
    async fn claim_events(
        &self,
        older_than: Duration,
        claim_for: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<OutboxEvent>> {
        self.inner.claim_events(older_than, claim_for, limit).await
    }
    async fn events_published(&self, ids: &[EventId]) -> anyhow::Result<()> {
        self.inner.events_published(ids).await
    }
    async fn add_members(
        &self,
        chat: ChatId,
        members: &[(i64, String)],
        max_members: i64,
    ) -> anyhow::Result<Added> {
        self.inner.add_members(chat, members, max_members).await
    }
    async fn remove_member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Removed> {
        self.inner.remove_member(chat, user_id).await
    }
    async fn chats_of(&self, user_id: i64) -> anyhow::Result<Vec<ChatId>> {
        self.inner.chats_of(user_id).await
    }
    async fn forget_sender(&self, user_id: i64) -> anyhow::Result<u64> {
        self.inner.forget_sender(user_id).await
    }
    async fn mark_deleted(&self, user_id: i64) -> anyhow::Result<()> {
        self.inner.mark_deleted(user_id).await
    }
    async fn is_deleted(&self, user_id: i64) -> anyhow::Result<bool> {
        self.inner.is_deleted(user_id).await
    }
    async fn deleted_within(&self, within: Duration) -> anyhow::Result<Vec<i64>> {
        self.inner.deleted_within(within).await
    }
    async fn applied_deletion(&self) -> anyhow::Result<i64> {
        self.inner.applied_deletion().await
    }
    async fn set_applied_deletion(&self, id: i64) -> anyhow::Result<()> {
        self.inner.set_applied_deletion(id).await
    }

    async fn set_link_preview(
        &self,
        chat: ChatId,
        seq: i64,
        text: &str,
        preview: &link_preview::Preview,
    ) -> anyhow::Result<Option<EventId>> {
        self.inner.set_link_preview(chat, seq, text, preview).await
    }
}

struct Rig {
    store: Arc<FlakyStore>,
    bus: Arc<LocalBus>,
    hub: Arc<Hub>,
    chat: ChatId,
    _db: TestDb,
    _shutdown: Shutdown,
}

impl Rig {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let shutdown = Shutdown::new();
        let inner = store::open(&db.url, 2, &shutdown)
            .await
            .expect("open store");
        let store = Arc::new(FlakyStore {
            inner,
            failures: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let bus = Arc::new(LocalBus::default());
        let hub = Hub::new(
            bus.clone(),
            store.clone(),
            64,
            // No periodic catch-up during the test: only the gap check repairs.
            Duration::from_secs(3600),
            shutdown.clone(),
        );
        let chat = store
            .create_chat(
                1,
                &Title::parse("repair").expect("title"),
                &[(1, "alice".into())],
            )
            .await
            .expect("create chat");
        Self {
            store,
            bus,
            hub,
            chat: ChatId(chat.id),
            _db: db,
            _shutdown: shutdown,
        }
    }

    /// Stores a message without publishing it (its event is lost), returning it.
    async fn store_only(&self, text: &str) -> MessageRecord {
        let text = MessageText::parse(text.into()).expect("text");
        let key: Option<IdempotencyKey> = None;
        match self
            .store
            .insert_message(NewMessage {
                chat_id: self.chat,
                sender_id: 1,
                sender_username: "alice",
                text: &text,
                idempotency_key: key.as_ref(),
            })
            .await
            .expect("insert")
        {
            Inserted::New(m, _) => m,
            other => panic!("expected a new message, got {other:?}"),
        }
    }

    async fn publish(&self, m: &MessageRecord) {
        let event = ChatEvent::MessageCreated(
            grpc_chat_proto::chat::v1::Message {
                chat_id: m.chat_id,
                seq: m.seq,
                sender_id: m.sender_id,
                sender_username: m.sender_username.clone(),
                text: m.text.clone(),
                created_at: None,
                edited_at: None,
                ..Default::default()
            },
            m.members_version,
        );
        self.bus.publish(&event).await.expect("publish");
    }
}

/// The seqs a subscription receives until it ends or nothing comes for `quiet`.
async fn drain(sub: &mut Subscription, quiet: Duration) -> (Vec<i64>, bool) {
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(quiet, sub.rx.recv()).await {
            Ok(Some(e)) => {
                if let ChatEvent::MessageCreated(m, _) = e.as_ref() {
                    seqs.push(m.seq);
                }
            }
            Ok(None) => return (seqs, true),
            Err(_) => return (seqs, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_cannot_read_ends_the_streams_instead_of_skipping() {
    let rig = Rig::new().await;
    let first = rig.store_only("one").await;
    let mut sub = rig.hub.join(rig.chat, None).await.expect("join");
    rig.publish(&first).await;
    // Seq 1 was committed before the join: the fan-out starts past it.
    let _lost = rig.store_only("two: its event is lost").await;
    let third = rig.store_only("three").await;
    rig.store.fail_next(usize::MAX);
    rig.publish(&third).await;

    let (seqs, ended) = drain(&mut sub, Duration::from_secs(10)).await;
    assert!(
        !seqs.contains(&third.seq),
        "seq {} was delivered over the hole at seq 2: {seqs:?}",
        third.seq
    );
    assert!(ended, "the stream must end when the gap cannot be filled");
    assert_eq!(sub.ended(), Ended::Unavailable);
    assert!(
        rig.store.reads.load(Ordering::SeqCst) > 1,
        "the repair is tried more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_fails_for_a_moment_delivers_every_seq_in_order() {
    let rig = Rig::new().await;
    let mut sub = rig.hub.join(rig.chat, None).await.expect("join");
    let first = rig.store_only("one").await;
    rig.publish(&first).await;
    let _lost = rig.store_only("two: its event is lost").await;
    let third = rig.store_only("three").await;
    rig.store.fail_next(2);
    rig.publish(&third).await;
    let fourth = rig.store_only("four").await;
    rig.publish(&fourth).await;

    let (seqs, ended) = drain(&mut sub, Duration::from_secs(5)).await;
    assert!(!ended, "the stream goes on");
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}
