//! The reconcile loop: turns one `ChatCluster` into its objects and reports its status.
//!
//! Shape (after kube-rs/controller-rs): [`reconcile`] is a function of the object and a
//! [`Context`]; it applies every desired object from [`crate::render`] with server-side
//! apply under one field manager (so a repeated reconcile is a no-op and drift made by
//! others is overwritten), then writes the status computed by [`crate::status`] only
//! when it changed. [`error_policy`] requeues failures with exponential backoff per
//! object, so an API error never becomes a hot loop or a crash.
//!
//! Objects are applied independently: the API server refusing one (an admission policy,
//! an immutable field, a missing permission) is recorded as an [`Issue`] for the status and
//! the pass goes on with the next, so what can be reconciled keeps moving. The only
//! dependency is the migration gate below.
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

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{Future, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount},
        events::v1::Event as K8sEvent,
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
    NamespaceResourceScope,
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    runtime::{
        controller::{self, Action},
        reflector::ObjectRef,
        watcher, Controller,
    },
    Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    crd::{ChatCluster, ChatClusterStatus, InvalidSpec},
    observe, quantity,
    render::{self, Component, Plain},
    secrets,
    status::{self, Issue, IssueKind, Migration, Note, Observed},
};

/// Field manager of every write, and the prefix of the operator's labels.
pub const MANAGER: &str = "chat-operator";

/// Field manager that keeps an autoscaled Deployment's `replicas` while the operator
/// lets go of it (see [`hand_over_replicas`]).
pub const HANDOVER_MANAGER: &str = "chat-operator-handover";

/// Label selector matching what the operator creates (what it watches besides clusters).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=chat-operator";

/// Why a reconcile failed; `error_policy` requeues it with backoff whatever the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A desired object could not be built.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// A key or password for the generated Secret could not be made.
    #[error("generating a secret: {0}")]
    Generate(String),
    /// ChatCluster is namespaced, so this means a malformed object.
    #[error("the ChatCluster has no namespace")]
    NoNamespace,
    /// The API server rejected this many objects; the status lists them.
    #[error("the API server refused {0} object(s); see the status")]
    Refused(usize),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Render(_) => "render",
            Error::Generate(_) => "generate",
            Error::NoNamespace => "no_namespace",
            Error::Refused(_) => "refused",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client every call of the reconcile goes through.
    pub client: Client,
    /// This replica's identity: the Events' reporting instance.
    instance: String,
    /// Consecutive failures per `namespace/name`, for the backoff of [`error_policy`].
    failures: Mutex<HashMap<String, u32>>,
    /// The last status written per `namespace/name`: what the Events are computed
    /// against, since the watch cache may not show our own write yet when the next
    /// reconcile starts (which would tell the same change twice).
    reported: Mutex<HashMap<String, ChatClusterStatus>>,
}

impl Context {
    /// `instance`: this replica's identity, as the Events' reporting instance.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            client,
            instance: instance.unwrap_or_else(|| MANAGER.into()),
            failures: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// The Events `next` is worth after what was last reported for `cluster`, and
    /// remembers `next`.
    fn notes(&self, cluster: &ChatCluster, next: &ChatClusterStatus) -> Vec<Note> {
        let Ok(mut reported) = self.reported.lock() else {
            return status::notes(cluster.status.as_ref(), next);
        };
        let previous = reported
            .get(&key(cluster))
            .cloned()
            .or_else(|| cluster.status.clone());
        reported.insert(key(cluster), next.clone());
        status::notes(previous.as_ref(), next)
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

/// Publishes `notes` as Events (`events.k8s.io/v1`) about `cluster`. They come from
/// changes only (see [`status::notes`]), so each is created as it is; kube's `Recorder`
/// is not used because it folds Events of the same reason into a series that keeps the
/// first message. An Event that cannot be written is logged, never a reason to fail.
async fn publish(ctx: &Context, cluster: &ChatCluster, notes: &[Note]) {
    let Some(ns) = cluster.namespace() else {
        return;
    };
    let api: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &ns);
    for (i, note) in notes.iter().enumerate() {
        let now = Timestamp::now();
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}{i}",
                    cluster.name_any(),
                    now.as_nanosecond()
                )),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(note.reason.clone()),
            action: Some(note.action.clone()),
            note: Some(status::truncate(&note.message, 1024)),
            regarding: Some(cluster.object_ref(&())),
            reporting_controller: Some(MANAGER.into()),
            reporting_instance: Some(ctx.instance.clone()),
            ..K8sEvent::default()
        };
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason = %note.reason, "could not publish an Event");
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
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(5))
        .with_max_delay(Duration::from_secs(300))
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1).min(16) as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// How often a settled cluster is looked at again, though owned-object watches usually
/// trigger a reconcile sooner.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is still rolling out is polled.
pub const PROGRESS_POLL: Duration = Duration::from_secs(15);

/// Brings the cluster's objects to what its spec asks: builds the desired objects, applies
/// them with server-side apply (so a second pass changes nothing), Deployments only once
/// their migration succeeded, then writes the status and Events. Returns when to look
/// again: [`PROGRESS_POLL`] while something is rolling out, [`RESYNC`] once settled.
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    tracing::info!(cluster = %key(&cluster), "reconciling");
    metrics::counter!("chat_operator_reconciliations_total").increment(1);

    let result = match cluster.spec.validate() {
        Err(invalid) => report_invalid(&ctx, &ns, &cluster, &invalid).await,
        Ok(()) => match apply_all(&ctx.client, &ns, &cluster).await {
            Ok(pass) => report_pass(&ctx, &ns, &cluster, &pass).await,
            Err(e) => report_failure(&ctx, &ns, &cluster, e).await,
        },
    };
    metrics::histogram!("chat_operator_reconcile_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&key(&cluster));
    }
    result
}

/// Reports a spec that cannot be reconciled, and waits for the next edit of it.
async fn report_invalid(
    ctx: &Context,
    ns: &str,
    cluster: &ChatCluster,
    invalid: &InvalidSpec,
) -> Result<Action, Error> {
    let status = status::compute(
        cluster.status.as_ref(),
        cluster.meta().generation,
        &[],
        &[Issue::new(IssueKind::InvalidSpec, invalid.0.clone())],
        None,
        &now(),
    );
    write_status(&ctx.client, ns, cluster, &status).await?;
    publish(ctx, cluster, &ctx.notes(cluster, &status)).await;
    tracing::warn!(cluster = %key(cluster), %invalid, "invalid spec");
    // Nothing to retry: the next edit of the spec triggers a reconcile.
    Ok(Action::await_change())
}

/// Writes the status and Events of a completed pass, and says when to look again; a pass
/// in which the API server refused objects is an error, retried with backoff.
async fn report_pass(
    ctx: &Context,
    ns: &str,
    cluster: &ChatCluster,
    pass: &Pass,
) -> Result<Action, Error> {
    let endpoint = render::endpoint(&cluster.spec)
        .or_else(|| pass.endpoints.get(Component::Chat.name()).cloned());
    let mut status = status::compute(
        cluster.status.as_ref(),
        cluster.meta().generation,
        &pass.observed,
        &pass.issues,
        endpoint,
        &now(),
    );
    status.endpoints = pass.endpoints.clone();
    write_status(&ctx.client, ns, cluster, &status).await?;
    let mut notes = pass.notes.clone();
    notes.extend(ctx.notes(cluster, &status));
    publish(ctx, cluster, &notes).await;
    let refused = pass
        .issues
        .iter()
        .filter(|i| i.kind == IssueKind::ApplyFailed)
        .count();
    let progressing = status::condition(&status, "Progressing").is_some_and(|c| c.status == "True")
        || status::condition(&status, "Ready").is_some_and(|c| c.status != "True");
    if refused > 0 {
        // Retried with backoff by the error policy.
        Err(Error::Refused(refused))
    } else {
        Ok(Action::requeue(if progressing {
            PROGRESS_POLL
        } else {
            RESYNC
        }))
    }
}

/// Reports a pass that stopped before it could apply anything where the user looks, and
/// returns the error for the error policy to retry.
async fn report_failure(
    ctx: &Context,
    ns: &str,
    cluster: &ChatCluster,
    e: Error,
) -> Result<Action, Error> {
    let message = match &e {
        Error::Kube(k) => status::summarize(k),
        other => status::truncate(&other.to_string(), status::MAX_ERROR),
    };
    // The load balancers' addresses as last seen: nothing was read this time.
    let previous = cluster
        .status
        .as_ref()
        .filter(|_| cluster.spec.load_balancer.is_some());
    let mut status = status::compute(
        cluster.status.as_ref(),
        cluster.meta().generation,
        &[],
        &[Issue::new(IssueKind::ReconcileError, message)],
        render::endpoint(&cluster.spec).or_else(|| previous.and_then(|p| p.endpoint.clone())),
        &now(),
    );
    status.endpoints = previous.map(|p| p.endpoints.clone()).unwrap_or_default();
    if let Err(status_err) = write_status(&ctx.client, ns, cluster, &status).await {
        tracing::warn!(error = %status_err, "could not report the failure in the status");
    }
    publish(ctx, cluster, &ctx.notes(cluster, &status)).await;
    Err(e)
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

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error>
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
    api.patch(&name, &params, &Patch::Apply(obj)).await
}

/// Server-side apply of an untyped object.
async fn apply_plain(client: &Client, ns: &str, plain: &Plain) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &plain.resource);
    let params = PatchParams::apply(MANAGER).force();
    api.patch(
        &plain.object.name_any(),
        &params,
        &Patch::Apply(&plain.object),
    )
    .await?;
    Ok(())
}

/// Whether `manager` owns `spec.replicas` of `d` through server-side apply.
fn applies_replicas(d: &Deployment, manager: &str) -> bool {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .any(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
}

/// Before the operator first applies an autoscaled Deployment without `replicas`: a field
/// that its only applier stops applying is removed, and the Deployment would fall back to
/// one pod until the HPA scales it up again. So the current count is first applied by a
/// second manager, which keeps owning it (the Kubernetes documentation's "transferring
/// ownership" for HPAs); the HPA's later updates take it over.
async fn hand_over_replicas(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    let Some(current) = get_opt::<Deployment>(client, ns, name).await? else {
        return Ok(());
    };
    if !applies_replicas(&current, MANAGER) {
        return Ok(());
    }
    let Some(replicas) = current.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Deletes the cluster's objects of kind `K` that are no longer rendered (`wanted`): the
/// HorizontalPodAutoscalers of components no longer autoscaled, the NetworkPolicies once
/// `spec.networkPolicy` is removed.
async fn delete_stale<K>(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    wanted: &[String],
    pass: &mut Pass,
) where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let kind = K::kind(&());
    let selector = format!(
        "app.kubernetes.io/instance={},{MANAGED_SELECTOR}",
        cluster.name_any()
    );
    let existing = match api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(%error, %kind, "could not list the stale objects");
            return;
        }
    };
    for object in existing {
        let name = object.name_any();
        if wanted.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => pass.refused(&format!("{kind} {name}"), &e),
        }
    }
}

/// Deletes the services' PodMonitor once `spec.monitoring.podMonitor` is off. A 404 (no
/// such PodMonitor, or no Prometheus Operator CRD in the cluster at all) is the usual
/// answer and means there is nothing to do.
async fn delete_pod_monitor(client: &Client, ns: &str, cluster: &ChatCluster, pass: &mut Pass) {
    let resource = render::pod_monitor_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let name = render::pod_monitor_name(cluster);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => pass.refused(&format!("PodMonitor {name}"), &e),
    }
}

/// Deletes the cluster's entry-point objects of kind `resource` (labelled
/// [`render::ENTRY_POINT`]) that are not `wanted`. A 404 on the list (the kind's CRD is not
/// installed, as the Gateway API's often is not) means there is nothing to delete.
async fn delete_unwanted_entry_points(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    resource: &kube::core::ApiResource,
    wanted: &[String],
    pass: &mut Pass,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let instance = cluster.name_any();
    let selector = format!(
        "app.kubernetes.io/instance={instance},{MANAGED_SELECTOR},\
         app.kubernetes.io/component={}",
        render::ENTRY_POINT
    );
    let existing = match api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return,
        Err(error) => {
            tracing::warn!(%error, kind = %resource.kind, "could not list the entry point's objects");
            return;
        }
    };
    for object in existing {
        let name = object.name_any();
        let labels = object.labels();
        // The selector again, for an API server (or a fake of one) that ignored it.
        let mine = labels.get("app.kubernetes.io/instance") == Some(&instance)
            && labels
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some(render::ENTRY_POINT)
            && labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some("chat-operator");
        if !mine || wanted.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(kind = %resource.kind, %name, "deleted an entry point object no longer wanted")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => pass.refused(&format!("{} {name}", resource.kind), &e),
        }
    }
}

/// Where the `LoadBalancer` Services of `spec.loadBalancer` are reached, from their
/// status as the API server has it; empty without `spec.loadBalancer` or before the
/// cloud's controller assigned addresses.
async fn load_balancer_endpoints(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
) -> BTreeMap<String, String> {
    if cluster.spec.load_balancer.is_none() {
        return BTreeMap::new();
    }
    let mut services = Vec::new();
    for c in Component::ALL
        .into_iter()
        .filter(|c| c.public_grpc_service().is_some())
    {
        let name = render::load_balancer_name(cluster, c);
        match get_opt::<Service>(client, ns, &name).await {
            Ok(Some(svc)) => services.push((c, svc)),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, service = %name, "could not read a load balancer"),
        }
    }
    render::load_balancer_endpoints(&services)
}

async fn get_opt<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    Api::<K>::namespaced(client.clone(), ns).get_opt(name).await
}

/// The object as the API server has it, for reporting only: `None` when it does not
/// exist or cannot be read.
async fn try_get<K>(client: &Client, ns: &str, name: &str) -> Option<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    get_opt::<K>(client, ns, name).await.ok().flatten()
}

/// What one pass over the desired objects observed of the workloads, every problem it
/// met on the way, and what it did that is worth an Event.
#[derive(Debug, Default)]
pub struct Pass {
    /// The workloads' rollout state, for the status.
    pub observed: Vec<Observed>,
    /// Problems that need a person, for the `Degraded` condition.
    pub issues: Vec<Issue>,
    /// What deserves an Event.
    pub notes: Vec<Note>,
    /// The addresses the `LoadBalancer` Services have been given, per public service.
    pub endpoints: BTreeMap<String, String>,
}

impl Pass {
    /// Records that applying `plain` failed. A 404 on an apply means the API server does
    /// not know the kind: another project's CRD is not installed. Said in those words,
    /// with what to install, rather than as a bare "not found".
    fn apply_failed(&mut self, plain: &Plain, error: &kube::Error) {
        let not_served = matches!(error, kube::Error::Api(e) if e.code == 404);
        if !not_served || plain.resource.group.is_empty() {
            return self.refused(&plain.describe(), error);
        }
        let crds = match plain.resource.group.as_str() {
            "gateway.networking.k8s.io" => {
                "the Gateway API CRDs (standard channel, v1.1 or later) and a Gateway API \
                 implementation, or remove spec.gateway"
            }
            "monitoring.coreos.com" => {
                "the Prometheus Operator's CRDs, or turn spec.monitoring.podMonitor off"
            }
            "postgresql.cnpg.io" => {
                "CloudNativePG (its CRDs and operator), or choose spec.postgres.managed or \
                 external"
            }
            _ => "the CRD that defines it",
        };
        let message = format!(
            "{}: the cluster does not serve {} {}: install {crds}",
            plain.describe(),
            plain.resource.api_version,
            plain.resource.kind,
        );
        tracing::warn!(object = %plain.describe(), "the kind is not served");
        self.issues
            .push(Issue::new(IssueKind::ApplyFailed, message));
    }

    /// Records that the API server refused a request about `object` (`Kind name`).
    fn refused(&mut self, object: &str, error: &kube::Error) {
        tracing::warn!(%object, %error, "the API server refused a request");
        self.issues.push(Issue::new(
            IssueKind::ApplyFailed,
            format!("{object}: {}", status::summarize(error)),
        ));
    }
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
/// Also gives it, or takes away, its owner reference to the cluster, which follows the
/// PostgreSQL volume policy ([`render::generated_secret_owned`]).
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
    let current = api.get_opt(&name).await?;
    let owned_now = current
        .as_ref()
        .is_some_and(|s| !s.owner_references().is_empty());
    let existing: BTreeMap<String, String> = current
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect();
    let filled =
        secrets::fill_missing(cluster, &existing).map_err(|e| Error::Generate(e.to_string()))?;
    let ownership_changes =
        owned_now != render::generated_secret_owned(&cluster.spec) && !existing.is_empty();
    if filled.is_some() || ownership_changes {
        tracing::info!(secret = %name, "writing generated secrets");
        let data = filled.unwrap_or(existing);
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

/// Creates the Secret of each service's PostgreSQL role ([`render::role_secret_name`])
/// with a random password when it is missing; a password that exists (generated or set
/// by a person rotating it) is never changed. Its owner reference follows the same rule
/// as the generated Secret's. API errors are recorded and the pass goes on.
async fn ensure_role_secrets(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    pass: &mut Pass,
) -> Result<(), Error> {
    if !render::per_service_roles(&cluster.spec) {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let owner = render::owner_reference(cluster)?;
    let owned = render::generated_secret_owned(&cluster.spec);
    for c in Component::ALL {
        let name = render::role_secret_name(cluster, c);
        let current = match api.get_opt(&name).await {
            Ok(s) => s,
            Err(e) => {
                pass.refused(&format!("Secret {name}"), &e);
                continue;
            }
        };
        let value = |key: &str| {
            current
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let password = value("password").filter(|p| !p.is_empty());
        let owned_now = current
            .as_ref()
            .is_some_and(|s| !s.owner_references().is_empty());
        let up_to_date = password.is_some()
            && value("username").as_deref() == Some(c.role())
            && owned_now == owned;
        if up_to_date {
            continue;
        }
        let password = password.unwrap_or_else(|| secrets::random_token(32));
        let secret = render::postgres_role_secret(cluster, &owner, c, &password)?;
        if let Err(e) = apply(client, ns, &secret).await {
            pass.refused(&format!("Secret {name}"), &e);
        }
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
        stalled: false,
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
        stalled: false,
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

/// The size a StatefulSet's volume claim template asks for.
fn claim_size(template: &PersistentVolumeClaim) -> Option<String> {
    template
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// Applies a StatefulSet and grows its volumes; returns it as the API server has it.
///
/// `volumeClaimTemplates` are immutable, so an existing StatefulSet keeps the templates it
/// was created with (the apply sends them back unchanged) and a bigger `storage` is applied
/// to the claims themselves, as CloudNativePG and Strimzi do: the API server lets a bound
/// claim grow when its StorageClass allows expansion. A refusal (a class without
/// expansion) is reported, and the rest of the reconcile goes on. Shrinking and another
/// class are refused by the CRD.
async fn apply_stateful_set(
    client: &Client,
    ns: &str,
    desired: &StatefulSet,
    pass: &mut Pass,
) -> Option<StatefulSet> {
    let name = desired.name_any();
    let live = match get_opt::<StatefulSet>(client, ns, &name).await {
        Ok(live) => live,
        Err(e) => {
            pass.refused(&format!("StatefulSet {name}"), &e);
            return None;
        }
    };
    let wanted = desired
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    let mut sts = desired.clone();
    let existing_templates = live
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.volume_claim_templates.clone());
    if let (Some(spec), Some(existing)) = (sts.spec.as_mut(), existing_templates) {
        spec.volume_claim_templates = Some(
            existing
                .into_iter()
                .map(|t| PersistentVolumeClaim {
                    metadata: t.metadata,
                    spec: t.spec,
                    status: None,
                })
                .collect(),
        );
    }
    let seen = match apply::<StatefulSet>(client, ns, &sts).await {
        Ok(applied) => Some(applied),
        Err(e) => {
            pass.refused(&format!("StatefulSet {name}"), &e);
            live
        }
    };
    let replicas = seen
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for template in &wanted {
        let (Some(prefix), Some(size)) = (template.metadata.name.as_deref(), claim_size(template))
        else {
            continue;
        };
        for ordinal in 0..replicas {
            let claim = format!("{prefix}-{name}-{ordinal}");
            expand_claim(&claims, &claim, &size, pass).await;
        }
    }
    seen
}

/// Grows the claim to `size` when it is bound and smaller.
async fn expand_claim(
    claims: &Api<PersistentVolumeClaim>,
    claim: &str,
    size: &str,
    pass: &mut Pass,
) {
    let current = match claims.get_opt(claim).await {
        Ok(Some(c)) => c,
        // Not created yet: the StatefulSet controller makes it at the new size.
        Ok(None) => return,
        Err(e) => {
            pass.refused(&format!("PersistentVolumeClaim {claim}"), &e);
            return;
        }
    };
    let bound = current.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let requested = claim_size(&current).unwrap_or_default();
    let (Some(want), Some(have)) = (quantity::value(size), quantity::value(&requested)) else {
        return;
    };
    // Only a bound claim can grow; an unbound one is looked at again on a later pass.
    if want <= have || !bound {
        return;
    }
    let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
    match claims
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => pass.notes.push(Note::normal(
            "VolumeExpanded",
            "ExpandVolume",
            format!("PersistentVolumeClaim {claim} asks for {size} (was {requested})"),
        )),
        Err(e) => pass.issues.push(Issue::new(
            IssueKind::VolumeNotExpanded,
            format!(
                "PersistentVolumeClaim {claim} cannot grow from {requested} to {size}: {}",
                status::summarize(&e)
            ),
        )),
    }
}

/// The Secrets the cluster's pods read, by name: `Ok(None)` when one does not exist,
/// `Err` when it could not be read (the refusal is recorded in the pass).
type ReadSecrets = BTreeMap<String, Result<Option<Secret>, ()>>;

/// The (Secret, key or `None` for the whole Secret) that required reads lack, with the
/// components that need each.
type MissingSecrets = BTreeMap<(String, Option<String>), Vec<&'static str>>;

/// Per component, a digest of the values of the Secret keys its pods read, for
/// [`render::Inputs`]. A Secret or required key that does not exist is an issue (the pods
/// cannot start) and part of the digest, so creating it rolls the pods. Components whose
/// Secrets could not be read are returned apart, so a transient error never rolls pods.
async fn secret_digests(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    pass: &mut Pass,
) -> (render::Inputs, Vec<Component>) {
    let secrets = read_secrets(client, ns, cluster, pass).await;
    let mut inputs = render::Inputs::default();
    let mut unreadable = Vec::new();
    let mut missing = MissingSecrets::new();
    for c in Component::ALL {
        match component_digest(cluster, c, &secrets, &mut missing) {
            Some(digest) => {
                inputs.secret_digests.insert(c, digest);
            }
            None => unreadable.push(c),
        }
    }
    if cluster.spec.managed_nats().is_some() {
        inputs.nats_digest = nats_digest(cluster, &secrets);
    }
    if render::per_service_roles(&cluster.spec) {
        inputs.roles_digest = roles_digest(cluster, &secrets);
    }
    for ((name, key), readers) in missing {
        let what = match key {
            Some(key) => format!("Secret {name} has no key {key}"),
            None => format!("Secret {name} does not exist"),
        };
        pass.issues.push(Issue::new(
            IssueKind::SecretMissing,
            format!("{what} ({} cannot start)", readers.join(", ")),
        ));
    }
    (inputs, unreadable)
}

/// Reads every Secret the cluster's pods read ([`render::secret_names`]), once each.
async fn read_secrets(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    pass: &mut Pass,
) -> ReadSecrets {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets = ReadSecrets::new();
    for name in render::secret_names(cluster) {
        let read = match api.get_opt(&name).await {
            Ok(s) => Ok(s),
            Err(e) => {
                pass.refused(&format!("Secret {name}"), &e);
                Err(())
            }
        };
        secrets.insert(name, read);
    }
    secrets
}

/// The data of the Secret `name`, when it was read and exists.
fn secret_data<'a>(
    secrets: &'a ReadSecrets,
    name: &str,
) -> Option<&'a BTreeMap<String, k8s_openapi::ByteString>> {
    secrets
        .get(name)
        .and_then(|s| s.as_ref().ok())
        .and_then(Option::as_ref)
        .and_then(|s| s.data.as_ref())
}

/// The digest of the Secret values `c`'s pods read, missing ones included (and recorded
/// in `missing` when required); `None` when one of its Secrets could not be read.
fn component_digest(
    cluster: &ChatCluster,
    c: Component,
    secrets: &ReadSecrets,
    missing: &mut MissingSecrets,
) -> Option<String> {
    let mut digest = Sha256::new();
    for (name, key, optional) in render::secrets_read(cluster, c) {
        let secret = match secrets.get(&name) {
            Some(Ok(secret)) => secret.as_ref(),
            _ => return None,
        };
        let value = secret
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(&key));
        digest.update(format!("{name}/{key}=").as_bytes());
        match value {
            Some(v) => digest.update(Sha256::digest(&v.0)),
            None => {
                digest.update(b"<missing>");
                if !optional {
                    let what = secret.is_some().then(|| key.clone());
                    let readers = missing.entry((name.clone(), what)).or_default();
                    if !readers.contains(&c.name()) {
                        readers.push(c.name());
                    }
                }
            }
        }
        digest.update(b"\n");
    }
    Some(hex::encode(&digest.finalize()[..4]))
}

/// The digest of the managed NATS users' passwords; `None` when the generated Secret
/// could not be read or does not exist.
fn nats_digest(cluster: &ChatCluster, secrets: &ReadSecrets) -> Option<String> {
    let data = secret_data(secrets, &render::name(cluster, "generated"))?;
    let mut digest = Sha256::new();
    for key in [
        render::keys::NATS_CHAT_PASSWORD,
        render::keys::NATS_NOTIFICATION_PASSWORD,
    ] {
        if let Some(v) = data.get(key) {
            digest.update(Sha256::digest(&v.0));
        }
    }
    Some(hex::encode(&digest.finalize()[..4]))
}

/// The digest of the services' PostgreSQL role passwords; `None` until every role's
/// Secret has one.
fn roles_digest(cluster: &ChatCluster, secrets: &ReadSecrets) -> Option<String> {
    let mut digest = Sha256::new();
    let mut complete = true;
    for c in Component::ALL {
        let password = secret_data(secrets, &render::role_secret_name(cluster, c))
            .and_then(|d| d.get("password"));
        match password {
            Some(p) => digest.update(Sha256::digest(&p.0)),
            None => complete = false,
        }
    }
    complete.then(|| hex::encode(&digest.finalize()[..4]))
}

/// The cluster's migration Jobs (empty, with the refusal recorded, when they cannot be
/// listed).
async fn migration_jobs(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    pass: &mut Pass,
) -> Vec<Job> {
    let selector = format!(
        "app.kubernetes.io/instance={},{MANAGED_SELECTOR}",
        cluster.name_any()
    );
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => {
            pass.refused(&format!("the Jobs of {}", cluster.name_any()), &e);
            Vec::new()
        }
    }
}

/// Brings one component's migration for `image` along: done when any Job of the
/// component succeeded for that image; otherwise the Job for the current spec (`job`) is
/// created if missing and its state returned. A Job is never patched (its template is
/// immutable): a changed spec has a new Job name, and the component's older Jobs that did
/// not succeed are deleted, so a fixed spec retries at once instead of wedging.
async fn migrate(
    client: &Client,
    ns: &str,
    job: &Job,
    image: &str,
    existing: &[Job],
    pass: &mut Pass,
) -> Migration {
    let component = job
        .labels()
        .get("app.kubernetes.io/component")
        .cloned()
        .unwrap_or_default();
    let mine: Vec<&Job> = existing
        .iter()
        .filter(|j| j.labels().get("app.kubernetes.io/component") == Some(&component))
        .collect();
    let done_for_image = mine.iter().any(|j| {
        j.annotations()
            .get(render::IMAGE_ANNOTATION)
            .map(String::as_str)
            == Some(image)
            && job_state(j) == Migration::Done
    });
    if done_for_image {
        return Migration::Done;
    }
    let name = job.name_any();
    let state = match mine.iter().find(|j| j.name_any() == name) {
        Some(current) => job_state(current),
        None => match apply::<Job>(client, ns, job).await {
            Ok(created) => {
                let what = if component == render::POSTGRES_ROLES {
                    format!("Job {name} sets up the services' PostgreSQL roles")
                } else {
                    format!("Job {name} runs the database migrations for {image}")
                };
                pass.notes
                    .push(Note::normal("MigrationStarted", "Migrate", what));
                job_state(&created)
            }
            Err(e) => {
                pass.refused(&format!("Job {name}"), &e);
                return Migration::Running;
            }
        },
    };
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    for old in mine.iter().filter(|j| {
        j.name_any() != name
            && j.metadata.deletion_timestamp.is_none()
            && job_state(j) != Migration::Done
    }) {
        let old_name = old.name_any();
        match api.delete(&old_name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(job = %old_name, replaced_by = %name, "deleted a superseded migration Job")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => pass.refused(&format!("Job {old_name}"), &e),
        }
    }
    state
}

/// Applies every desired object, each on its own, and returns what was observed of the
/// workloads and every problem met. `Err` only for what stops the pass before it can
/// apply anything (the spec cannot be rendered).
///
/// The phases run in this order: the Secrets the operator owns (their digests go on the
/// pod templates), the objects nothing waits for, the StatefulSets, the services behind
/// their migrations, then the objects the spec no longer asks for, and last what the
/// kubelet says about the pods.
pub async fn apply_all(client: &Client, ns: &str, cluster: &ChatCluster) -> Result<Pass, Error> {
    // Renders once without the cluster's inputs first: a spec that cannot be rendered
    // stops here, before anything is written.
    render::desired(cluster)?;
    let mut pass = Pass::default();
    ensure_secrets(client, ns, cluster, &mut pass).await?;
    let (inputs, unreadable) = secret_digests(client, ns, cluster, &mut pass).await;
    let desired = render::desired_with(cluster, &inputs)?;
    let independent = desired.independent()?;
    let not_served = apply_independent(client, ns, &independent, &mut pass).await;
    pass.endpoints = load_balancer_endpoints(client, ns, cluster).await;
    observe_grpc_routes(client, ns, &desired, &not_served, &mut pass).await;
    apply_stateful_sets(client, ns, cluster, &desired, &inputs, &mut pass).await;
    let running_jobs =
        roll_out_services(client, ns, cluster, &desired, &unreadable, &mut pass).await;
    delete_unwanted(client, ns, cluster, &desired, &mut pass).await;
    observe_pods(client, ns, cluster, &running_jobs, &mut pass).await;
    Ok(pass)
}

/// The generated Secret and the PostgreSQL roles' Secrets. The generated Secret being
/// refused is recorded and the pass goes on; only an error that is not the API server's
/// (a key that cannot be generated) stops it.
async fn ensure_secrets(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    pass: &mut Pass,
) -> Result<(), Error> {
    let generated = render::name(cluster, "generated");
    match ensure_generated_secret(client, ns, cluster).await {
        Ok(()) => {}
        Err(Error::Kube(e)) => pass.refused(&format!("Secret {generated}"), &e),
        Err(e) => return Err(e),
    }
    ensure_role_secrets(client, ns, cluster, pass).await
}

/// Applies the objects nothing waits for, and returns the kinds the API server answered
/// 404 for: their other objects are not tried (one message per missing CRD).
async fn apply_independent<'a>(
    client: &Client,
    ns: &str,
    independent: &'a [Plain],
    pass: &mut Pass,
) -> Vec<&'a kube::core::ApiResource> {
    let mut not_served: Vec<&kube::core::ApiResource> = Vec::new();
    for plain in independent {
        if not_served.contains(&&plain.resource) {
            continue;
        }
        if let Err(e) = apply_plain(client, ns, plain).await {
            if matches!(&e, kube::Error::Api(ae) if ae.code == 404) {
                not_served.push(&plain.resource);
            }
            pass.apply_failed(plain, &e);
        }
    }
    not_served
}

/// Reads back the GRPCRoutes (when their kind is served) for what their Gateway says of
/// them: a route it did not accept, or whose backend it cannot reach, is an issue.
async fn observe_grpc_routes(
    client: &Client,
    ns: &str,
    desired: &render::Desired,
    not_served: &[&kube::core::ApiResource],
    pass: &mut Pass,
) {
    if desired.grpc_routes.is_empty() || not_served.contains(&&desired.grpc_routes[0].resource) {
        return;
    }
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &render::grpc_route_resource());
    for route in &desired.grpc_routes {
        match routes.get_opt(&route.object.name_any()).await {
            Ok(Some(seen)) => pass.issues.extend(
                serde_json::to_value(&seen)
                    .ok()
                    .and_then(|v| observe::route_issue(&v)),
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "could not read a GRPCRoute"),
        }
    }
}

/// Applies the managed PostgreSQL's and NATS's StatefulSets and records their rollout.
async fn apply_stateful_sets(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    desired: &render::Desired,
    inputs: &render::Inputs,
    pass: &mut Pass,
) {
    // Without the NATS passwords' digest (the generated Secret could not be read), the
    // NATS StatefulSet is left as it is rather than rolled on a guess.
    let nats_unknown = cluster.spec.managed_nats().is_some() && inputs.nats_digest.is_none();
    for sts in &desired.stateful_sets {
        let component = sts
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_default();
        let seen = if nats_unknown && component == "nats" {
            try_get::<StatefulSet>(client, ns, &sts.name_any()).await
        } else {
            apply_stateful_set(client, ns, sts, pass).await
        };
        pass.observed.push(match seen {
            Some(s) => stateful_set_observed(&component, &s),
            None => stateful_set_observed(&component, sts),
        });
    }
}

/// What one pass knows of the migrations while it rolls the services out.
struct Migrations<'a> {
    /// The status before this pass: which image each component last migrated to.
    previous: ChatClusterStatus,
    /// The cluster's Jobs, listed once, when some component still has to migrate.
    jobs: Option<Vec<Job>>,
    /// Whether the PostgreSQL roles Job is done (or there is none): until then no
    /// Deployment changes.
    roles_ready: bool,
    /// The Jobs still under way: their pods' problems are reported (those of older Jobs
    /// are history).
    running_jobs: Vec<String>,
    /// The cluster being reconciled.
    cluster: &'a ChatCluster,
}

/// Runs each service's migration and applies its Deployment once the migration is done
/// (and the PostgreSQL roles exist); returns the Jobs still running.
async fn roll_out_services(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    desired: &render::Desired,
    unreadable: &[Component],
    pass: &mut Pass,
) -> Vec<String> {
    let mut m = Migrations {
        previous: cluster.status.clone().unwrap_or_default(),
        jobs: None,
        roles_ready: true,
        running_jobs: Vec::new(),
        cluster,
    };
    if let Some(job) = &desired.postgres_roles {
        m.roles_ready = postgres_roles_done(client, ns, &mut m, job, pass).await;
    }
    for ((c, job), (_, deployment)) in desired.migrations.iter().zip(&desired.deployments) {
        let o = if unreadable.contains(c) {
            leave_component(client, ns, &m, *c, deployment).await
        } else {
            roll_out_component(client, ns, &mut m, *c, job, deployment, pass).await
        };
        pass.observed.push(o);
    }
    m.running_jobs
}

/// The single-pod PostgreSQL's roles come first: until its Job has succeeded for the
/// current spec and passwords, no Deployment changes (their DATABASE_URL names a role
/// that may not exist yet, or a password not yet set). The migrations run beside it:
/// they log in as the roles, so they fail and are retried until the roles exist.
async fn postgres_roles_done(
    client: &Client,
    ns: &str,
    m: &mut Migrations<'_>,
    job: &Job,
    pass: &mut Pass,
) -> bool {
    let existing = migration_jobs(client, ns, m.cluster, pass).await;
    let name = job.name_any();
    let state = migrate(client, ns, job, &name, &existing, pass).await;
    m.jobs = Some(existing);
    match state {
        Migration::Done => true,
        Migration::Running => {
            m.running_jobs.push(name);
            false
        }
        Migration::Failed(why) => {
            pass.issues.push(Issue::new(
                IssueKind::MigrationFailed,
                format!("Job {name} (the services' PostgreSQL roles) failed: {why}"),
            ));
            false
        }
    }
}

impl Migrations<'_> {
    /// Whether `c`'s migrations for `image` are known to have completed.
    fn already_migrated(&self, c: Component, image: &str) -> bool {
        self.previous
            .components
            .iter()
            .any(|s| s.name == c.name() && s.migrated_image.as_deref() == Some(image))
    }

    /// The image `c` last migrated to, as the previous status says.
    fn migrated_image(&self, c: Component) -> Option<String> {
        self.previous
            .components
            .iter()
            .find(|s| s.name == c.name())
            .and_then(|s| s.migrated_image.clone())
    }
}

/// A component whose Secrets could not be read: its Job and Deployment are left as they
/// are rather than its pods rolled on a guess; reports what runs.
async fn leave_component(
    client: &Client,
    ns: &str,
    m: &Migrations<'_>,
    c: Component,
    deployment: &Deployment,
) -> Observed {
    let image = c.image(&m.cluster.spec);
    let current = try_get::<Deployment>(client, ns, &deployment.name_any()).await;
    let mut o = deployment_observed(c, &image, current.as_ref());
    o.migrated_image = m.migrated_image(c);
    if !m.already_migrated(c, &image) {
        o.migration = Migration::Running;
    }
    o
}

/// Brings `c`'s migration for its image along, then applies its Deployment when the
/// migration (and the PostgreSQL roles) are done, or keeps the running version.
async fn roll_out_component(
    client: &Client,
    ns: &str,
    m: &mut Migrations<'_>,
    c: Component,
    job: &Job,
    deployment: &Deployment,
    pass: &mut Pass,
) -> Observed {
    let image = c.image(&m.cluster.spec);
    let migration = if m.already_migrated(c, &image) {
        Migration::Done
    } else {
        if m.jobs.is_none() {
            m.jobs = Some(migration_jobs(client, ns, m.cluster, pass).await);
        }
        let existing = m.jobs.as_deref().unwrap_or_default();
        migrate(client, ns, job, &image, existing, pass).await
    };
    let migration = match migration {
        Migration::Done if !m.roles_ready => Migration::Running,
        other => other,
    };
    if migration == Migration::Done {
        return apply_deployment(client, ns, m.cluster, c, &image, deployment, pass).await;
    }
    // Keep the running version; report it as it is.
    let deployment_name = deployment.name_any();
    let current = try_get::<Deployment>(client, ns, &deployment_name).await;
    if migration == Migration::Running {
        m.running_jobs.push(job.name_any());
    }
    let mut o = deployment_observed(c, &image, current.as_ref());
    o.migrated_image = m.migrated_image(c);
    o.migration = migration;
    if current.is_none() {
        o.replicas = c.replicas(&m.cluster.spec);
    }
    o
}

/// Applies a migrated component's Deployment (handing `replicas` over to the HPA first
/// when autoscaled) and observes its rollout.
async fn apply_deployment(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    c: Component,
    image: &str,
    deployment: &Deployment,
    pass: &mut Pass,
) -> Observed {
    let deployment_name = deployment.name_any();
    if c.autoscaling(&cluster.spec).is_some() {
        if let Err(e) = hand_over_replicas(client, ns, &deployment_name).await {
            pass.refused(&format!("Deployment {deployment_name}"), &e);
        }
    }
    let seen = match apply::<Deployment>(client, ns, deployment).await {
        Ok(applied) => Some(applied),
        Err(e) => {
            pass.refused(&format!("Deployment {deployment_name}"), &e);
            try_get::<Deployment>(client, ns, &deployment_name).await
        }
    };
    let mut o = deployment_observed(c, image, seen.as_ref());
    if seen.is_none() {
        o.replicas = c.replicas(&cluster.spec);
    }
    if let Some(issue) = seen.as_ref().and_then(observe::deployment_issue) {
        o.stalled = true;
        pass.issues.push(issue);
    }
    o
}

/// Deletes what the spec no longer asks for: HorizontalPodAutoscalers, NetworkPolicies,
/// the PodMonitor, and the entry point's objects when another entry point (or none) was
/// chosen.
async fn delete_unwanted(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    desired: &render::Desired,
    pass: &mut Pass,
) {
    let hpas: Vec<String> = desired.hpas.iter().map(|h| h.name_any()).collect();
    delete_stale::<HorizontalPodAutoscaler>(client, ns, cluster, &hpas, pass).await;
    let policies: Vec<String> = desired
        .network_policies
        .iter()
        .map(|p| p.name_any())
        .collect();
    delete_stale::<NetworkPolicy>(client, ns, cluster, &policies, pass).await;

    if desired.pod_monitor.is_none() {
        delete_pod_monitor(client, ns, cluster, pass).await;
    }
    delete_unwanted_entry_point(client, ns, cluster, desired, pass).await;
}

/// The entry point's objects that the spec no longer asks for: another entry point was
/// chosen, or none.
async fn delete_unwanted_entry_point(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    desired: &render::Desired,
    pass: &mut Pass,
) {
    let names = |objects: &[Plain]| {
        objects
            .iter()
            .map(|p| p.object.name_any())
            .collect::<Vec<_>>()
    };
    let load_balancers: Vec<String> = desired
        .load_balancers
        .iter()
        .map(|s| s.name_any())
        .collect();
    let gateway: Vec<String> = desired
        .gateway
        .iter()
        .map(|g| g.object.name_any())
        .collect();
    let ingress: Vec<String> = desired.ingress.iter().map(|i| i.name_any()).collect();
    for (resource, wanted) in [
        (
            kube::core::ApiResource::erase::<Service>(&()),
            load_balancers,
        ),
        (kube::core::ApiResource::erase::<Ingress>(&()), ingress),
        (render::gateway_resource(), gateway),
        (render::grpc_route_resource(), names(&desired.grpc_routes)),
    ] {
        delete_unwanted_entry_points(client, ns, cluster, &resource, &wanted, pass).await;
    }
    // The CloudNativePG Cluster is never deleted when the spec moves away from it: its
    // volumes hold the data. It goes with the ChatCluster (owner reference).

    let previous_endpoint = cluster.status.as_ref().and_then(|s| s.endpoint.as_ref());
    if desired.ingress.is_none() && previous_endpoint.is_some() {
        // The ingress was removed from the spec (by name: an Ingress applied by an older
        // operator is labelled `ingress`, not `entry-point`).
        let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
        match api
            .delete(&cluster.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => pass.refused(&format!("Ingress {}", cluster.name_any()), &e),
        }
    }
}

/// What the kubelet says about the pods: crash loops, images that cannot be pulled.
/// `running_jobs`: the migration Jobs still under way (see [`observe::pod_issues`]).
async fn observe_pods(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    running_jobs: &[String],
    pass: &mut Pass,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/instance={},{MANAGED_SELECTOR}",
        cluster.name_any()
    );
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => pass
            .issues
            .extend(observe::pod_issues(&list.items, running_jobs)),
        Err(error) => tracing::warn!(%error, "could not list the pods"),
    }
}

/// The objects of kind `K` in `ns`, or in every namespace.
fn scoped_api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The cluster a pod belongs to. A pod's status changing (crash loop, image pull) is a
/// reason to look again; the pods carry the cluster's labels, not an owner reference to it.
fn pod_owner(pod: PartialObjectMeta<Pod>) -> Option<ObjectRef<ChatCluster>> {
    let cluster = pod.labels().get("app.kubernetes.io/instance").cloned();
    let ns = pod.namespace();
    cluster.map(|name| {
        let r = ObjectRef::<ChatCluster>::new(&name);
        match ns {
            Some(ns) => r.within(&ns),
            None => r,
        }
    })
}

/// Runs the controller until `shutdown` resolves. `namespace`: watch only that one;
/// `identity`: this replica's name, on the Events it publishes.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    identity: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = || watcher::Config::default().labels(MANAGED_SELECTOR);
    let ctx = Arc::new(Context::new(client.clone(), identity));
    let controller = Controller::new(
        scoped_api::<ChatCluster>(&client, &namespace),
        watcher::Config::default(),
    );
    // A Secret the pods read (the generated one, or a user's: SMTP, signing key,
    // database URL) changing must roll them: every Secret is watched, metadata only,
    // and mapped to the clusters that read it.
    let clusters = controller.store();
    let readers = move |secret: PartialObjectMeta<Secret>| {
        let name = secret.name_any();
        let ns = secret.namespace();
        clusters
            .state()
            .into_iter()
            .filter(|c| c.namespace() == ns && render::secret_names(c).contains(&name))
            .map(|c| ObjectRef::from_obj(&*c))
            .collect::<Vec<_>>()
    };
    controller
        // Many objects change at once during a rollout: one reconcile for a burst.
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .owns(scoped_api::<Deployment>(&client, &namespace), owned())
        .owns(scoped_api::<StatefulSet>(&client, &namespace), owned())
        .owns(scoped_api::<Job>(&client, &namespace), owned())
        .owns(scoped_api::<Service>(&client, &namespace), owned())
        .owns(scoped_api::<ConfigMap>(&client, &namespace), owned())
        .watches(
            scoped_api::<PartialObjectMeta<Secret>>(&client, &namespace),
            watcher::Config::default(),
            readers,
        )
        .owns(scoped_api::<ServiceAccount>(&client, &namespace), owned())
        .owns(
            scoped_api::<PodDisruptionBudget>(&client, &namespace),
            owned(),
        )
        .owns(scoped_api::<Ingress>(&client, &namespace), owned())
        .owns(
            scoped_api::<HorizontalPodAutoscaler>(&client, &namespace),
            owned(),
        )
        .owns(scoped_api::<NetworkPolicy>(&client, &namespace), owned())
        .watches(
            scoped_api::<PartialObjectMeta<Pod>>(&client, &namespace),
            owned(),
            pod_owner,
        )
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
        (server, Arc::new(Context::new(client, None)))
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

    /// The migration Jobs.
    fn job_paths(server: &FakeApiServer) -> Vec<String> {
        all_job_paths(server)
            .into_iter()
            .filter(|p| p.contains("-migrate-"))
            .collect()
    }

    /// The migration Jobs and the PostgreSQL roles Jobs.
    fn all_job_paths(server: &FakeApiServer) -> Vec<String> {
        server
            .paths()
            .into_iter()
            .filter(|p| p.contains("/jobs/"))
            .collect()
    }

    /// Plays the Job controller: every Job succeeds.
    fn succeed_jobs(server: &FakeApiServer) {
        for p in all_job_paths(server) {
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
        // The generated Secret first, then each service's PostgreSQL role Secret, then
        // they are read back (for the digest of what the pods read), then the objects.
        let mut expected = vec![
            format!("GET {}", path("v1", "secrets", "demo-generated")),
            format!("PATCH {}", path("v1", "secrets", "demo-generated")),
        ];
        for c in Component::ALL {
            let role = path("v1", "secrets", &format!("demo-postgres-{}", c.name()));
            expected.push(format!("GET {role}"));
            expected.push(format!("PATCH {role}"));
        }
        expected.push(format!("GET {}", path("v1", "secrets", "demo-generated")));
        assert_eq!(log[..expected.len()], expected);
        assert!(log.contains(&format!("PATCH {}", path("v1", "serviceaccounts", "demo"))));
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
        // The status is written, then the Events: the roles Job and four migrations
        // started, and Migrating.
        let status_write = log
            .iter()
            .position(|l| l == &format!("PATCH {CLUSTER}/status"))
            .expect("the status is written");
        assert_eq!(
            log[status_write + 1..],
            vec!["POST /apis/events.k8s.io/v1/namespaces/chat/events".to_string(); 6]
        );
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
        assert!(matches!(err, Error::Refused(2)), "{err}");
        assert_eq!(
            condition(&server, "Degraded"),
            ("True".into(), "ApplyFailed".into())
        );
        // The rest of the pass went on: the migrations were started.
        assert_eq!(job_paths(&server).len(), 4);
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
    async fn a_missing_secret_is_degraded_and_creating_it_rolls_the_readers() {
        let (server, ctx) = setup(json!({"version": "1.0.0", "smtp": {"secretName": "mail"}}));
        steady(&server, &ctx).await;
        let c = cluster(&server);
        let degraded = status::condition(c.status.as_ref().unwrap(), "Degraded").unwrap();
        assert_eq!(degraded.reason, "SecretMissing");
        assert_eq!(
            degraded.message,
            "Secret mail does not exist (notification cannot start)"
        );
        let annotation = |s: &FakeApiServer, d: &str| {
            s.get(&deployment_path(d)).unwrap()["spec"]["template"]["metadata"]["annotations"]
                [render::SECRETS_ANNOTATION]
                .clone()
        };
        let (notification, chat) = (
            annotation(&server, "demo-notification"),
            annotation(&server, "demo-chat"),
        );
        server.put(
            &path("v1", "secrets", "mail"),
            json!({"metadata": {"name": "mail", "namespace": NS},
                   "data": {"host": "aG9zdA==", "port": "NTg3", "tls": "bm9uZQ==", "from": "YUBi"}}),
        );
        reconcile_once(&server, &ctx).await.unwrap();
        assert_ne!(annotation(&server, "demo-notification"), notification);
        assert_eq!(annotation(&server, "demo-chat"), chat);
        assert_eq!(condition(&server, "Degraded").0, "False");
    }

    #[tokio::test]
    async fn a_stale_cache_does_not_tell_a_change_twice() {
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        let stale = cluster(&server);
        reconcile(stale.clone(), ctx.clone()).await.unwrap();
        let events =
            |s: &FakeApiServer| s.paths().iter().filter(|p| p.contains("/events/")).count();
        let first = events(&server);
        assert!(first > 0);
        // The next reconcile still sees the object without the status just written.
        reconcile(stale, ctx.clone()).await.unwrap();
        assert_eq!(events(&server), first);
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
        // Nothing applied: the status and a Warning event only.
        assert_eq!(
            server.log(),
            [
                format!("PATCH {CLUSTER}/status"),
                "POST /apis/events.k8s.io/v1/namespaces/chat/events".to_string()
            ]
        );
        let event = server
            .paths()
            .into_iter()
            .find(|p| p.contains("/events/"))
            .and_then(|p| server.get(&p))
            .unwrap();
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidSpec");
    }

    #[tokio::test]
    async fn removing_the_ingress_deletes_it() {
        let (server, ctx) = setup(json!({"version": "1.0.0",
            "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls"}}));
        steady(&server, &ctx).await;
        let ingress = path("networking.k8s.io/v1", "ingresses", "demo");
        assert!(server.get(&ingress).is_some());
        assert_eq!(
            cluster(&server).status.clone().unwrap().endpoint.as_deref(),
            Some("chat.example.com:443")
        );
        server.edit(CLUSTER, |c| {
            c["spec"].as_object_mut().unwrap().remove("ingress");
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert!(server.get(&ingress).is_none());
        assert_eq!(cluster(&server).status.clone().unwrap().endpoint, None);
    }

    #[tokio::test]
    async fn the_pod_monitor_is_applied_and_deleted_once_turned_off() {
        let (server, ctx) = setup(json!({"version": "1.0.0",
                                         "monitoring": {"podMonitor": true}}));
        steady(&server, &ctx).await;
        let monitor = path("monitoring.coreos.com/v1", "podmonitors", "demo-services");
        let applied = server.get(&monitor).expect("PodMonitor applied");
        assert_eq!(applied["kind"], "PodMonitor");
        assert_eq!(applied["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
        server.edit(CLUSTER, |c| {
            c["spec"]["monitoring"]["podMonitor"] = json!(false);
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert!(server.get(&monitor).is_none());
        // Off from the start (the Prometheus Operator need not even be installed): the
        // delete's 404 is no failure.
        let (server, ctx) = setup(json!({"version": "1.0.0"}));
        steady(&server, &ctx).await;
        assert!(server.get(&monitor).is_none());
        assert_ne!(condition(&server, "Degraded").0, "True");
    }

    fn degraded_message(server: &FakeApiServer) -> String {
        let c = cluster(server);
        let status = c.status.as_ref().unwrap();
        status::condition(status, "Degraded")
            .unwrap()
            .message
            .clone()
    }

    #[tokio::test]
    async fn the_gateway_and_its_routes_are_applied_and_pruned_when_another_entry_point_is_chosen()
    {
        let (server, ctx) = setup(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com", "gatewayClassName": "eg",
                        "tlsSecretName": "chat-tls"}}));
        steady(&server, &ctx).await;
        let gw = path("gateway.networking.k8s.io/v1", "gateways", "demo");
        let route = |c: &str| {
            path(
                "gateway.networking.k8s.io/v1",
                "grpcroutes",
                &format!("demo-{c}"),
            )
        };
        assert_eq!(server.get(&gw).expect("Gateway applied")["kind"], "Gateway");
        for c in ["auth", "chat", "saga"] {
            assert!(server.get(&route(c)).is_some(), "{c}");
        }
        assert!(server.get(&route("notification")).is_none());
        let status = cluster(&server).status.clone().unwrap();
        assert_eq!(status.endpoint.as_deref(), Some("chat.example.com:443"));
        assert!(status.endpoints.is_empty());

        // To load balancers: the Gateway and the routes go, the Services come.
        server.edit(CLUSTER, |c| {
            c["spec"].as_object_mut().unwrap().remove("gateway");
            c["spec"]["loadBalancer"] = json!({});
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert!(server.get(&gw).is_none());
        for c in ["auth", "chat", "saga"] {
            assert!(server.get(&route(c)).is_none(), "{c}");
            let lb = server
                .get(&path("v1", "services", &format!("demo-{c}-public")))
                .expect("LoadBalancer Service");
            assert_eq!(lb["spec"]["type"], "LoadBalancer");
        }
        // No address yet: no endpoint. The cloud's controller assigns them.
        assert_eq!(cluster(&server).status.clone().unwrap().endpoint, None);
        for (c, ip) in [
            ("auth", "203.0.113.1"),
            ("chat", "203.0.113.2"),
            ("saga", "203.0.113.3"),
        ] {
            server.edit(&path("v1", "services", &format!("demo-{c}-public")), |s| {
                s["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
            });
        }
        reconcile_once(&server, &ctx).await.unwrap();
        let status = cluster(&server).status.clone().unwrap();
        assert_eq!(status.endpoint.as_deref(), Some("203.0.113.2:50051"));
        assert_eq!(status.endpoints["auth"], "203.0.113.1:50051");
        assert_eq!(status.endpoints["saga"], "203.0.113.3:50051");

        // Off: the Services go, and the cluster's own Services stay.
        server.edit(CLUSTER, |c| {
            c["spec"].as_object_mut().unwrap().remove("loadBalancer");
        });
        reconcile_once(&server, &ctx).await.unwrap();
        assert!(server
            .get(&path("v1", "services", "demo-chat-public"))
            .is_none());
        assert!(server.get(&path("v1", "services", "demo-chat")).is_some());
        let status = cluster(&server).status.clone().unwrap();
        assert_eq!((status.endpoint, status.endpoints.len()), (None, 0));
    }

    #[tokio::test]
    async fn a_route_its_gateway_refused_is_degraded() {
        let (server, ctx) = setup(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com", "parentRef": {"name": "public"}}}));
        steady(&server, &ctx).await;
        assert_eq!(condition(&server, "Degraded").0, "False");
        // Play the Gateway implementation.
        server.edit(
            &path("gateway.networking.k8s.io/v1", "grpcroutes", "demo-saga"),
            |r| {
                r["status"] = json!({"parents": [{"parentRef": {"name": "public"},
                    "controllerName": "example.com/gw",
                    "conditions": [{"type": "Accepted", "status": "False",
                                    "reason": "NoMatchingListenerHostname",
                                    "message": "no listener for chat.example.com"}]}]});
            },
        );
        reconcile_once(&server, &ctx).await.unwrap();
        assert_eq!(
            condition(&server, "Degraded"),
            ("True".into(), "RouteNotAccepted".into())
        );
        assert!(degraded_message(&server).contains("GRPCRoute demo-saga is not accepted"));
    }

    #[tokio::test]
    async fn a_gateway_api_that_is_not_installed_is_reported_not_a_wedge() {
        let (server, ctx) = setup(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com",
                        "parentRef": {"name": "shared", "namespace": "gateways"}}}));
        // The API server answers 404 for a kind it does not serve.
        server.fail("/apis/gateway.networking.k8s.io/", 404);
        assert!(reconcile_once(&server, &ctx).await.is_err());
        let message = degraded_message(&server);
        assert!(
            message.contains(
                "GRPCRoute demo-auth: the cluster does not serve \
                 gateway.networking.k8s.io/v1 GRPCRoute"
            ) && message.contains("install the Gateway API CRDs"),
            "{message}"
        );
        assert!(
            !message.contains("demo-saga"),
            "one message per kind: {message}"
        );
        // Everything else went on: the migrations started.
        assert_eq!(job_paths(&server).len(), 4);
    }

    #[tokio::test]
    async fn cloud_native_pg_gets_role_secrets_and_a_missing_crd_is_said_not_wedged() {
        let (server, ctx) = setup(json!({"version": "1.0.0",
                                         "postgres": {"cloudNativePG": {}}}));
        // No CloudNativePG in the cluster: the API server does not know the kind.
        server.fail("postgresql.cnpg.io", 404);
        // Reported as refused (retried with backoff), not an error that stops the pass.
        assert!(matches!(
            reconcile_once(&server, &ctx).await,
            Err(Error::Refused(1))
        ));
        let c = cluster(&server);
        let degraded = status::condition(c.status.as_ref().unwrap(), "Degraded").unwrap();
        assert_eq!(degraded.status, "True");
        assert!(
            degraded
                .message
                .contains("does not serve postgresql.cnpg.io/v1 Cluster"),
            "{}",
            degraded.message
        );
        // The rest of the pass went on: the services' migrations started.
        assert_eq!(job_paths(&server).len(), 4);
        // One basic-auth Secret per service role, each with its own password, kept.
        let mut passwords = Vec::new();
        for c in Component::ALL {
            let p = path("v1", "secrets", &format!("demo-postgres-{}", c.name()));
            let secret = server.get(&p).expect("a role Secret");
            assert_eq!(secret["type"], "kubernetes.io/basic-auth");
            let value = |key: &str| {
                use base64::Engine;
                let encoded = secret["data"][key].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap();
                String::from_utf8(bytes).unwrap()
            };
            assert_eq!(value("username"), c.role());
            passwords.push(value("password"));
        }
        passwords.sort();
        passwords.dedup();
        assert_eq!(passwords.len(), 4);

        // Installed: the Cluster is applied and the problem is gone.
        server.heal();
        steady(&server, &ctx).await;
        let applied = server
            .get(&path("postgresql.cnpg.io/v1", "clusters", "demo-postgres"))
            .expect("Cluster applied");
        assert_eq!(applied["spec"]["instances"], 3);
        assert_ne!(condition(&server, "Degraded").0, "True");
    }
}
