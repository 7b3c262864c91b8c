//! The one tower layer shape the servers' own layers share: something noted of each
//! request (its method, when it came), or an answer given at once without the service
//! under the layer, and a look at the answer the call got. [`CallHook`] says what;
//! [`HookLayer`] does the tower plumbing (readiness, boxing the future) once, so the status
//! guard, the metrics and the storage fail-fast hold only what they are for.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// What a [`HookLayer`] does around each call.
pub trait CallHook: Clone + Send + 'static {
    /// What is kept of the request until its answer.
    type Note: Send + 'static;

    /// Notes what the answer's look needs of `req`, before the call goes on; or answers
    /// the call at once with a status (`Err`), without the service under the layer and
    /// without [`CallHook::on_response`].
    fn on_request<B>(&self, req: &http::Request<B>) -> Result<Self::Note, tonic::Status>;

    /// Looks at the call's answer (the service's error, for a call that failed below gRPC)
    /// and may rewrite it.
    fn on_response<RB, E>(note: Self::Note, res: &mut Result<http::Response<RB>, E>);
}

/// A tower layer that runs `H` around every call of the services under it.
#[derive(Clone, Copy, Debug, Default)]
pub struct HookLayer<H>(pub H);

impl<S, H: Clone> tower::Layer<S> for HookLayer<H> {
    type Service = Hooked<S, H>;
    fn layer(&self, inner: S) -> Self::Service {
        Hooked {
            inner,
            hook: self.0.clone(),
        }
    }
}

/// The service made by [`HookLayer`]: passes calls to `inner`, with the hook around each.
#[derive(Clone, Debug)]
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

impl<S, H, B, RB> tower::Service<http::Request<B>> for Hooked<S, H>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
    H: CallHook,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let note = match self.hook.on_request(&req) {
            Ok(note) => note,
            Err(status) => {
                let answer = status.into_http();
                return Box::pin(async move { Ok(answer) });
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await;
            H::on_response(note, &mut res);
            res
        })
    }
}
