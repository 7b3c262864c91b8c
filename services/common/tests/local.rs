//! In-process calls (`chat_common::local`): a client of this process's own services goes
//! over the network until the routes are installed, then straight to them, and a call
//! that gets no answer still ends at its deadline instead of hanging.

use std::{convert::Infallible, time::Duration};

use chat_common::{client::lazy_channel, local::LocalRoutes};
use tonic::{body::Body, server::NamedService, service::Routes, Code};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Nothing listens here (the discard port), so a call that goes over the network fails.
const NOBODY: &str = "http://127.0.0.1:9";

async fn check(client: &mut HealthClient<chat_common::client::TracedChannel>) -> Code {
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    req.set_timeout(Duration::from_millis(300));
    match tokio::time::timeout(Duration::from_secs(10), client.check(req))
        .await
        .expect("the call ends by its deadline")
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn calls_go_in_process_once_the_routes_are_installed() {
    let local = LocalRoutes::default();
    let channel = lazy_channel(NOBODY).expect("url").with_local(local.clone());
    let mut client = HealthClient::new(channel);
    assert_eq!(
        check(&mut client).await,
        Code::Unavailable,
        "before the routes are installed the call goes over the network"
    );
    let (_reporter, health) = tonic_health::server::health_reporter();
    local.install(Routes::new(health));
    assert_eq!(check(&mut client).await, Code::Ok);
    // A clone made before and one made after both go in process.
    let mut other = client.clone();
    assert_eq!(check(&mut other).await, Code::Ok);
}

/// A service that takes every call and never answers.
#[derive(Clone)]
struct Silent;

impl NamedService for Silent {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tower::Service<http::Request<Body>> for Silent {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::Pending<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        futures::future::pending()
    }
}

#[tokio::test]
async fn a_local_call_without_an_answer_ends_at_its_deadline() {
    let local = LocalRoutes::default();
    local.install(Routes::new(Silent));
    let mut client = HealthClient::new(lazy_channel(NOBODY).expect("url").with_local(local));
    let started = std::time::Instant::now();
    // What tonic makes of a channel's timeout: CANCELLED ("Timeout expired").
    assert_eq!(check(&mut client).await, Code::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
