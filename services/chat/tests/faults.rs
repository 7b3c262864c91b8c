//! Fault injection on the chat service, with the real thing: replicas run as processes and
//! are killed with SIGKILL, a private NATS is killed and restarted, a private PostgreSQL is
//! stopped and started. What must hold: every acknowledged send is stored exactly once
//! with the seq its answer gave (a client retries a failed send with the same idempotency
//! key, on another replica), every stream sees every seq once and in order (resuming with
//! `after_seq` when the server ends it), and a database outage answers UNAVAILABLE fast
//! and heals by itself.
//!
//! CI runs a short version of each. `FAULT_SOAK_SENDS=10000` makes the replica-kill test a
//! long run (one kill per 500 sends); it prints its figures (sends, faults, lost,
//! duplicated) with `--nocapture`.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chat_testkit::{
    chat_config, fault::chat_service_env, fault::free_port, fault::health_status, spawn_auth,
    spawn_auth_on, spawn_chat, FaultProxy, PrivateNats, PrivatePostgres, ServiceProcess, StopMode,
    TestDb, TestNats, TestUser,
};
use grpc_chat_proto::chat::v1::{
    self as pb, chat_service_client::ChatServiceClient, connect_response::Event,
};
use tokio::sync::watch;
use tonic::{transport::Channel, Code};
use tonic_health::pb::health_check_response::ServingStatus;

/// A chat of `alice` with `bob`, created through `client`.
async fn chat_of_two(
    client: &ChatServiceClient<Channel>,
    alice: &TestUser,
    bob: &TestUser,
    title: &str,
) -> i64 {
    chat_testkit::create_chat(client, alice, title, &[bob]).await
}

/// A channel that connects when used and reconnects after its server restarted.
fn lazy(addr: SocketAddr) -> ChatServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    ChatServiceClient::new(channel)
}

/// Codes after which a client tries again, with the same idempotency key. A connection
/// that breaks mid-call surfaces on the client as UNAVAILABLE, UNKNOWN or CANCELLED.
fn retryable(code: Code) -> bool {
    grpc_chat_proto::reasons::retryable(code) || matches!(code, Code::Unknown | Code::Cancelled)
}

/// Sends `text` under `key`, trying the replicas in turn from `first` until one answers;
/// returns the stored seq and how many attempts failed.
async fn send_until_stored(
    replicas: &[ChatServiceClient<Channel>],
    first: usize,
    user: &TestUser,
    chat_id: i64,
    text: &str,
    key: &str,
) -> (i64, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = 0;
    loop {
        let mut client = replicas[(first + failed) % replicas.len()].clone();
        let sent = client
            .send_message(user.req(pb::SendMessageRequest {
                chat_id,
                text: text.into(),
                idempotency_key: key.into(),
                ..Default::default()
            }))
            .await;
        match sent {
            Ok(r) => return (r.into_inner().message.expect("message").seq, failed),
            Err(s) if retryable(s.code()) && Instant::now() < deadline => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("send {key} failed for good: {s:?}"),
        }
    }
}

/// What a stream's reader saw.
#[derive(Debug, Default)]
struct Followed {
    seqs: Vec<i64>,
    /// Times the stream ended and was resumed with `after_seq`.
    resumes: usize,
}

/// Follows `chat_id` from the start, on the replicas in turn from `first`, resuming with
/// `after_seq` after every end, until it has seen the seq that `done` announces.
async fn follow(
    replicas: Vec<ChatServiceClient<Channel>>,
    first: usize,
    user: TestUser,
    chat_id: i64,
    mut done: watch::Receiver<Option<i64>>,
) -> Followed {
    let mut seen = Followed::default();
    let mut at = first;
    let last = |s: &Followed| s.seqs.last().copied().unwrap_or(0);
    'connect: loop {
        if done.borrow().is_some_and(|total| last(&seen) >= total) {
            return seen;
        }
        let connected = replicas[at % replicas.len()]
            .clone()
            .connect(user.req(pb::ConnectRequest {
                chat_id,
                after_seq: last(&seen),
                history_limit: 500,
                ..Default::default()
            }))
            .await;
        let mut stream = match connected {
            Ok(s) => s.into_inner(),
            Err(_) => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        loop {
            if done.borrow().is_some_and(|total| last(&seen) >= total) {
                return seen;
            }
            tokio::select! {
                item = stream.message() => match item {
                    Ok(Some(pb::ConnectResponse { event: Some(Event::Message(m)) })) => {
                        seen.seqs.push(m.seq);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        seen.resumes += 1;
                        at += 1;
                        continue 'connect;
                    }
                },
                _ = done.changed() => {}
            }
        }
    }
}

/// Every message of the chat in storage, oldest first. Pages backwards from the newest
/// (`after_seq` 0 means "the newest page", so paging forwards cannot start at seq 1).
async fn stored(
    client: &ChatServiceClient<Channel>,
    user: &TestUser,
    chat_id: i64,
) -> Vec<pb::Message> {
    let mut all: Vec<pb::Message> = Vec::new();
    let mut before_seq = 0;
    loop {
        let page = client
            .clone()
            .list_messages(user.req(pb::ListMessagesRequest {
                chat_id,
                page_size: 500,
                after_seq: 0,
                before_seq,
            }))
            .await
            .expect("list messages")
            .into_inner();
        let oldest = page.messages.iter().map(|m| m.seq).min();
        all.extend(page.messages);
        match oldest {
            Some(seq) if page.has_more => before_seq = seq,
            _ => break,
        }
    }
    all.sort_by_key(|m| m.seq);
    all
}

/// Asserts that storage holds each acknowledged send exactly once, at the seq its answer
/// gave, and nothing else; returns (lost, duplicated).
fn check_stored(acked: &HashMap<String, i64>, stored: &[pb::Message]) -> (usize, usize) {
    let mut by_text: HashMap<&str, Vec<i64>> = HashMap::new();
    for m in stored {
        by_text.entry(m.text.as_str()).or_default().push(m.seq);
    }
    let lost = acked
        .keys()
        .filter(|t| !by_text.contains_key(t.as_str()))
        .count();
    let duplicated: usize = by_text.values().map(|s| s.len().saturating_sub(1)).sum();
    for (text, seq) in acked {
        if let Some(seqs) = by_text.get(text.as_str()) {
            assert_eq!(
                seqs,
                &vec![*seq],
                "{text} is stored at {seqs:?}, acknowledged as {seq}"
            );
        }
    }
    (lost, duplicated)
}

fn soak_sends() -> Option<usize> {
    std::env::var("FAULT_SOAK_SENDS").ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_during_concurrent_sends_lose_and_duplicate_nothing() {
    let total_sends = soak_sends().unwrap_or(160);
    let faults = (total_sends / 500).max(1);
    const SENDERS: usize = 4;

    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let mut processes = Vec::new();
    for name in ["chat-a", "chat-b"] {
        let mut config = chat_config(&auth, &db.url, &nats);
        config.listen.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        config.database.max_connections = 5;
        let process = ServiceProcess::start(
            name,
            env!("CARGO_BIN_EXE_chat-service"),
            &[],
            chat_service_env(&config),
            config.listen.addr,
        )
        .await
        .expect("start a chat-service replica");
        processes.push(process);
    }
    let replicas: Vec<_> = processes.iter().map(|p| lazy(p.addr)).collect();
    let (alice, bob) = (auth.user("alice").await, auth.user("bob").await);
    let chat_id = chat_of_two(&replicas[0], &alice, &bob, "under fire").await;

    let (done_tx, done) = watch::channel(None);
    let followers: Vec<_> = [(0, &alice), (1, &bob), (1, &alice)]
        .into_iter()
        .map(|(first, user)| {
            tokio::spawn(follow(
                replicas.clone(),
                first,
                user.clone(),
                chat_id,
                done.clone(),
            ))
        })
        .collect();

    let acked_count = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|w| {
            let replicas = replicas.clone();
            let user = if w % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            let (acked_count, retries, next) = (acked_count.clone(), retries.clone(), next.clone());
            tokio::spawn(async move {
                let mut acked = HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total_sends {
                        return acked;
                    }
                    let text = format!("send {i}");
                    let key = format!("key-{i}");
                    let (seq, failed) =
                        send_until_stored(&replicas, i, &user, chat_id, &text, &key).await;
                    retries.fetch_add(failed, Ordering::Relaxed);
                    acked.insert(text, seq);
                    acked_count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Kill each replica in turn while sends are under way, and start it again.
    let mut kills = 0;
    for fault in 1..=faults {
        let at = fault * total_sends / (faults + 1);
        while acked_count.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = &mut processes[fault % 2];
        victim.kill().await;
        kills += 1;
        victim.restart().await.expect("restart the killed replica");
    }

    let mut acked = HashMap::new();
    for s in senders {
        acked.extend(s.await.expect("sender"));
    }
    assert_eq!(acked.len(), total_sends);
    let stored = stored(&replicas[0], &alice, chat_id).await;
    let (lost, duplicated) = check_stored(&acked, &stored);
    let total = stored.len() as i64;
    done_tx.send_replace(Some(total));
    let mut resumes = 0;
    for f in followers {
        let seen = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("every stream reaches the last seq")
            .expect("follower");
        resumes += seen.resumes;
        let want: Vec<i64> = (1..=total).collect();
        assert_eq!(
            seen.seqs, want,
            "a stream must see every seq once and in order"
        );
    }
    println!(
        "replica kills: sends={total_sends} faults={kills} retried_attempts={} \
         stream_resumes={resumes} stored={total} lost={lost} duplicated={duplicated}",
        retries.load(Ordering::Relaxed)
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(total as usize, total_sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_during_sends_every_stream_gets_every_message() {
    let total_sends = 120;
    let mut nats_server = PrivateNats::start().await.expect("private nats");
    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let mut replicas = Vec::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut config = chat_config(&auth, &db.url, &nats);
        config.nats.url = nats_server.url();
        config.database.max_connections = 5;
        let chat = spawn_chat(config).await;
        replicas.push(lazy(chat.addr));
        running.push(chat);
    }
    let (alice, bob) = (auth.user("alice").await, auth.user("bob").await);
    let chat_id = chat_of_two(&replicas[0], &alice, &bob, "nats goes away").await;
    let (done_tx, done) = watch::channel(None);
    let followers: Vec<_> = [(0, &alice), (1, &bob)]
        .into_iter()
        .map(|(first, user)| {
            tokio::spawn(follow(
                replicas.clone(),
                first,
                user.clone(),
                chat_id,
                done.clone(),
            ))
        })
        .collect();

    let acked_count = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let replicas = replicas.clone();
            let user = if w % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            let (acked_count, next) = (acked_count.clone(), next.clone());
            tokio::spawn(async move {
                let mut acked = HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total_sends {
                        return acked;
                    }
                    let text = format!("send {i}");
                    let (seq, _) =
                        send_until_stored(&replicas, i, &user, chat_id, &text, &format!("key-{i}"))
                            .await;
                    acked.insert(text, seq);
                    acked_count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    while acked_count.load(Ordering::SeqCst) < total_sends / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats_server.kill().await;
    // The outage itself: sends go on meanwhile (they are stored; events are lost).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats_server.restart().await.expect("restart nats");

    let mut acked = HashMap::new();
    for s in senders {
        acked.extend(s.await.expect("sender"));
    }
    let stored = stored(&replicas[0], &alice, chat_id).await;
    let (lost, duplicated) = check_stored(&acked, &stored);
    assert_eq!((lost, duplicated), (0, 0));
    let total = stored.len() as i64;
    assert_eq!(total as usize, total_sends);
    done_tx.send_replace(Some(total));
    for f in followers {
        let seen = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("every stream reaches the last seq")
            .expect("follower");
        let want: Vec<i64> = (1..=total).collect();
        assert_eq!(
            seen.seqs, want,
            "a stream must see every seq once and in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_unavailable_fast_and_heals_by_itself() {
    let mut pg = PrivatePostgres::start().await.expect("private postgres");
    let auth = spawn_auth_on(pg.url("users")).await;
    let nats = TestNats::new();
    let mut config = chat_config(&auth, &pg.url("chat"), &nats);
    config.database.max_connections = 5;
    let chat = spawn_chat(config).await;
    let client = lazy(chat.addr);
    let (alice, bob) = (auth.user("alice").await, auth.user("bob").await);
    let chat_id = chat_of_two(&client, &alice, &bob, "outage").await;
    let service = "grpcchat.chat.v1.ChatService";
    assert_eq!(
        health_status(chat.addr, service).await,
        Some(ServingStatus::Serving)
    );

    // A sender that goes on through the outage, retrying with the same key: every answer
    // is OK or UNAVAILABLE, never INTERNAL.
    let (stop_tx, stop) = watch::channel(false);
    let sender = {
        let client = client.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut acked = HashMap::new();
            let mut unavailable = 0;
            let mut i = 0;
            while !*stop.borrow() {
                let text = format!("send {i}");
                let key = format!("key-{i}");
                loop {
                    let sent = client
                        .clone()
                        .send_message(alice.req(pb::SendMessageRequest {
                            chat_id,
                            text: text.clone(),
                            idempotency_key: key.clone(),
                            ..Default::default()
                        }))
                        .await;
                    match sent {
                        Ok(r) => {
                            acked.insert(text.clone(), r.into_inner().message.expect("m").seq);
                            break;
                        }
                        Err(s) if s.code() == Code::Unavailable => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => panic!("a send during the outage answered {s:?}"),
                    }
                }
                i += 1;
            }
            (acked, unavailable)
        })
    };
    while stored(&client, &alice, chat_id).await.len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's open stream keeps the chat's fan-out running, so a Connect during the outage
    // takes the path that joins first and reads membership and history in one statement.
    let _bobs = client
        .clone()
        .connect(bob.req(pb::ConnectRequest {
            chat_id,
            ..Default::default()
        }))
        .await
        .expect("bob's stream");

    pg.stop(StopMode::Fast).await.expect("stop postgres");
    let stopped = Instant::now();
    // A call made during the outage answers UNAVAILABLE, and soon.
    let err = client
        .clone()
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id,
            page_size: 10,
            ..Default::default()
        }))
        .await
        .expect_err("the database is down");
    let took = stopped.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // So does auth, on the same server.
    let asked = Instant::now();
    let err = auth
        .client
        .clone()
        .login(grpc_chat_proto::auth::v1::LoginRequest {
            email: alice.email.clone(),
            password: alice.password.clone(),
        })
        .await
        .expect_err("the database is down");
    let took = asked.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took < Duration::from_secs(3),
        "login answered after {took:?}"
    );
    // Readiness: NOT_SERVING while storage is unreachable.
    let deadline = Instant::now() + Duration::from_secs(10);
    while health_status(chat.addr, service).await != Some(ServingStatus::NotServing)
        || health_status(auth.addr, "").await != Some(ServingStatus::NotServing)
    {
        assert!(Instant::now() < deadline, "health never went NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once storage is known to be down, calls that need it fail fast: UNAVAILABLE at once,
    // not after the pool's acquire timeout.
    let fast = Duration::from_millis(500);
    let asked = Instant::now();
    let err = client
        .clone()
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id,
            page_size: 10,
            ..Default::default()
        }))
        .await
        .expect_err("the database is down");
    let took = asked.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "storage is unavailable; try again shortly");
    assert!(took < fast, "list answered after {took:?} while known down");
    let asked = Instant::now();
    let err = client
        .clone()
        .connect(alice.req(pb::ConnectRequest {
            chat_id,
            ..Default::default()
        }))
        .await
        .map(|_| ())
        .expect_err("the database is down");
    let took = asked.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took < fast,
        "connect answered after {took:?} while known down"
    );
    let asked = Instant::now();
    let err = auth
        .client
        .clone()
        .login(grpc_chat_proto::auth::v1::LoginRequest {
            email: alice.email.clone(),
            password: alice.password.clone(),
        })
        .await
        .expect_err("the database is down");
    let took = asked.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took < fast,
        "login answered after {took:?} while known down"
    );
    // What needs no storage still answers: the keys tokens are checked with.
    auth.client
        .clone()
        .get_public_keys(grpc_chat_proto::auth::v1::GetPublicKeysRequest {})
        .await
        .expect("public keys need no database");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    pg.start_again().await.expect("start postgres again");
    // Back by itself: SERVING again and calls succeed, with no restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health_status(chat.addr, service).await != Some(ServingStatus::Serving) {
        assert!(
            Instant::now() < deadline,
            "health never went back to SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = {
        let mut seen = 0;
        while seen == 0 {
            seen = stored(&client, &alice, chat_id).await.len();
        }
        seen
    };
    // Let the sender get a few more through, then stop it.
    while stored(&client, &alice, chat_id).await.len() < before + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    let (acked, unavailable) = sender.await.expect("sender");
    let stored = stored(&client, &alice, chat_id).await;
    let (lost, duplicated) = check_stored(&acked, &stored);
    println!(
        "database outage: acked={} unavailable_answers={unavailable} lost={lost} duplicated={duplicated}",
        acked.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(unavailable > 0, "the sender met the outage");
}

/// A member removed while a replica's NATS link is cut: the replica never receives the
/// MemberRemoved event, yet the removed member's stream there must not go on. After the
/// link is back, the replica's fan-out checks its streams' members and ends that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_missed_while_nats_was_away_still_ends_the_removed_members_stream() {
    let nats_server = PrivateNats::start().await.expect("private nats");
    let link = FaultProxy::start(nats_server.addr()).await;
    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let mut config = chat_config(&auth, &db.url, &nats);
    config.nats.url = nats_server.url();
    config.database.max_connections = 5;
    let a = spawn_chat(config.clone()).await;
    config.nats.url = format!("nats://{}", link.addr);
    let b = spawn_chat(config).await;
    let (alice, bob) = (auth.user("alice").await, auth.user("bob").await);
    let chat_id = chat_of_two(&a.client, &alice, &bob, "the link goes away").await;
    let mut bobs = support::connect(&b, &bob, chat_id, 0).await;
    // Past the history: the stream is live on replica b.
    loop {
        let item = bobs.message().await.expect("stream").expect("open");
        if matches!(item.event, Some(Event::HistoryEnd(_))) {
            break;
        }
    }

    link.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.client
        .clone()
        .remove_member(alice.req(pb::RemoveMemberRequest {
            chat_id,
            user_id: bob.id,
        }))
        .await
        .expect("remove bob");
    // The event is published (and acknowledged) while b cannot hear it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.restore();

    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match bobs.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("bob's stream ends once b is back on NATS");
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("no longer a member"), "{ended:?}");
}
