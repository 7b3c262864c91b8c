//! What every scenario needs as a client: channels, registered users, chats.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use chat_common::service_token::with_bearer;
use grpc_chat_proto::{
    auth::v1::{self as authpb, auth_service_client::AuthServiceClient},
    chat::v1::{self as chatpb, chat_service_client::ChatServiceClient},
};

/// Streams opened per HTTP/2 connection. Servers cap concurrent streams per connection
/// (hyper's default is 200), so many streams are spread over many channels.
pub const STREAMS_PER_CHANNEL: usize = 100;

/// A channel to `url` (`http://host:port`), connected eagerly.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A channel to `url` whose connection comes from the local address `local` (another
/// 127.x.y.z for a second client host on loopback).
pub async fn channel_from(url: &str, local: &str) -> anyhow::Result<Channel> {
    let local: std::net::IpAddr = local
        .parse()
        .with_context(|| format!("bad address {local}"))?;
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .local_address(Some(local))
        .connect()
        .await
        .with_context(|| format!("connecting to {url} from {local}"))
}

/// `n` channels to `url`.
pub async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(channel(url).await?);
    }
    Ok(out)
}

/// A histogram of microseconds up to one minute.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

impl User {
    /// `message` with this user's access token.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(tonic::Request::new(message), &self.token)
    }
}

/// A name no earlier run used, so runs against a long-lived server do not collide.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// Registers and logs in `n` users named after `tag` and this run, concurrently (bcrypt
/// runs on the server's blocking pool, so this takes a while at cost 12).
pub async fn users(auth_url: &str, tag: &str, n: usize) -> anyhow::Result<Vec<User>> {
    let ch = channel(auth_url).await?;
    let run = run_id();
    let futs = (0..n.max(1)).map(|i| {
        let mut client = AuthServiceClient::new(ch.clone());
        let username = format!("{tag}{run}{i}");
        async move {
            let email = format!("{username}@bench.example.com");
            let password = format!("{username}-password");
            client
                .register(authpb::RegisterRequest {
                    email: email.clone(),
                    username: username.clone(),
                    password: password.clone(),
                })
                .await
                .with_context(|| format!("registering {username}"))?;
            let tokens = client
                .login(authpb::LoginRequest {
                    email: email.clone(),
                    password: password.clone(),
                })
                .await
                .with_context(|| format!("logging in {username}"))?
                .into_inner()
                .tokens
                .context("login returned no tokens")?;
            anyhow::Ok(User {
                username,
                email,
                password,
                token: tokens.access_token,
            })
        }
    });
    futures::future::try_join_all(futs).await
}

/// A chat created by `owner` with `members` (the owner is a member anyway).
pub async fn create_chat(
    chat: &mut ChatServiceClient<Channel>,
    owner: &User,
    members: &[User],
) -> anyhow::Result<i64> {
    Ok(chat
        .create_chat(owner.req(chatpb::CreateChatRequest {
            title: "bench".into(),
            // A list naming no one is refused: a chat of the owner alone names it.
            members: {
                let others: Vec<String> = members
                    .iter()
                    .filter(|m| m.username != owner.username)
                    .map(|m| m.username.clone())
                    .collect();
                if others.is_empty() {
                    vec![owner.username.clone()]
                } else {
                    others
                }
            },
        }))
        .await
        .context("CreateChat")?
        .into_inner()
        .chat
        .context("CreateChat returned no chat")?
        .id)
}

/// A message text of exactly `size` bytes that starts with `head` (so receivers can
/// parse it back), padded with dots.
pub fn text_of_size(head: &str, size: usize) -> String {
    let mut s = String::with_capacity(size.max(head.len()));
    s.push_str(head);
    while s.len() < size {
        s.push('.');
    }
    s
}
