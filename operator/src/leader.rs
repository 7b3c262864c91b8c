//! Leader election on a `coordination.k8s.io/v1` Lease, so that with several operator
//! replicas (for fast failover) only one reconciles at a time.
//!
//! kube-runtime has no elector, so this is the client-go algorithm in small: a candidate
//! takes the Lease when it is free or its holder stopped renewing for `lease_duration`;
//! the holder renews every `renew_every`. Every write carries the `resourceVersion` it
//! read, so two candidates racing for an expired Lease cannot both win: the loser gets a
//! 409 Conflict and stays a candidate. A holder that cannot renew before its lease
//! would expire steps down (stops its controller) before anyone else can take over.
//!
//! Why not a crate: `kube-leader-election` needs kube 4, and `kube-lease-manager` (0.13,
//! which fits kube 5) does not step down: when renewing fails (API server unreachable) its
//! watcher logs and retries but keeps reporting "leader", so an operator whose renewals
//! fail (a slow or partitioned API server) still reconciles after its lease expired and
//! another replica took over: two writers, which this module exists to prevent.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    api::{Api, PostParams},
    Client,
};

/// Leader election on a `coordination.k8s.io` Lease: only the replica holding it
/// reconciles, so two operators never apply at once.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// How long a holder that stopped renewing keeps the Lease before another may take it.
    pub lease_duration: Duration,
    /// How often the holder renews; well under `lease_duration`.
    pub renew_every: Duration,
}

impl LeaseLock {
    /// A lock on the Lease `name` in `namespace`, held as `identity` (unique per replica);
    /// 15 s lease renewed every 5 s.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// Takes or renews the Lease once. `Ok(true)`: this process holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration_secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        let expires = spec.renew_time.as_ref().map(|t| {
            let d = i64::from(spec.lease_duration_seconds.unwrap_or(duration_secs));
            t.0.saturating_add(SignedDuration::from_secs(d))
                .unwrap_or(t.0)
        });
        let expired = expires.is_none_or(|e| e < now);
        if held && !mine && !expired {
            return Ok(false);
        }
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.identity.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(MicroTime(now));
        if !mine {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "leader election"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews until renewal fails for longer than the lease allows; returns then, when
    /// another replica may take over and this one must stop acting.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "renewing the lease");
                    // Step down before the lease can expire for the others.
                    if last_renewed.elapsed() + self.renew_every >= self.lease_duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up on shutdown so a successor need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeApiServer;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/leader";

    fn lock(client: &Client, identity: &str) -> LeaseLock {
        LeaseLock::new(client.clone(), "ops", "leader", identity)
    }

    fn holder(server: &FakeApiServer) -> String {
        server.get(LEASE).unwrap()["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let (client, server) = FakeApiServer::start();
        let a = lock(&client, "a");
        let b = lock(&client, "b");
        assert!(
            a.try_acquire_or_renew().await.unwrap(),
            "a free lease is taken"
        );
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "a held lease is not"
        );
        assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
        assert_eq!(holder(&server), "a");

        // a stops renewing: its lease expires.
        server.edit(LEASE, |l| {
            l["spec"]["renewTime"] = serde_json::json!("2000-01-01T00:00:00.000000Z")
        });
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&server), "b");
        assert_eq!(server.get(LEASE).unwrap()["spec"]["leaseTransitions"], 1);
        assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
    }

    #[tokio::test]
    async fn a_released_lease_is_free_at_once() {
        let (client, server) = FakeApiServer::start();
        let a = lock(&client, "a");
        let b = lock(&client, "b");
        assert!(a.try_acquire_or_renew().await.unwrap());
        a.release().await;
        assert_eq!(holder(&server), "");
        assert!(b.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn a_concurrent_write_loses_on_the_resource_version() {
        let (client, server) = FakeApiServer::start();
        let a = lock(&client, "a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        // Another candidate wrote between our read and our write.
        server.fail("PUT /apis/coordination.k8s.io", 409);
        assert!(!a.try_acquire_or_renew().await.unwrap());
    }
}
