//! The gRPC face of the notifier: the orchestrator asks whether a message's emails went
//! out (`GetDeliveryStatus`) or has them sent now (`NotifyMessage`); other services send
//! one email (`SendEmail`, `GetEmailStatus`). All are internal: service tokens only.

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use chat_common::{
    domain::{Email, IdempotencyKey},
    Caller,
};
use grpc_chat_proto::notification::v1::{
    self as pb, notification_service_server::NotificationService,
};

use crate::{
    error::NotificationError,
    notifier::{overall, Notifier},
    store::NewEmail,
};

use crate::convert::{deliveries_to_pb, email_to_pb};

/// Longest subject of a direct email, in characters.
const MAX_SUBJECT_CHARS: usize = 200;
/// Longest body of a direct email, in characters.
const MAX_BODY_CHARS: usize = 65_536;

/// The longest a caller may ask us to wait.
const MAX_WAIT_MS: i32 = 60_000;
const DEFAULT_NOTIFY_WAIT_MS: i32 = 30_000;
/// How long `NotifyMessage` leaves a message's emails to its event before it sends them
/// itself. Sending them from both at once cost the saga a call to ChatService (the
/// message's text), a record that lost the race and claims that found nothing, for
/// emails the event had sent by the time the call asked; an event that is late (NATS
/// down, a backlog) delays the call by this much.
const EVENT_GRACE: Duration = Duration::from_millis(50);

/// The `NotificationService` gRPC service: parses requests and hands them to the [`Notifier`].
#[derive(Clone)]
pub struct NotificationApi {
    notifier: Notifier,
}

impl NotificationApi {
    /// Serves `notifier`.
    pub fn new(notifier: Notifier) -> Self {
        Self { notifier }
    }
}

/// A direct email as asked for, checked once here: one plausible address, a one-line
/// subject (a line break there would let a caller write mail headers), a bounded body, a
/// required key.
fn parse_email(req: pb::SendEmailRequest) -> Result<NewEmail, NotificationError> {
    let to = Email::parse_as("to", &req.to)
        .map_err(|e| NotificationError::invalid(e.field, e.message))?;
    let subject = req.subject;
    if subject.trim().is_empty() {
        return Err(NotificationError::invalid("subject", "must not be empty"));
    }
    if subject.len() > 4 * MAX_SUBJECT_CHARS || subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(NotificationError::invalid(
            "subject",
            format!("must be at most {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    if subject.chars().any(char::is_control) {
        return Err(NotificationError::invalid(
            "subject",
            "must be one line, without control characters",
        ));
    }
    let body = req.body;
    if body.trim().is_empty() {
        return Err(NotificationError::invalid("body", "must not be empty"));
    }
    if body.len() > 4 * MAX_BODY_CHARS || body.chars().count() > MAX_BODY_CHARS {
        return Err(NotificationError::invalid(
            "body",
            format!("must be at most {MAX_BODY_CHARS} characters"),
        ));
    }
    if body.contains('\0') {
        return Err(NotificationError::invalid(
            "body",
            "must not contain NUL characters",
        ));
    }
    let key = IdempotencyKey::parse(&req.idempotency_key)
        .map_err(|e| NotificationError::invalid(e.field, e.message))?
        .ok_or_else(|| {
            NotificationError::invalid(
                "idempotency_key",
                "is required: a retried call with the same key sends nothing twice",
            )
        })?;
    Ok(NewEmail {
        idempotency_key: key.as_str().to_owned(),
        to_address: to.to_string(),
        subject,
        body,
    })
}

fn check_ids(chat_id: i64, seq: i64) -> Result<(), NotificationError> {
    if chat_id <= 0 {
        return Err(NotificationError::invalid("chat_id", "must be positive"));
    }
    if seq <= 0 {
        return Err(NotificationError::invalid("seq", "must be positive"));
    }
    Ok(())
}

fn wait_ms(field: &'static str, ms: i32, zero_means: i32) -> Result<Duration, NotificationError> {
    if !(0..=MAX_WAIT_MS).contains(&ms) {
        return Err(NotificationError::invalid(
            field,
            format!("must be between 0 and {MAX_WAIT_MS} ms"),
        ));
    }
    let ms = if ms == 0 { zero_means } else { ms };
    Ok(Duration::from_millis(ms as u64))
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id, seq = request.get_ref().seq))]
    async fn get_delivery_status(
        &self,
        request: Request<pb::GetDeliveryStatusRequest>,
    ) -> Result<Response<pb::GetDeliveryStatusResponse>, Status> {
        Caller::require_service(&request)?;
        let req = request.into_inner();
        check_ids(req.chat_id, req.seq)?;
        let wait = wait_ms("wait_timeout_ms", req.wait_timeout_ms, 0)?;
        let deliveries = self
            .notifier
            .wait_final(req.chat_id, req.seq, wait)
            .await?
            .ok_or_else(|| {
                NotificationError::NotFound(format!(
                    "no notification for message {} of chat {}",
                    req.seq, req.chat_id
                ))
            })?;
        let (state, deliveries) = deliveries_to_pb(&deliveries);
        Ok(Response::new(pb::GetDeliveryStatusResponse {
            state,
            deliveries,
        }))
    }

    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id, seq = request.get_ref().seq))]
    async fn notify_message(
        &self,
        request: Request<pb::NotifyMessageRequest>,
    ) -> Result<Response<pb::NotifyMessageResponse>, Status> {
        Caller::require_service(&request)?;
        let req = request.into_inner();
        check_ids(req.chat_id, req.seq)?;
        let wait = wait_ms("timeout_ms", req.timeout_ms, DEFAULT_NOTIFY_WAIT_MS)?;
        let notifier = &self.notifier;
        // The message's event is on its way (ChatService published it before it answered
        // the sender) and usually has its emails sent within milliseconds: when it has by
        // the end of a short grace, that is the answer, with nothing fetched, recorded or
        // claimed here a second time.
        let early = notifier
            .wait_final_after_sending(req.chat_id, req.seq, EVENT_GRACE.min(wait))
            .await?;
        if let Some(deliveries) = early.filter(|d| overall(d).is_final()) {
            let (state, deliveries) = deliveries_to_pb(&deliveries);
            return Ok(Response::new(pb::NotifyMessageResponse {
                state,
                deliveries,
            }));
        }
        // Sending runs in its own task so that a caller who gives up does not cut an
        // email off halfway; the records tell the outcome to whoever asks next.
        let work = if notifier.is_recorded(req.chat_id, req.seq).await? {
            let n = notifier.clone();
            notifier.spawn(
                async move { n.send_claimable(req.chat_id, req.seq).await }.in_current_span(),
            )
        } else {
            let message = notifier.fetch_message(req.chat_id, req.seq).await?;
            let n = notifier.clone();
            notifier.spawn(async move { n.notify_fetched(&message).await }.in_current_span())
        };
        match tokio::time::timeout(wait, work).await {
            Ok(Ok(Ok(()))) | Err(_) => {}
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(join)) => {
                return Err(NotificationError::Internal(anyhow::anyhow!(
                    "notify task failed: {join}"
                ))
                .into())
            }
        }
        // Another replica (the event's) may hold some of the emails: wait for them too.
        let deliveries = notifier
            .wait_final(req.chat_id, req.seq, wait)
            .await?
            .unwrap_or_default();
        let (state, deliveries) = deliveries_to_pb(&deliveries);
        Ok(Response::new(pb::NotifyMessageResponse {
            state,
            deliveries,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn send_email(
        &self,
        request: Request<pb::SendEmailRequest>,
    ) -> Result<Response<pb::SendEmailResponse>, Status> {
        Caller::require_service(&request)?;
        let req = request.into_inner();
        let wait = wait_ms("wait_timeout_ms", req.wait_timeout_ms, 0)?;
        let email = parse_email(req)?;
        let recorded = self.notifier.send_email(email).await?;
        let email = if wait.is_zero() {
            recorded
        } else {
            self.notifier
                .wait_email(recorded.id, wait)
                .await?
                .unwrap_or(recorded)
        };
        Ok(Response::new(pb::SendEmailResponse {
            email: Some(email_to_pb(&email)),
        }))
    }

    #[tracing::instrument(skip_all, fields(email_id = request.get_ref().email_id))]
    async fn get_email_status(
        &self,
        request: Request<pb::GetEmailStatusRequest>,
    ) -> Result<Response<pb::GetEmailStatusResponse>, Status> {
        Caller::require_service(&request)?;
        let req = request.into_inner();
        if req.email_id <= 0 {
            return Err(NotificationError::invalid("email_id", "must be positive").into());
        }
        let wait = wait_ms("wait_timeout_ms", req.wait_timeout_ms, 0)?;
        let email = self
            .notifier
            .wait_email(req.email_id, wait)
            .await?
            .ok_or_else(|| NotificationError::NotFound(format!("no email {}", req.email_id)))?;
        Ok(Response::new(pb::GetEmailStatusResponse {
            email: Some(email_to_pb(&email)),
        }))
    }
}
