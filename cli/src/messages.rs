//! The calls about messages that both the one-shot commands and `connect` make: sending
//! one (at most once, whatever the network does) and moving the read marker.

use grpc_chat_proto::chat::v1::{MarkReadRequest, Message, SendMessageRequest};
use tonic::{Response, Status};

use crate::{
    client::{authed_request, Client, Service},
    error::{is_transport_failure, CliError, Op},
    pending::PendingSends,
};

/// How long a send that did not reach the server waits before its one retry.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Makes an authenticated `call`, and makes it once more after a pause when it did not
/// reach the server (or lost its connection): for a write that carries an idempotency
/// key, so that the second try cannot store it twice.
pub async fn once_more_if_unreached<T, F, Fut>(
    client: &mut Client,
    mut call: F,
) -> Result<Result<T, Status>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    let answer = client.authed_status(&mut call).await?;
    if !matches!(&answer, Err(s) if is_transport_failure(s)) {
        return Ok(answer);
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    client.authed_status(call).await
}

/// Moves the caller's read marker in `chat_id` forward to `seq`; returns the marker as the
/// server stored it (higher than `seq` when it was already past it).
pub async fn mark_read(client: &mut Client, chat_id: i64, seq: i64) -> Result<i64, CliError> {
    let chat = client.chat.clone();
    let resp = client
        .authed(Service::Chat, Op::Chat(chat_id), |t| {
            let mut chat = chat.clone();
            let req = authed_request(MarkReadRequest { chat_id, seq }, &t);
            async move { chat.mark_read(req).await }
        })
        .await?;
    Ok(resp.last_read_seq)
}

/// Sends `text` to the chat as the logged-in user, with an idempotency key kept on disk until the
/// outcome is known ([`PendingSends`]), so that retrying a send whose answer was lost does not post
/// it twice. A call that fails before reaching the server (or loses its connection) is tried
/// once more with the same key.
pub async fn send(client: &mut Client, chat_id: i64, text: String) -> Result<Message, CliError> {
    let chat = client.chat.clone();
    let pending = PendingSends::in_dir(client.store().dir());
    let what = format!("chat\n{}\n{chat_id}\n{text}", client.address(Service::Chat));
    let key = pending.key_for(&what)?;
    let call = |t: String| {
        let mut chat = chat.clone();
        let req = authed_request(
            SendMessageRequest {
                chat_id,
                text: text.clone(),
                idempotency_key: key.clone(),
                on_behalf_of_user_id: 0,
            },
            &t,
        );
        async move { chat.send_message(req).await }
    };
    let answer = once_more_if_unreached(client, call).await?;
    let op = Op::Chat(chat_id);
    match answer {
        Ok(resp) => {
            pending.forget(&what);
            resp.message
                .ok_or_else(|| CliError::new("the server sent no message"))
        }
        Err(s) if is_transport_failure(&s) || grpc_chat_proto::reasons::retryable(s.code()) => {
            let error = client.error(&s, Service::Chat, op);
            Err(CliError::of(
                error.kind(),
                format!(
                    "{error}; the message may have been sent: run the same command again, it will not be sent twice"
                ),
            ))
        }
        Err(s) => {
            pending.forget(&what);
            Err(client.error(&s, Service::Chat, op))
        }
    }
}
