//! The reconcile loop: turns one `ChatCluster` into its objects and reports its status.
//!
//! Shape (after kube-rs/controller-rs): [`reconcile`] is a function of the object and a
//! [`Context`]; it applies every desired object from [`crate::render`] with server-side
//! apply under one field manager (so a repeated reconcile is a no-op and drift made by
//! others is overwritten), then writes the status computed by [`crate::status`] only
//! when it changed. [`error_policy`] requeues failures with exponential backoff per
//! object, so an API error never becomes a hot loop or a crash.
//!
//! Migrations gate rollouts: a component's Deployment is only applied once the migration
//! Job for its image has succeeded (recorded as `migratedImage` in the status, so a
//! cleaned-up Job is not re-run). Until then the old pods keep serving the old version.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{Future, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
    },
    NamespaceResourceScope,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams},
    runtime::{controller::Action, watcher, Controller},
    Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;

use crate::{
    crd::{ChatCluster, ChatClusterStatus},
    render::{self, Component},
    secrets,
    status::{self, Migration, Observed, Problem},
};

/// Field manager of every write, and the prefix of the operator's labels.
pub const MANAGER: &str = "chat-operator";

/// Label selector matching what the operator creates (what it watches besides clusters).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=chat-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error("generating a secret: {0}")]
    Generate(String),
    #[error("the ChatCluster has no namespace")]
    NoNamespace,
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Render(_) => "render",
            Error::Generate(_) => "generate",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Consecutive failures per `namespace/name`, for the backoff of [`error_policy`].
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn reset_failures(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        }
    }
}

fn key(cluster: &ChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Delay before retrying after the `failures`-th consecutive failure: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// How often a settled cluster is looked at again, though owned-object watches usually
/// trigger a reconcile sooner.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is still rolling out is polled.
pub const PROGRESS_POLL: Duration = Duration::from_secs(15);

pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    tracing::info!(cluster = %key(&cluster), "reconciling");
    metrics::counter!("chat_operator_reconciliations_total").increment(1);

    let result = match cluster.spec.validate() {
        Err(invalid) => {
            let status = status::compute(
                cluster.status.as_ref(),
                cluster.meta().generation,
                &[],
                Some(&Problem::InvalidSpec(invalid.0.clone())),
                None,
                &now(),
            );
            write_status(&ctx.client, &ns, &cluster, &status).await?;
            tracing::warn!(cluster = %key(&cluster), %invalid, "invalid spec");
            // Nothing to retry: the next edit of the spec triggers a reconcile.
            Ok(Action::await_change())
        }
        Ok(()) => match apply_all(&ctx.client, &ns, &cluster).await {
            Ok(observed) => {
                let status = status::compute(
                    cluster.status.as_ref(),
                    cluster.meta().generation,
                    &observed,
                    None,
                    render::endpoint(&cluster.spec),
                    &now(),
                );
                write_status(&ctx.client, &ns, &cluster, &status).await?;
                let progressing = status::condition(&status, "Progressing")
                    .is_some_and(|c| c.status == "True")
                    || status::condition(&status, "Ready").is_some_and(|c| c.status != "True");
                Ok(Action::requeue(if progressing {
                    PROGRESS_POLL
                } else {
                    RESYNC
                }))
            }
            Err(e) => {
                // Report the failure where the user looks; the error policy retries.
                let status = status::compute(
                    cluster.status.as_ref(),
                    cluster.meta().generation,
                    &[],
                    Some(&Problem::ReconcileError(e.to_string())),
                    render::endpoint(&cluster.spec),
                    &now(),
                );
                if let Err(status_err) = write_status(&ctx.client, &ns, &cluster, &status).await {
                    tracing::warn!(error = %status_err, "could not report the failure in the status");
                }
                Err(e)
            }
        },
    };
    metrics::histogram!("chat_operator_reconcile_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&key(&cluster));
    }
    result
}

/// Requeues a failed reconcile with exponential backoff per object.
pub fn error_policy(cluster: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&cluster));
    let delay = backoff(failures);
    metrics::counter!("chat_operator_reconcile_failures_total", "error" => error.metric_label())
        .increment(1);
    tracing::warn!(cluster = %key(&cluster), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Writes the status when it differs from what the object carries.
async fn write_status(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    status: &ChatClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Creates the generated Secret, or adds the keys it lacks; never changes existing keys.
async fn ensure_generated_secret(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
) -> Result<(), Error> {
    if render::generated_keys(&cluster.spec).is_empty() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = render::name(cluster, "generated");
    let existing: BTreeMap<String, String> = api
        .get_opt(&name)
        .await?
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect();
    let filled =
        secrets::fill_missing(cluster, &existing).map_err(|e| Error::Generate(e.to_string()))?;
    if let Some(data) = filled {
        tracing::info!(secret = %name, "writing generated secrets");
        let owner = render::owner_reference(cluster)?;
        apply(
            client,
            ns,
            &render::generated_secret(cluster, &owner, &data)?,
        )
        .await?;
    }
    Ok(())
}

fn deployment_observed(c: Component, image: &str, d: Option<&Deployment>) -> Observed {
    let desired = d
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let status = d.and_then(|d| d.status.clone()).unwrap_or_default();
    let generation = d.and_then(|d| d.metadata.generation);
    let ready = status.ready_replicas.unwrap_or(0);
    let rolled_out = d.is_some()
        && status.observed_generation >= generation
        && status.updated_replicas.unwrap_or(0) >= desired
        && status.replicas.unwrap_or(0) == desired
        && ready >= desired;
    Observed {
        name: c.name().into(),
        replicas: desired,
        ready_replicas: ready,
        rolled_out,
        migration: Migration::Done,
        migrated_image: Some(image.to_string()),
    }
}

fn stateful_set_observed(name: &str, s: &StatefulSet) -> Observed {
    let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = s.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    Observed {
        name: name.into(),
        replicas: desired,
        ready_replicas: ready,
        rolled_out: status.observed_generation >= s.metadata.generation
            && status.current_revision == status.update_revision
            && ready >= desired,
        migration: Migration::Done,
        migrated_image: None,
    }
}

/// The state of a migration Job as returned by the API server.
pub fn job_state(job: &Job) -> Migration {
    let status = job.status.clone().unwrap_or_default();
    if status.succeeded.unwrap_or(0) > 0 {
        return Migration::Done;
    }
    let failed = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    match failed {
        Some(c) => Migration::Failed(format!(
            "job {} failed: {}",
            job.name_any(),
            c.reason.unwrap_or_else(|| "unknown reason".into())
        )),
        None => Migration::Running,
    }
}

/// Applies every desired object and returns what was observed of the workloads.
pub async fn apply_all(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
) -> Result<Vec<Observed>, Error> {
    let desired = render::desired(cluster)?;
    ensure_generated_secret(client, ns, cluster).await?;
    apply(client, ns, &desired.service_account).await?;
    for cm in &desired.config_maps {
        apply::<ConfigMap>(client, ns, cm).await?;
    }
    for svc in &desired.services {
        apply::<Service>(client, ns, svc).await?;
    }
    let mut observed = Vec::new();
    for sts in &desired.stateful_sets {
        let applied = apply::<StatefulSet>(client, ns, sts).await?;
        let component = applied
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_default();
        observed.push(stateful_set_observed(&component, &applied));
    }

    let previous = cluster.status.clone().unwrap_or_default();
    for ((c, job), (_, deployment)) in desired.migrations.iter().zip(&desired.deployments) {
        let image = c.image(&cluster.spec);
        let already = previous
            .components
            .iter()
            .any(|s| s.name == c.name() && s.migrated_image.as_deref() == Some(&image));
        let migration = if already {
            Migration::Done
        } else {
            job_state(&apply::<Job>(client, ns, job).await?)
        };
        if migration == Migration::Done {
            let applied = apply::<Deployment>(client, ns, deployment).await?;
            observed.push(deployment_observed(*c, &image, Some(&applied)));
        } else {
            // Keep the running version; report it as it is.
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let current = api.get_opt(&render::name(cluster, c.name())).await?;
            let mut o = deployment_observed(*c, &image, current.as_ref());
            o.migrated_image = previous
                .components
                .iter()
                .find(|s| s.name == c.name())
                .and_then(|s| s.migrated_image.clone());
            o.migration = migration;
            if current.is_none() {
                o.replicas = c.replicas(&cluster.spec);
            }
            observed.push(o);
        }
    }
    for pdb in &desired.pdbs {
        apply::<PodDisruptionBudget>(client, ns, pdb).await?;
    }
    match &desired.ingress {
        Some(ingress) => {
            apply::<Ingress>(client, ns, ingress).await?;
        }
        None if previous.endpoint.is_some() => {
            // The ingress was removed from the spec.
            let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
            match api
                .delete(&cluster.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        None => {}
    }
    Ok(observed)
}

/// Runs the controller until `shutdown` resolves. `namespace`: watch only that one.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = || watcher::Config::default().labels(MANAGED_SELECTOR);
    let ctx = Arc::new(Context::new(client.clone()));
    Controller::new(
        api::<ChatCluster>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<Deployment>(&client, &namespace), owned())
    .owns(api::<StatefulSet>(&client, &namespace), owned())
    .owns(api::<Job>(&client, &namespace), owned())
    .owns(api::<Service>(&client, &namespace), owned())
    .owns(api::<ConfigMap>(&client, &namespace), owned())
    .owns(api::<Secret>(&client, &namespace), owned())
    .owns(api::<ServiceAccount>(&client, &namespace), owned())
    .owns(api::<PodDisruptionBudget>(&client, &namespace), owned())
    .owns(api::<Ingress>(&client, &namespace), owned())
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(object = %obj.name, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeApiServer;
    use serde_json::Value;

    const NS: &str = "chat";
    const CLUSTER: &str = "/apis/grpcchat.dev/v1alpha1/namespaces/chat/chatclusters/demo";

    fn path(group: &str, kind: &str, name: &str) -> String {
        let prefix = if group == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}")
        };
        format!("{prefix}/namespaces/{NS}/{kind}/{name}")
    }

    fn deployment_path(name: &str) -> String {
        path("apps/v1", "deployments", name)
    }

    /// A fake server holding a default `demo` cluster, and a context on it.
    fn setup(spec: Value) -> (FakeApiServer, Arc<Context>) {
        let (client, server) = FakeApiServer::start();
        server.put(
            CLUSTER,
            json!({
                "apiVersion": "grpcchat.dev/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": "demo", "namespace": NS, "uid": "cluster-uid",
                             "generation": 1, "resourceVersion": "0"},
                "spec": spec,
            }),
        );
        (server, Arc::new(Context::new(client)))
    }

    fn cluster(server: &FakeApiServer) -> Arc<ChatCluster> {
        Arc::new(serde_json::from_value(server.get(CLUSTER).unwrap()).unwrap())
    }

    async fn reconcile_once(server: &FakeApiServer, ctx: &Arc<Context>) -> Result<Action, Error> {
        reconcile(cluster(server), ctx.clone()).await
    }

    fn condition(server: &FakeApiServer, type_: &str) -> (String, String) {
        let c = cluster(server);
        let status = c.status.as_ref().unwrap();
        let c = status::condition(status, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn job_paths(server: &FakeApiServer) -> Vec<String> {
        server
            .paths()
            .into_iter()
            .filter(|p| p.contains("/jobs/"))
            .collect()
    }

    /// Plays the Job controller: every migration Job succeeds.
    fn succeed_jobs(server: &FakeApiServer) {
        for p in job_paths(server) {
            server.edit(&p, |j| j["status"] = json!({"succeeded": 1}));
        }
    }

    /// Plays the Deployment and StatefulSet controllers: every pod becomes ready.
    fn roll_out(server: &FakeApiServer) {
        for p in server.paths() {
            if p.contains("/deployments/") || p.contains("/statefulsets/") {
                server.edit(&p, |o| {
                    let replicas = o["spec"]["replicas"].clone();
                    o["status"] = json!({
                        "observedGeneration": o["metadata"]["generation"],
                        "replicas": replicas, "readyReplicas": replicas,
                        "updatedReplicas": replicas,
                        "currentRevision": "r1", "updateRevision": "r1",
                    });
                });
            }
        }
    }

    async fn steady(server: &FakeApiServer, ctx: &Arc<Context>) {
        reconcile_once(server, ctx).await.unwrap();
        succeed_jobs(server);
        reconcile_once(server, ctx).await.unwrap();
        roll_out(server);
        reconcile_once(server, ctx).await.unwrap();
    }

    #[tokio::test]
    async fn first_pass_creates_infrastructure_and_migrations_but_no_deployments() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        let action = reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(PROGRESS_POLL));

        let log = server.log();
        assert_eq!(
            log[..3],
            [
                format!("GET {}", path("v1", "secrets", "demo-generated")),
                format!("PATCH {}", path("v1", "secrets", "demo-generated")),
                format!("PATCH {}", path("v1", "serviceaccounts", "demo")),
            ]
        );
        let secret: Secret = serde_json::from_value(
            server
                .get(&path("v1", "secrets", "demo-generated"))
                .unwrap(),
        )
        .unwrap();
        let key = &secret.data.unwrap()["jwt-signing-key"];
        assert!(String::from_utf8_lossy(&key.0).contains("PRIVATE KEY"));
        for sts in ["demo-postgres", "demo-nats"] {
            assert!(server.get(&path("apps/v1", "statefulsets", sts)).is_some());
        }
        assert_eq!(job_paths(&server).len(), 4);
        assert!(server.get(&deployment_path("demo-auth")).is_none());
        assert_eq!(
            condition(&server, "Progressing"),
            ("True".into(), "Migrating".into())
        );
        assert_eq!(condition(&server, "Ready").0, "False");
        assert_eq!(condition(&server, "Degraded").0, "False");
        assert_eq!(log.last().unwrap(), &format!("PATCH {CLUSTER}/status"));
    }

    #[tokio::test]
    async fn becomes_ready_after_migrations_and_rollout() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        reconcile_once(&server, &ctx).await.unwrap();
        succeed_jobs(&server);
        reconcile_once(&server, &ctx).await.unwrap();
        for c in Component::ALL {
            assert!(server
                .get(&deployment_path(&format!("demo-{}", c.name())))
                .is_some());
        }
        assert_eq!(
            condition(&server, "Progressing"),
            ("True".into(), "RollingOut".into())
        );

        roll_out(&server);
        let action = reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        assert_eq!(
            condition(&server, "Ready"),
            ("True".into(), "AllComponentsReady".into())
        );
        assert_eq!(condition(&server, "Progressing").0, "False");
        let status = cluster(&server).status.clone().unwrap();
        assert_eq!(status.observed_generation, Some(1));
        let auth = status.components.iter().find(|c| c.name == "auth").unwrap();
        assert_eq!(auth.ready_replicas, 2);
        assert_eq!(
            auth.migrated_image.as_deref(),
            Some("ghcr.io/grpc-chat/auth-service:1.0.0")
        );
    }

    #[tokio::test]
    async fn a_second_pass_changes_nothing() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        steady(&server, &ctx).await;
        let changes = server.changes();
        let before: Vec<_> = server.paths().iter().map(|p| server.get(p)).collect();
        server.clear_log();
        reconcile_once(&server, &ctx).await.unwrap();
        let after: Vec<_> = server.paths().iter().map(|p| server.get(p)).collect();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b, a);
        }
        assert_eq!(server.changes(), changes, "no object changed");
        let log = server.log();
        assert!(
            !log.iter().any(|l| l.contains("/status")),
            "no status write: {log:?}"
        );
        assert!(
            !log.iter().any(|l| l.contains("/jobs/")),
            "migrations not re-run"
        );
        assert!(!log
            .iter()
            .any(|l| l.starts_with("PATCH /api/v1/namespaces/chat/secrets")));
    }

    #[tokio::test]
    async fn drift_is_repaired() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        steady(&server, &ctx).await;
        let chat = deployment_path("demo-chat");
        server.edit(&chat, |d| {
            d["spec"]["replicas"] = json!(7);
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:latest");
        });
        reconcile_once(&server, &ctx).await.unwrap();
        let d = server.get(&chat).unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/grpc-chat/chat-service:1.0.0"
        );
    }

    #[tokio::test]
    async fn a_new_version_migrates_before_it_rolls_out() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        steady(&server, &ctx).await;
        server.edit(CLUSTER, |c| {
            c["spec"]["version"] = json!("1.1.0");
            c["metadata"]["generation"] = json!(2);
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(job_paths(&server).len(), 8, "one new Job per component");
        let image = |s: &FakeApiServer| {
            s.get(&deployment_path("demo-auth")).unwrap()["spec"]["template"]["spec"]["containers"]
                [0]["image"]
                .clone()
        };
        assert_eq!(image(&server), "ghcr.io/grpc-chat/auth-service:1.0.0");
        assert_eq!(
            condition(&server, "Progressing"),
            ("True".into(), "Migrating".into())
        );

        succeed_jobs(&server);
        reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(image(&server), "ghcr.io/grpc-chat/auth-service:1.1.0");
    }

    #[tokio::test]
    async fn failed_migration_is_degraded_and_keeps_the_old_version() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        reconcile_once(&server, &ctx).await.unwrap();
        for p in job_paths(&server) {
            server.edit(&p, |j| {
                j["status"] = json!({"failed": 11, "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
            });
        }
        reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(
            condition(&server, "Degraded"),
            ("True".into(), "MigrationFailed".into())
        );
        assert!(server.get(&deployment_path("demo-auth")).is_none());
    }

    #[tokio::test]
    async fn api_errors_are_reported_and_retried_with_backoff() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        server.fail("/statefulsets/", 403);
        let err = reconcile_once(&server, &ctx).await.unwrap_err();
        assert!(matches!(err, Error::Kube(_)));
        assert_eq!(
            condition(&server, "Degraded"),
            ("True".into(), "ReconcileError".into())
        );
        let c = cluster(&server);
        assert_eq!(
            error_policy(c.clone(), &err, ctx.clone()),
            Action::requeue(backoff(1))
        );
        assert_eq!(
            error_policy(c.clone(), &err, ctx.clone()),
            Action::requeue(backoff(2))
        );
        assert!(backoff(2) > backoff(1));
        assert_eq!(backoff(100), Duration::from_secs(300));

        server.heal();
        reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(condition(&server, "Degraded").0, "False");
        // Success resets the backoff.
        assert_eq!(
            error_policy(c, &err, ctx.clone()),
            Action::requeue(backoff(1))
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_is_reported_and_not_applied() {
        let (server, ctx) = setup(json!({
            "version": "1.0.0",
            "nats": {"managed": {}, "external": {"url": "nats://x:4222"}},
        }));
        let action = reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(
            condition(&server, "Degraded"),
            ("True".into(), "InvalidSpec".into())
        );
        assert_eq!(server.log(), [format!("PATCH {CLUSTER}/status")]);
    }

    #[tokio::test]
    async fn removing_the_ingress_deletes_it() {
        let (server, ctx) =
            setup(json!({"version": "1.0.0", "ingress": {"host": "chat.example.com"}}));
        steady(&server, &ctx).await;
        let ingress = path("networking.k8s.io/v1", "ingresses", "demo");
        assert!(server.get(&ingress).is_some());
        assert_eq!(
            cluster(&server).status.clone().unwrap().endpoint.as_deref(),
            Some("chat.example.com:80")
        );
        server.edit(CLUSTER, |c| {
            c["spec"].as_object_mut().unwrap().remove("ingress");
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert!(server.get(&ingress).is_none());
        assert_eq!(cluster(&server).status.clone().unwrap().endpoint, None);
    }
}
