//! A fuzzer for a running server, over real gRPC: it sends every RPC of the four services
//! requests built from raw protobuf wire bytes (random fields of every wire type, with
//! values chosen to hurt: NUL, 9000-character and 70,000-character strings, invalid UTF-8,
//! `i64::MAX`, negative numbers, a thousand repeated members), plus outright garbage and
//! cut-off messages, as nobody, as a user, as a service and with a forged token.
//!
//! What it checks is what a hostile client must never get: INTERNAL or UNKNOWN (a server
//! bug, or a leak of one), a dropped connection, or a status too large to be read. The
//! caller then checks the server is still healthy and stored nothing it refused.
//!
//! Runs are reproducible: the same seed sends the same requests (`FUZZ_SEED`); the number
//! of cases is `FUZZ_CASES` when set (a long run outside CI), else what the test asks.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut};
use futures::StreamExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
    Code, Status,
};

/// Every RPC of the four services: its path, and whether it answers with a stream.
pub const RPCS: &[(&str, bool)] = &[
    ("/grpcchat.auth.v1.AuthService/Register", false),
    ("/grpcchat.auth.v1.AuthService/Login", false),
    ("/grpcchat.auth.v1.AuthService/Refresh", false),
    ("/grpcchat.auth.v1.AuthService/Logout", false),
    ("/grpcchat.auth.v1.AuthService/CheckAccess", false),
    ("/grpcchat.auth.v1.AuthService/GetUserIdsByEmails", false),
    ("/grpcchat.auth.v1.AuthService/GetUserEmails", false),
    ("/grpcchat.auth.v1.AuthService/GetPublicKeys", false),
    ("/grpcchat.auth.v1.AuthService/IssueServiceToken", false),
    ("/grpcchat.auth.v1.AuthService/GetUser", false),
    ("/grpcchat.auth.v1.AuthService/ListUsers", false),
    ("/grpcchat.auth.v1.AuthService/UpdateUser", false),
    ("/grpcchat.auth.v1.AuthService/DeleteUser", false),
    ("/grpcchat.auth.v1.AuthService/ListDeletedUsers", false),
    ("/grpcchat.chat.v1.ChatService/CreateChat", false),
    ("/grpcchat.chat.v1.ChatService/DeleteChat", false),
    ("/grpcchat.chat.v1.ChatService/ListChats", false),
    ("/grpcchat.chat.v1.ChatService/ListMembers", false),
    ("/grpcchat.chat.v1.ChatService/SendMessage", false),
    ("/grpcchat.chat.v1.ChatService/DeleteMessage", false),
    ("/grpcchat.chat.v1.ChatService/EditMessage", false),
    ("/grpcchat.chat.v1.ChatService/MarkRead", false),
    ("/grpcchat.chat.v1.ChatService/AddMembers", false),
    ("/grpcchat.chat.v1.ChatService/RemoveMember", false),
    ("/grpcchat.chat.v1.ChatService/LeaveChat", false),
    ("/grpcchat.chat.v1.ChatService/ListMessages", false),
    ("/grpcchat.chat.v1.ChatService/Connect", true),
    (
        "/grpcchat.notification.v1.NotificationService/GetDeliveryStatus",
        false,
    ),
    (
        "/grpcchat.notification.v1.NotificationService/NotifyMessage",
        false,
    ),
    (
        "/grpcchat.notification.v1.NotificationService/SendEmail",
        false,
    ),
    (
        "/grpcchat.notification.v1.NotificationService/GetEmailStatus",
        false,
    ),
    ("/grpcchat.saga.v1.SagaOrchestrator/SendMessage", false),
    ("/grpcchat.saga.v1.SagaOrchestrator/GetSaga", false),
];

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Sends `body` as the request message of `path` (with `token` as its bearer, when
/// given) and returns the response bytes (a stream's first message) or the status.
pub async fn call_raw(
    channel: Channel,
    path: &'static str,
    streaming: bool,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(Vec<u8>, tonic::metadata::MetadataMap), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(Duration::from_secs(20));
    if let Some(t) = token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    let path = http::uri::PathAndQuery::from_static(path);
    if streaming {
        let resp = grpc.server_streaming(req, path, RawCodec).await?;
        let meta = resp.metadata().clone();
        let first = resp.into_inner().message().await?;
        Ok((first.unwrap_or_default(), meta))
    } else {
        let resp = grpc.unary(req, path, RawCodec).await?;
        let meta = resp.metadata().clone();
        Ok((resp.into_inner(), meta))
    }
}

/// Values that reach the corners of the rules.
#[derive(Debug, Clone, Default)]
pub struct Dictionary {
    /// Strings that mean something on this server: names, emails, tokens, ids.
    pub strings: Vec<String>,
    /// Numbers that do: existing chat ids, user ids, sequence numbers.
    pub numbers: Vec<i64>,
}

fn hostile_strings() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"\0".to_vec(),
        b"a\0b".to_vec(),
        b"x".repeat(9000),
        b"y".repeat(70_000),
        "\u{e9}".repeat(5000).into_bytes(),
        "\u{1F600}".repeat(2000).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0xc3],
        b"\xc3\x28".to_vec(),
        b"alice@".to_vec(),
        b"@example.com".to_vec(),
        b"Bearer ".to_vec(),
        b"eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.".to_vec(),
        b"service:x".to_vec(),
        b"00000000-0000-0000-0000-000000000000".to_vec(),
        b"'; DROP TABLE users; --".to_vec(),
        b"\r\n\t".to_vec(),
    ];
    v.push(format!("{}@example.com", "a".repeat(300)).into_bytes());
    v
}

const HOSTILE_NUMBERS: &[i64] = &[
    0,
    1,
    2,
    3,
    -1,
    i64::MAX,
    i64::MIN,
    i64::MAX - 1,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    4096,
    500,
    501,
    1001,
];

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn len_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One request body: mostly well-formed protobuf with hostile values, sometimes not
/// protobuf at all.
pub fn request(rng: &mut StdRng, dict: &Dictionary) -> Vec<u8> {
    let hostile = hostile_strings();
    let string = |rng: &mut StdRng| -> Vec<u8> {
        match rng.gen_range(0..10) {
            0..=3 if !dict.strings.is_empty() => dict.strings[rng.gen_range(0..dict.strings.len())]
                .clone()
                .into_bytes(),
            0..=6 => hostile[rng.gen_range(0..hostile.len())].clone(),
            _ => {
                let n = rng.gen_range(0..40);
                (0..n).map(|_| rng.gen_range(0x20u8..0x7f)).collect()
            }
        }
    };
    let number = |rng: &mut StdRng| -> i64 {
        match rng.gen_range(0..10) {
            0..=3 if !dict.numbers.is_empty() => dict.numbers[rng.gen_range(0..dict.numbers.len())],
            0..=7 => HOSTILE_NUMBERS[rng.gen_range(0..HOSTILE_NUMBERS.len())],
            _ => rng.gen(),
        }
    };
    let mut out = Vec::new();
    match rng.gen_range(0..20) {
        // Garbage.
        0 => {
            let n = rng.gen_range(1..64);
            out.extend((0..n).map(|_| rng.gen::<u8>()));
        }
        // A length that runs past the end.
        1 => {
            key(&mut out, rng.gen_range(1..5), 2);
            varint(&mut out, 1000);
            out.extend_from_slice(b"short");
        }
        // A thousand and one repeated strings (members, emails) or ids.
        2 => {
            let field = rng.gen_range(1..4);
            let s = string(rng);
            for _ in 0..1001 {
                len_field(&mut out, field, &s);
            }
        }
        _ => {
            for _ in 0..rng.gen_range(0..6) {
                let field = rng.gen_range(1..7);
                match rng.gen_range(0..12) {
                    0..=4 => {
                        key(&mut out, field, 0);
                        varint(&mut out, number(rng) as u64);
                    }
                    5..=9 => len_field(&mut out, field, &string(rng)),
                    10 => {
                        key(&mut out, field, 1);
                        out.extend_from_slice(&number(rng).to_le_bytes());
                    }
                    // Wire types 3, 4 (groups), 6 and 7 (none) that no field has.
                    _ => {
                        key(&mut out, field, [3, 4, 6, 7][rng.gen_range(0..4)]);
                        out.push(rng.gen());
                    }
                }
            }
        }
    }
    out
}

/// What a run sent and got.
#[derive(Debug, Default)]
pub struct Report {
    /// How many requests were sent.
    pub requests: usize,
    /// Answers by status code name ("Ok", "InvalidArgument", ...).
    pub by_code: BTreeMap<String, usize>,
    /// OK answers by RPC path.
    pub ok_by_rpc: BTreeMap<&'static str, usize>,
    /// Saga ids seen in answers (sagas this run made the server log).
    pub saga_ids: BTreeSet<String>,
    /// Answers that must never happen: (rpc, code, message).
    pub failures: Vec<(String, String, String)>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Report {
    /// OK answers to RPCs whose path ends with `rpc` (e.g. `/Login`), summed.
    pub fn ok(&self, rpc: &str) -> usize {
        self.ok_by_rpc
            .iter()
            .filter(|(k, _)| k.ends_with(rpc))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Panics naming the first bad answers, if any.
    pub fn assert_clean(&self) {
        assert!(
            self.failures.is_empty(),
            "{} bad answers of {}; first: {:#?}",
            self.failures.len(),
            self.requests,
            &self.failures[..self.failures.len().min(10)]
        );
    }
}

/// How many cases to run: `FUZZ_CASES` when set, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `cases` requests, spread over every RPC and every token (None: no token), 8 at
/// a time, and records every answer.
///
/// `routes` maps a path prefix to the server that serves it (`("/", channel)` for one
/// server serving everything; `("/grpcchat.auth.", auth)`, ... for split services).
pub async fn run(
    routes: &[(&str, Channel)],
    tokens: &[Option<String>],
    dict: &Dictionary,
    cases: usize,
) -> Report {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut work = Vec::with_capacity(cases);
    for i in 0..cases {
        let (path, streaming) = RPCS[i % RPCS.len()];
        let token = tokens[(i / RPCS.len()) % tokens.len()].clone();
        work.push((path, streaming, request(&mut rng, dict), token));
    }
    let started = Instant::now();
    let answers: Vec<_> = futures::stream::iter(work)
        .map(|(path, streaming, body, token)| {
            let channel = routes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix))
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| panic!("no server serves {path}"));
            async move {
                let res = call_raw(channel, path, streaming, body, token.as_deref()).await;
                (path, res)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut report = Report {
        requests: answers.len(),
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for (path, res) in answers {
        report.record(path, &res);
    }
    report
}

impl Report {
    /// Counts one answer to `path`, keeps the saga it names, and keeps it as a failure
    /// when no input should ever get it.
    fn record(&mut self, path: &'static str, res: &Result<(Vec<u8>, MetadataMap), Status>) {
        let (code, meta) = match res {
            Ok((_, meta)) => (Code::Ok, meta),
            Err(s) => (s.code(), s.metadata()),
        };
        *self.by_code.entry(format!("{code:?}")).or_default() += 1;
        if code == Code::Ok {
            *self.ok_by_rpc.entry(path).or_default() += 1;
        }
        // A saga kept for later (UNAVAILABLE) names itself in its `saga-id`.
        let kept_saga = meta.get("saga-id").and_then(|v| v.to_str().ok());
        if let Some(id) = kept_saga {
            self.saga_ids.insert(id.to_owned());
        }
        if path.ends_with("SagaOrchestrator/SendMessage") {
            if let Some(id) = res.as_ref().ok().and_then(|(bytes, _)| sent_saga(bytes)) {
                self.saga_ids.insert(id);
            }
        }
        if let Err(s) = res {
            // Never: a server fault, a crash or a dropped connection, or a status too
            // large to read (those arrive as errors of the client's own).
            let bad = matches!(s.code(), Code::Internal | Code::Unknown)
                // Everything is up: UNAVAILABLE can only be a service let down by another
                // (a torn connection). A saga kept for later says so and is allowed.
                || (s.code() == Code::Unavailable && kept_saga.is_none())
                || s.message().len() > crate::MAX_STATUS_MESSAGE;
            if bad {
                self.failures.push((
                    path.to_owned(),
                    format!("{:?}", s.code()),
                    s.message().chars().take(300).collect(),
                ));
            }
        }
    }
}

/// The id of the saga a saga `SendMessage` answer carries.
fn sent_saga(bytes: &[u8]) -> Option<String> {
    <grpc_chat_proto::saga::v1::SendMessageResponse as prost::Message>::decode(bytes)
        .ok()?
        .saga
        .map(|s| s.id)
}

/// Whether the server at `channel` answers health checks as SERVING.
pub async fn serving(channel: Channel) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    matches!(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await,
        Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}
