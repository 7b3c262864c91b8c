//! Link previews end to end, on both engines: a message with an https URL is answered at
//! once, then gets its preview from a real HTTPS site the test runs (its name pinned to
//! loopback, its CA trusted: `link_preview::test_site`); streams get MESSAGE_PREVIEWED and
//! history carries the preview. A slow page does not slow the send; a private address
//! gets no preview and breaks nothing; an edit clears the preview and previews anew.

mod support;

use std::time::{Duration, Instant};

use chat_service::preview::PreviewConfig;
use chat_testkit::{TestChat, TestUser};
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use link_preview::test_site::{og_page, Reply, TestSite};
use support::*;
use tonic::Streaming;

/// A site and a replica whose previews may fetch from it.
async fn world_with_site() -> (World, TestSite, TestChat) {
    let w = World::new().await;
    let site = TestSite::start("preview.test").await;
    let mut config = w.config();
    config.settings.link_previews = Some(PreviewConfig {
        settings: site.settings(),
        concurrency: 16,
    });
    let chat = chat_testkit::spawn_chat(config).await;
    (w, site, chat)
}

async fn history(chat: &TestChat, user: &TestUser, chat_id: i64) -> Vec<pb::Message> {
    let mut messages = chat
        .client
        .clone()
        .list_messages(user.req(pb::ListMessagesRequest {
            chat_id,
            ..Default::default()
        }))
        .await
        .expect("list messages")
        .into_inner()
        .messages;
    messages.reverse();
    messages
}

/// Reads the stream until a MESSAGE_PREVIEWED event arrives; the seqs of the messages
/// seen on the way, and the event.
async fn next_preview(
    stream: &mut Streaming<pb::ConnectResponse>,
    within: Duration,
) -> (Vec<i64>, pb::MessagePreviewed) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no preview within {within:?}; messages seen: {seen:?}"))
            .expect("stream ok")
            .expect("stream open");
        match item.event {
            Some(Event::Message(m)) => seen.push(m.seq),
            Some(Event::MessagePreviewed(p)) => return (seen, p),
            _ => {}
        }
    }
}

async fn a_link_gets_a_preview_on_streams_and_in_history() {
    let (w, site, chat) = world_with_site().await;
    site.route(
        "/article",
        Reply::Html(og_page("Rust 2027", "What is new", "The Blog")),
    );
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let mut live = connect(&chat, &bob, id, 0).await;
    let url = site.url("/article");
    let sent = send(&chat, &alice, id, &format!("look: {url}, really")).await;
    assert_eq!(
        sent.link_preview, None,
        "the send does not wait for the preview"
    );

    let (seen, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(seen, vec![sent.seq], "the message first, then its preview");
    assert_eq!((event.chat_id, event.seq), (id, sent.seq));
    let preview = event.link_preview.expect("the preview");
    assert_eq!(preview.url, url);
    assert_eq!(preview.title, "Rust 2027");
    assert_eq!(preview.description, "What is new");
    assert_eq!(preview.site_name, "The Blog");
    assert_eq!(preview.image_url, site.url("/cover.png"));

    // Stored with the message: history and a new stream's history carry it.
    let stored = history(&chat, &bob, id).await;
    assert_eq!(stored[0].link_preview.as_ref(), Some(&preview));
    let mut later = connect(&chat, &alice, id, 0).await;
    let first = tokio::time::timeout(Duration::from_secs(30), later.message())
        .await
        .expect("history")
        .expect("stream ok")
        .and_then(|r| r.event);
    match first {
        Some(Event::Message(m)) => assert_eq!(m.link_preview, Some(preview.clone())),
        other => panic!("expected the message, got {other:?}"),
    }

    // A message without a link, and one with the same link (cached), go as usual.
    let plain = send(&chat, &alice, id, "no link").await;
    let again = send(&chat, &alice, id, &format!("again {url}")).await;
    let (seen, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(seen, vec![plain.seq, again.seq]);
    assert_eq!(event.seq, again.seq);
    assert_eq!(
        site.requests(),
        vec!["/article"],
        "the second was served from the cache"
    );
}

async fn a_slow_page_does_not_slow_the_send() {
    let (w, site, chat) = world_with_site().await;
    site.route(
        "/slow",
        Reply::Delayed(
            Duration::from_secs(3),
            Box::new(Reply::Html(og_page("Slow", "but there", "Snail"))),
        ),
    );
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let mut live = connect(&chat, &alice, id, 0).await;
    let started = Instant::now();
    let sent = send(&chat, &alice, id, &site.url("/slow")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the send took {took:?} with a page that answers in 3 s"
    );
    let (_, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(event.seq, sent.seq);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the preview came after the page answered"
    );
}

async fn a_private_address_gets_no_preview_and_nothing_breaks() {
    let (w, site, chat) = world_with_site().await;
    site.route(
        "/to-metadata",
        Reply::Redirect("https://169.254.169.254/latest/meta-data/".into()),
    );
    site.route("/fine", Reply::Html(og_page("Fine", "a public page", "Ok")));
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let mut live = connect(&chat, &alice, id, 0).await;
    let refused = [
        "https://127.0.0.1/admin".to_owned(),
        "https://localhost/".to_owned(),
        "https://[::1]/".to_owned(),
        "https://10.1.2.3/".to_owned(),
        site.url("/to-metadata"),
    ];
    let mut seqs = Vec::new();
    for url in &refused {
        seqs.push(send(&chat, &alice, id, &format!("see {url}")).await.seq);
    }
    // A good link after them: its preview is the first (and only) one to come.
    let fine = send(&chat, &alice, id, &site.url("/fine")).await;
    seqs.push(fine.seq);
    let (seen, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(event.seq, fine.seq);
    assert!(seen.iter().all(|s| seqs.contains(s)));
    // Give a stray preview a moment to show up, then check history.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = history(&chat, &alice, id).await;
    assert_eq!(stored.len(), refused.len() + 1);
    for m in &stored[..refused.len()] {
        assert_eq!(m.link_preview, None, "message {} has no preview", m.seq);
    }
    assert!(stored[refused.len()].link_preview.is_some());
    // Each page fetched once, and the redirect into the metadata address not followed.
    // Previews are fetched in tasks of their own, so the two requests may come in
    // either order.
    let mut requests = site.requests();
    requests.sort();
    assert_eq!(requests, vec!["/fine", "/to-metadata"]);
}

async fn an_edit_clears_the_preview_and_previews_anew() {
    let (w, site, chat) = world_with_site().await;
    site.route("/one", Reply::Html(og_page("One", "first", "S")));
    site.route("/two", Reply::Html(og_page("Two", "second", "S")));
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let mut live = connect(&chat, &alice, id, 0).await;
    let sent = send(&chat, &alice, id, &site.url("/one")).await;
    let (_, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(event.link_preview.map(|p| p.title).as_deref(), Some("One"));

    let edited = chat
        .client
        .clone()
        .edit_message(alice.req(pb::EditMessageRequest {
            chat_id: id,
            seq: sent.seq,
            text: format!("rather {}", site.url("/two")),
        }))
        .await
        .expect("edit")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(
        edited.link_preview, None,
        "the old preview went with the old text"
    );
    let (_, event) = next_preview(&mut live, Duration::from_secs(30)).await;
    assert_eq!(event.seq, sent.seq);
    assert_eq!(event.link_preview.map(|p| p.title).as_deref(), Some("Two"));
    let stored = history(&chat, &alice, id).await;
    assert_eq!(
        stored[0].link_preview.as_ref().map(|p| p.title.as_str()),
        Some("Two")
    );
}

async fn previews_can_be_off() {
    let w = World::new().await;
    let site = TestSite::start("preview.test").await;
    site.route("/page", Reply::Html(og_page("T", "D", "S")));
    // The default test configuration: previews off.
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    send(&chat, &alice, id, &site.url("/page")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(history(&chat, &alice, id).await[0].link_preview, None);
    assert!(site.requests().is_empty());
}

/// Replica A loses NATS, stores a message with a link and then its preview (both
/// publishes fail), and stops: bob's stream on replica B gets the message and then the
/// preview, both published from the outbox (B's catch-up is too slow to be the one).
async fn a_preview_a_replica_could_not_publish_reaches_streams() {
    let w = World::new().await;
    let site = TestSite::start("preview.test").await;
    site.route("/page", Reply::Html(og_page("Kept", "in the outbox", "S")));
    let nats_addr: std::net::SocketAddr = chat_testkit::nats_url()
        .trim_start_matches("nats://")
        .parse()
        .expect("NATS address");
    let proxy = chat_testkit::TcpProxy::start(nats_addr).await;
    let mut config_a = w.config();
    config_a.nats.url = format!("nats://{}", proxy.addr);
    config_a.settings.link_previews = Some(PreviewConfig {
        settings: site.settings(),
        concurrency: 4,
    });
    let a = chat_testkit::spawn_chat(config_a).await;
    let mut config_b = w.config();
    config_b.settings.catch_up_every = Duration::from_secs(600);
    let b = chat_testkit::spawn_chat(config_b).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let first = send(&a, &alice, id, "before the outage").await;
    let mut on_b = connect(&b, &bob, id, 0).await;
    assert_eq!(read_until(&mut on_b, first.seq).await, vec![first.seq]);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = send(&a, &alice, id, &site.url("/page")).await;
    // Stored (B reads the same database) before A goes.
    let stored = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let h = history(&b, &bob, id).await;
            if let Some(p) = h
                .iter()
                .find(|x| x.seq == m.seq)
                .and_then(|x| x.link_preview.clone())
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the preview is stored within 60 s");
    assert_eq!(stored.title, "Kept");
    a.shutdown.trigger();
    drop(a);

    // The relay publishes each row as the message is now: the message's own event may
    // already carry the preview (when B's relay reaches the preview's row first, while
    // A's claim on the message's row runs out, that row's event is dropped by the stream
    // as it has not sent the seq yet), or the preview follows as MESSAGE_PREVIEWED.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let got = loop {
        let item = tokio::time::timeout_at(deadline, on_b.message())
            .await
            .unwrap_or_else(|_| panic!("no preview within 60 s; saw {seen:?}"))
            .expect("stream ok")
            .expect("stream open");
        match item.event {
            Some(Event::Message(x)) => {
                seen.push(x.seq);
                if let Some(p) = x.link_preview.filter(|_| x.seq == m.seq) {
                    break p;
                }
            }
            Some(Event::MessagePreviewed(p)) if p.seq == m.seq => {
                assert_eq!(seen, vec![m.seq], "the message first, from the outbox");
                break p.link_preview.expect("the preview");
            }
            _ => {}
        }
    };
    assert_eq!(got, stored);
}

chat_testkit::backend_tests!(
    a_link_gets_a_preview_on_streams_and_in_history,
    a_slow_page_does_not_slow_the_send,
    a_private_address_gets_no_preview_and_nothing_breaks,
    an_edit_clears_the_preview_and_previews_anew,
    previews_can_be_off,
    a_preview_a_replica_could_not_publish_reaches_streams,
);
