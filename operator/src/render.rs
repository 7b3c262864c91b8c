//! The desired Kubernetes objects of a `ChatCluster`, as pure functions of its spec.
//!
//! Nothing here talks to the API server: the reconcile applies what these functions return,
//! `chat-operator render` prints it, and the unit tests inspect it. Keeping the "what" apart
//! from the "how" is what makes the operator testable without a cluster and lets a person
//! diff what a spec change will do before applying it.
//!
//! The objects are written as JSON (close to the YAML a person would write) and parsed into
//! the typed `k8s-openapi` structs, so a misspelt field fails the tests instead of being
//! silently dropped by the API server.
//!
//! Wiring, in one place:
//! - every service gets `LISTEN_ADDR`/`METRICS_ADDR`, the shared ConfigMap (`RUST_LOG`,
//!   `LOG_FORMAT`, `OTEL_EXPORTER_OTLP_ENDPOINT`), `SERVICE_SECRET` and a `DATABASE_URL` built
//!   by Kubernetes from a secret key: its own role's `$(POSTGRES_PASSWORD)` with the managed
//!   or CloudNativePG PostgreSQL (least privilege: a service reaches only its database),
//!   `$(POSTGRES_URL)` and its database name with an external one; so no secret is ever
//!   inlined in a manifest;
//! - chat and notification log in to the managed NATS as their own users
//!   (`$(NATS_PASSWORD)` in `NATS_URL`), each allowed only the subjects it uses;
//! - service URLs are the in-cluster Services `http://<name>-<component>:50051`;
//! - generated secrets (signing key, service secret, PostgreSQL superuser password, NATS
//!   passwords) live in the `<name>-generated` Secret, and each PostgreSQL role's password
//!   in `<name>-postgres-<component>`; the reconcile creates them once and never rotates.

use std::collections::BTreeMap;

use chat_env as vars;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    core::{ApiResource, DynamicObject, GroupVersionKind},
    Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{
    ChatCluster, ChatClusterSpec, CnpgBackup, ManagedNats, ManagedPostgres, VolumePolicy,
};

/// gRPC port of every service (`LISTEN_ADDR`); defined with the spec, whose
/// load balancer port defaults to it.
pub use crate::crd::GRPC_PORT;
/// Prometheus port of every service (`METRICS_ADDR`).
pub const METRICS_PORT: i32 = 9090;
/// User and group the service images run as (see the Dockerfile).
pub const SERVICE_UID: i64 = 10001;
/// Superuser of the managed PostgreSQL: only the server and the roles Job use it.
pub const POSTGRES_USER: &str = "chat";

/// Keys of the `<name>-generated` Secret.
pub mod keys {
    /// The private key AuthService signs access tokens with (PKCS#8 PEM).
    pub const SIGNING_KEY: &str = "jwt-signing-key";
    /// The public half of the generated signing key (SPKI PEM), for a key rotation's
    /// `auth.previousPublicKey`.
    pub const PUBLIC_KEY: &str = "jwt-public-key";
    /// The secret the services exchange for their service tokens.
    pub const SERVICE_SECRET: &str = "service-secret";
    /// Password of [`POSTGRES_USER`](super::POSTGRES_USER) on the managed PostgreSQL.
    pub const POSTGRES_PASSWORD: &str = "postgres-password";
    /// The managed PostgreSQL's URL with [`POSTGRES_USER`](super::POSTGRES_USER)'s
    /// password, without a database name.
    pub const POSTGRES_URL: &str = "postgres-url";
    /// Password of chat-service's user on the managed NATS.
    pub const NATS_CHAT_PASSWORD: &str = "nats-chat-password";
    /// Password of notification-service's user on the managed NATS.
    pub const NATS_NOTIFICATION_PASSWORD: &str = "nats-notification-password";
}

/// Why rendering failed: a bug in this module (caught by its tests) or an owner without
/// the metadata the API server always sets.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The owner lacks this metadata field (name, namespace, uid).
    #[error("the ChatCluster has no {0}")]
    MissingMetadata(&'static str),
    /// A rendered object does not match its Kubernetes type: a bug here.
    #[error("rendered {kind} does not parse: {source}")]
    Invalid {
        /// The object's kind.
        kind: &'static str,
        /// Where it does not match.
        source: serde_json::Error,
    },
}

/// One of the four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// AuthService.
    Auth,
    /// ChatService.
    Chat,
    /// NotificationService.
    Notification,
    /// The saga orchestrator.
    Saga,
}

impl Component {
    /// Every component, in a fixed order.
    pub const ALL: [Component; 4] = [
        Component::Auth,
        Component::Chat,
        Component::Notification,
        Component::Saga,
    ];

    /// Short name: object suffix and `app.kubernetes.io/component` label.
    pub fn name(self) -> &'static str {
        match self {
            Component::Auth => "auth",
            Component::Chat => "chat",
            Component::Notification => "notification",
            Component::Saga => "saga",
        }
    }

    /// The binary, which is also the image name.
    pub fn binary(self) -> &'static str {
        match self {
            Component::Auth => "auth-service",
            Component::Chat => "chat-service",
            Component::Notification => "notification-service",
            Component::Saga => "saga-orchestrator",
        }
    }

    /// The PostgreSQL database the service owns.
    pub fn database(self) -> &'static str {
        match self {
            Component::Auth => "users",
            Component::Chat => "chat",
            Component::Notification => "notification",
            Component::Saga => "saga",
        }
    }

    /// The PostgreSQL role the service logs in as, owner of its database and nothing
    /// else (CloudNativePG and single-pod modes).
    pub fn role(self) -> &'static str {
        match self {
            Component::Auth => "auth_service",
            Component::Chat => "chat_service",
            Component::Notification => "notification_service",
            Component::Saga => "saga_service",
        }
    }

    /// The fully qualified gRPC service routed to it by the Ingress, for public ones.
    pub fn public_grpc_service(self) -> Option<&'static str> {
        match self {
            Component::Auth => Some("grpcchat.auth.v1.AuthService"),
            Component::Chat => Some("grpcchat.chat.v1.ChatService"),
            Component::Notification => None,
            Component::Saga => Some("grpcchat.saga.v1.SagaOrchestrator"),
        }
    }

    /// Pods wanted: the spec's count, or the autoscaler's minimum when it scales.
    pub fn replicas(self, spec: &ChatClusterSpec) -> i32 {
        if let Some(a) = self.autoscaling(spec) {
            return a.min_replicas;
        }
        match self {
            Component::Auth => spec.auth.component.replicas,
            Component::Chat => spec.chat.replicas,
            Component::Notification => spec.notification.replicas,
            Component::Saga => spec.saga.replicas,
        }
    }

    /// The component's autoscaling, when the HPA (not the spec) sets its replicas.
    pub fn autoscaling(self, spec: &ChatClusterSpec) -> Option<&crate::crd::AutoscalingSpec> {
        self.spec(spec).autoscaling.as_ref()
    }

    /// The most PostgreSQL connections one pod of the component opens
    /// (`DATABASE_MAX_CONNECTIONS`, set on every pod so that [`database_connections`] adds
    /// up what actually runs): the services' own defaults.
    pub fn database_pool(self) -> u32 {
        match self {
            Component::Chat => 20,
            Component::Auth | Component::Notification | Component::Saga => 10,
        }
    }

    /// The most pods of the component that hold connections at once: as many as it may
    /// scale to, plus the one a rolling update starts before it stops an old one
    /// (`maxSurge: 1`, see [`deployment`]); none when it is scaled to zero.
    fn pods_at_most(self, spec: &ChatClusterSpec) -> u32 {
        let most = match self.autoscaling(spec) {
            Some(a) => a.max_replicas.max(a.min_replicas),
            None => self.replicas(spec),
        };
        match u32::try_from(most) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n + 1,
        }
    }

    fn spec(self, spec: &ChatClusterSpec) -> &crate::crd::ComponentSpec {
        match self {
            Component::Auth => &spec.auth.component,
            Component::Chat => &spec.chat,
            Component::Notification => &spec.notification,
            Component::Saga => &spec.saga,
        }
    }

    /// The image of this component.
    pub fn image(self, spec: &ChatClusterSpec) -> String {
        self.spec(spec).image.clone().unwrap_or_else(|| {
            format!(
                "{}/{}:{}",
                spec.images.repository.trim_end_matches('/'),
                self.binary(),
                spec.version
            )
        })
    }
}

/// Connections kept free beyond the services' pools: PostgreSQL's own reserved ones
/// (`superuser_reserved_connections`, 3), the migration Jobs (one pool of a few
/// connections each, four of them at once at most), the roles Job, CloudNativePG's
/// instance manager, and an administrator's psql.
const DATABASE_CONNECTIONS_SPARE: u32 = 30;

/// The PostgreSQL connections this deployment may open at once: every component's pool on
/// every pod it may run, during a rolling update, scaled to its maximum, plus
/// [`DATABASE_CONNECTIONS_SPARE`]. The default cluster (two pods of each component) needs
/// 180, beyond PostgreSQL's default `max_connections` of 100: without more, the pools of
/// a busy system would be refused connections ("too many clients") and its calls fail.
pub fn database_connections(spec: &ChatClusterSpec) -> u32 {
    Component::ALL
        .into_iter()
        .map(|c| c.database_pool() * c.pods_at_most(spec))
        .sum::<u32>()
        + DATABASE_CONNECTIONS_SPARE
}

/// The `max_connections` the operator gives a PostgreSQL it runs (managed, or
/// CloudNativePG's): [`database_connections`] rounded up to a multiple of 50, so that
/// adding a pod or two does not change it (a change restarts the database), and never
/// below PostgreSQL's default. An external server must allow as many; see
/// docs/kubernetes.md.
pub fn postgres_max_connections(spec: &ChatClusterSpec) -> u32 {
    database_connections(spec)
        .div_ceil(50)
        .saturating_mul(50)
        .max(100)
}

/// Everything the reconcile applies. The [`Desired::independent`] objects are applied one
/// by one, each on its own; the StatefulSets, migration Jobs and Deployments have their own
/// steps (immutable fields, gating). A new kind of plain object needs a field here and a
/// line in `independent`.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The account every pod runs as.
    pub service_account: ServiceAccount,
    /// The shared configuration, and the managed NATS's `nats.conf` when it runs.
    pub config_maps: Vec<ConfigMap>,
    /// The components' Services, and those of the managed PostgreSQL and NATS when run.
    pub services: Vec<Service>,
    /// The managed PostgreSQL and NATS, when run.
    pub stateful_sets: Vec<StatefulSet>,
    /// The migration Job of each component; its Deployment is applied once it succeeded.
    pub migrations: Vec<(Component, Job)>,
    /// Each component's Deployment, applied once its migration Job succeeded.
    pub deployments: Vec<(Component, Deployment)>,
    /// Keep enough pods of each component (and of the managed NATS) through voluntary
    /// disruptions.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// One per autoscaled component.
    pub hpas: Vec<HorizontalPodAutoscaler>,
    /// Empty unless `spec.networkPolicy` is set.
    pub network_policies: Vec<NetworkPolicy>,
    /// The ingress-nginx Ingress, with `spec.ingress`.
    pub ingress: Option<Ingress>,
    /// The Gateway the operator runs itself, with `spec.gateway.gatewayClassName`.
    pub gateway: Option<Plain>,
    /// One GRPCRoute per public service, with `spec.gateway`.
    pub grpc_routes: Vec<Plain>,
    /// One `LoadBalancer` Service per public service, with `spec.loadBalancer`.
    pub load_balancers: Vec<Service>,
    /// The Prometheus Operator PodMonitor, when `spec.monitoring.podMonitor` is set.
    pub pod_monitor: Option<Plain>,
    /// The CloudNativePG `Cluster`, when `spec.postgres.cloudNativePG` is set.
    pub postgres_cluster: Option<Plain>,
    /// The single-pod PostgreSQL's roles Job ([`postgres_roles_job`]): the migrations
    /// and Deployments wait for it.
    pub postgres_roles: Option<Job>,
}

/// An object applied as rendered and on its own: nothing waits for it and its failure
/// holds nothing else back. Kept untyped so that any kind (including other projects'
/// custom resources) is applied the same way.
#[derive(Clone, Debug)]
pub struct Plain {
    /// The object's API group, version and kind, for addressing it.
    pub resource: ApiResource,
    /// The object as rendered.
    pub object: DynamicObject,
}

impl Plain {
    /// Erases a typed object.
    pub fn of<K>(object: &K) -> Result<Self, RenderError>
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        let invalid = |source| RenderError::Invalid {
            kind: "object",
            source,
        };
        let value = serde_json::to_value(object).map_err(invalid)?;
        Ok(Self {
            resource: ApiResource::erase::<K>(&()),
            object: serde_json::from_value(value).map_err(invalid)?,
        })
    }

    /// `Kind name`, as the status and the events name it.
    pub fn describe(&self) -> String {
        format!("{} {}", self.resource.kind, self.object.name_any())
    }
}

impl Desired {
    /// The objects that are applied independently of each other and of the workloads'
    /// gating, in the order they are applied.
    pub fn independent(&self) -> Result<Vec<Plain>, RenderError> {
        let mut out = vec![Plain::of(&self.service_account)?];
        for cm in &self.config_maps {
            out.push(Plain::of(cm)?);
        }
        for svc in &self.services {
            out.push(Plain::of(svc)?);
        }
        for pdb in &self.pdbs {
            out.push(Plain::of(pdb)?);
        }
        for hpa in &self.hpas {
            out.push(Plain::of(hpa)?);
        }
        for policy in &self.network_policies {
            out.push(Plain::of(policy)?);
        }
        for svc in &self.load_balancers {
            out.push(Plain::of(svc)?);
        }
        if let Some(ingress) = &self.ingress {
            out.push(Plain::of(ingress)?);
        }
        // The Gateway before its routes, so that they attach at once.
        out.extend(self.gateway.clone());
        out.extend(self.grpc_routes.iter().cloned());
        out.extend(self.pod_monitor.clone());
        out.extend(self.postgres_cluster.clone());
        Ok(out)
    }

    /// Every object as JSON, for `chat-operator render`.
    pub fn to_values(&self, generated_secret: &Secret) -> Vec<Value> {
        fn v<T: serde::Serialize>(o: &T) -> Value {
            serde_json::to_value(o).unwrap_or(Value::Null)
        }
        let mut out = vec![v(&self.service_account), v(generated_secret)];
        out.extend(self.config_maps.iter().map(v));
        out.extend(self.services.iter().map(v));
        out.extend(self.stateful_sets.iter().map(v));
        out.extend(self.postgres_roles.iter().map(v));
        out.extend(self.migrations.iter().map(|(_, j)| v(j)));
        out.extend(self.deployments.iter().map(|(_, d)| v(d)));
        out.extend(self.pdbs.iter().map(v));
        out.extend(self.hpas.iter().map(v));
        out.extend(self.network_policies.iter().map(v));
        out.extend(self.load_balancers.iter().map(v));
        out.extend(self.ingress.iter().map(v));
        out.extend(self.gateway.iter().map(|p| v(&p.object)));
        out.extend(self.grpc_routes.iter().map(|p| v(&p.object)));
        out.extend(self.pod_monitor.iter().map(|p| v(&p.object)));
        out.extend(self.postgres_cluster.iter().map(|p| v(&p.object)));
        out
    }
}

/// Object name `<cluster>-<suffix>`.
pub fn name(cluster: &ChatCluster, suffix: &str) -> String {
    format!("{}-{suffix}", cluster.name_any())
}

/// The owner reference every rendered object carries: deleting the ChatCluster deletes
/// them through the garbage collector.
pub fn owner_reference(cluster: &ChatCluster) -> Result<OwnerReference, RenderError> {
    if cluster.meta().uid.is_none() {
        return Err(RenderError::MissingMetadata("metadata.uid"));
    }
    cluster
        .controller_owner_ref(&())
        .ok_or(RenderError::MissingMetadata("metadata.name"))
}

/// Labels of every object of the cluster; `component` narrows to one workload.
pub fn labels(cluster: &ChatCluster, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster, component);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "chat-operator".into(),
    );
    l.insert("app.kubernetes.io/part-of".into(), "grpc-chat".into());
    l
}

/// The immutable subset of [`labels`] used in selectors.
pub fn selector_labels(cluster: &ChatCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "grpc-chat".into()),
        ("app.kubernetes.io/instance".into(), cluster.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn typed<T: DeserializeOwned>(kind: &'static str, value: Value) -> Result<T, RenderError> {
    serde_json::from_value(value).map_err(|source| RenderError::Invalid { kind, source })
}

fn metadata(cluster: &ChatCluster, name: String, component: &str, owner: &OwnerReference) -> Value {
    json!({
        "name": name,
        "namespace": cluster.namespace(),
        "labels": labels(cluster, component),
        "ownerReferences": [owner],
    })
}

/// A short, stable digest (for names and annotations that change when their input does).
pub fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    hex::encode(&digest[..4])
}

/// What rendering needs from the cluster besides the spec.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Per component, a digest of the Secret values its pods read ([`secrets_read`]): on
    /// the pod template, so a changed Secret rolls exactly the pods that read it. Absent
    /// (as in `chat-operator render`, which reads no Secret): no annotation.
    pub secret_digests: BTreeMap<Component, String>,
    /// A digest of the services' PostgreSQL role passwords: on the roles Job, so that a
    /// changed password (a rotation) runs it again.
    pub roles_digest: Option<String>,
    /// A digest of the managed NATS users' passwords: on the NATS pod template, so that
    /// a changed password restarts the servers, which read it only at start.
    pub nats_digest: Option<String>,
}

/// Pod-template annotation: the digest of the Secret values the pods read.
pub const SECRETS_ANNOTATION: &str = "grpcchat.dev/secrets-hash";

/// Every `(Secret, key, optional)` a component's pods read, from its environment.
pub fn secrets_read(cluster: &ChatCluster, c: Component) -> Vec<(String, String, bool)> {
    let mut refs: Vec<(String, String, bool)> = env(cluster, c)
        .iter()
        .filter_map(|e| {
            let r = e.get("valueFrom")?.get("secretKeyRef")?;
            Some((
                r.get("name")?.as_str()?.to_string(),
                r.get("key")?.as_str()?.to_string(),
                r.get("optional").and_then(Value::as_bool).unwrap_or(false),
            ))
        })
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

/// The names of every Secret the cluster's pods read (what the operator watches).
pub fn secret_names(cluster: &ChatCluster) -> Vec<String> {
    let mut names: Vec<String> = Component::ALL
        .into_iter()
        .flat_map(|c| secrets_read(cluster, c))
        .map(|(name, _, _)| name)
        .collect();
    names.push(name(cluster, "generated"));
    names.sort();
    names.dedup();
    names
}

/// Renders every object of `cluster`, without what only a cluster knows ([`Inputs`]).
pub fn desired(cluster: &ChatCluster) -> Result<Desired, RenderError> {
    desired_with(cluster, &Inputs::default())
}

/// Renders every object of `cluster`.
pub fn desired_with(cluster: &ChatCluster, inputs: &Inputs) -> Result<Desired, RenderError> {
    let owner = owner_reference(cluster)?;
    let spec = &cluster.spec;
    let config = config_map(cluster, &owner)?;
    let config_hash = short_hash(&serde_json::to_string(&config.data).unwrap_or_default());

    let mut config_maps = vec![config];
    let mut services = Vec::new();
    let mut stateful_sets = Vec::new();
    let mut pdbs = Vec::new();

    let mut postgres_roles = None;
    if let Some(pg) = spec.managed_postgres() {
        services.push(postgres_service(cluster, &owner)?);
        stateful_sets.push(postgres_stateful_set(cluster, &pg, &owner)?);
        postgres_roles = Some(postgres_roles_job(
            cluster,
            &pg,
            inputs.roles_digest.as_deref(),
            &owner,
        )?);
    }
    if let Some(nats) = spec.managed_nats() {
        config_maps.push(nats_config_map(cluster, &nats, &owner)?);
        services.extend(nats_services(cluster, &owner)?);
        stateful_sets.push(nats_stateful_set(
            cluster,
            &nats,
            inputs.nats_digest.as_deref(),
            &owner,
        )?);
        pdbs.push(pdb(cluster, "nats", &owner)?);
    }

    let mut migrations = Vec::new();
    let mut deployments = Vec::new();
    let mut hpas = Vec::new();
    for c in Component::ALL {
        if let Some(a) = c.autoscaling(spec) {
            hpas.push(hpa(cluster, c, a, &owner)?);
        }
        services.push(service(cluster, c, &owner)?);
        let secrets = inputs.secret_digests.get(&c).map(String::as_str);
        migrations.push((c, migration_job(cluster, c, secrets, &owner)?));
        deployments.push((c, deployment(cluster, c, &config_hash, secrets, &owner)?));
        pdbs.push(pdb(cluster, c.name(), &owner)?);
    }

    Ok(Desired {
        service_account: service_account(cluster, &owner)?,
        config_maps,
        services,
        stateful_sets,
        migrations,
        deployments,
        pdbs,
        hpas,
        network_policies: network_policies(cluster, &owner)?,
        ingress: ingress(cluster, &owner)?,
        gateway: gateway(cluster, &owner)?,
        grpc_routes: grpc_routes(cluster, &owner)?,
        load_balancers: load_balancers(cluster, &owner)?,
        pod_monitor: pod_monitor(cluster, &owner)?,
        postgres_cluster: cnpg_cluster(cluster, &owner)?,
        postgres_roles,
    })
}

/// The identity of the service pods. It holds no RBAC: the services never call the
/// Kubernetes API, and their token is not even mounted.
pub fn service_account(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<ServiceAccount, RenderError> {
    typed(
        "ServiceAccount",
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(cluster, cluster.name_any(), "services", owner),
            "automountServiceAccountToken": false,
        }),
    )
}

/// Settings shared by every service that are not secret.
pub fn config_map(cluster: &ChatCluster, owner: &OwnerReference) -> Result<ConfigMap, RenderError> {
    let mut data = BTreeMap::from([
        (vars::RUST_LOG.to_string(), cluster.spec.log_level.clone()),
        (vars::LOG_FORMAT.to_string(), "json".to_string()),
    ]);
    if let Some(endpoint) = &cluster.spec.otlp_endpoint {
        data.insert(vars::OTEL_EXPORTER_OTLP_ENDPOINT.into(), endpoint.clone());
    }
    typed(
        "ConfigMap",
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(cluster, name(cluster, "config"), "config", owner),
            "data": data,
        }),
    )
}

/// Whether the generated Secret belongs to the ChatCluster (and is deleted with it). Not
/// when the managed PostgreSQL keeps its volume (`volumePolicy: Retain`): its password is
/// part of the retained data directory (`POSTGRES_PASSWORD` only applies at initdb), so the
/// Secret outlives the ChatCluster with the volume, and a ChatCluster re-created with the
/// same name finds both.
pub fn generated_secret_owned(spec: &ChatClusterSpec) -> bool {
    spec.managed_postgres()
        .is_none_or(|pg| pg.volume_policy == VolumePolicy::Delete)
}

/// The metadata of a Secret whose values the operator generates: owned by the cluster
/// only as [`generated_secret_owned`] says.
fn owned_secret_metadata(cluster: &ChatCluster, name: String, owner: &OwnerReference) -> Value {
    let mut metadata = metadata(cluster, name, "secrets", owner);
    if !generated_secret_owned(&cluster.spec) {
        if let Some(m) = metadata.as_object_mut() {
            m.remove("ownerReferences");
        }
    }
    metadata
}

/// The Secret holding what the operator generated. `data` is the generated values (the
/// reconcile passes what it read back or created; `render` passes placeholders).
pub fn generated_secret(
    cluster: &ChatCluster,
    owner: &OwnerReference,
    data: &BTreeMap<String, String>,
) -> Result<Secret, RenderError> {
    let metadata = owned_secret_metadata(cluster, name(cluster, "generated"), owner);
    typed(
        "Secret",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "stringData": data,
        }),
    )
}

/// Which generated keys this spec needs (the ones it does not take from a user's Secret).
pub fn generated_keys(spec: &ChatClusterSpec) -> Vec<&'static str> {
    let mut k = Vec::new();
    if spec.signing_key.is_none() {
        k.push(keys::SIGNING_KEY);
        k.push(keys::PUBLIC_KEY);
    }
    if spec.service_secret.is_none() {
        k.push(keys::SERVICE_SECRET);
    }
    if spec.managed_postgres().is_some() {
        k.push(keys::POSTGRES_PASSWORD);
        k.push(keys::POSTGRES_URL);
    }
    if spec.managed_nats().is_some() {
        k.push(keys::NATS_CHAT_PASSWORD);
        k.push(keys::NATS_NOTIFICATION_PASSWORD);
    }
    k
}

/// The URL (without database) of the managed PostgreSQL, given its password.
pub fn managed_postgres_url(cluster: &ChatCluster, password: &str) -> String {
    format!(
        "postgres://{POSTGRES_USER}:{password}@{}:5432",
        name(cluster, "postgres")
    )
}

/// Whether each service logs in to PostgreSQL as its own role ([`Component::role`]),
/// whose password is in its own Secret ([`role_secret_name`]): with CloudNativePG and
/// the single-pod PostgreSQL. An external server keeps the one URL it is given.
pub fn per_service_roles(spec: &ChatClusterSpec) -> bool {
    spec.cloud_native_pg().is_some() || spec.managed_postgres().is_some()
}

/// Host the services reach PostgreSQL at when they log in as their own roles.
fn role_postgres_host(cluster: &ChatCluster) -> Option<String> {
    if cluster.spec.cloud_native_pg().is_some() {
        // `-rw` is CloudNativePG's Service of the current primary.
        return Some(name(cluster, "postgres-rw"));
    }
    cluster
        .spec
        .managed_postgres()
        .map(|_| name(cluster, "postgres"))
}

/// The `kubernetes.io/basic-auth` Secret (`username`, `password`) of a service's
/// PostgreSQL role: what CloudNativePG sets the role's password from
/// (`managed.roles[].passwordSecret`) and what the service's `DATABASE_URL` is built from.
pub fn role_secret_name(cluster: &ChatCluster, c: Component) -> String {
    name(cluster, &format!("postgres-{}", c.name()))
}

/// The Secret of a service's PostgreSQL role; `password` is what the reconcile generated
/// or read back. Labelled `cnpg.io/reload` so that CloudNativePG applies a changed
/// password to the role (a rotation). Owned like the generated Secret.
pub fn postgres_role_secret(
    cluster: &ChatCluster,
    owner: &OwnerReference,
    c: Component,
    password: &str,
) -> Result<Secret, RenderError> {
    let mut metadata = owned_secret_metadata(cluster, role_secret_name(cluster, c), owner);
    metadata["labels"]["cnpg.io/reload"] = json!("true");
    typed(
        "Secret",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "kubernetes.io/basic-auth",
            "stringData": {"username": c.role(), "password": password},
        }),
    )
}

/// CloudNativePG's `Cluster` kind (`postgresql.cnpg.io/v1`).
pub fn cnpg_cluster_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "postgresql.cnpg.io",
        "v1",
        "Cluster",
    ))
}

/// The CloudNativePG `Cluster` for `spec.postgres.cloudNativePG`: `instances` PostgreSQL
/// pods (a primary and streaming replicas, failed over by CloudNativePG), TLS, and
/// optionally backups to an object store. Other projects' kind, so kept untyped.
///
/// Each service gets a role owning only its database. `initdb` creates the chat database
/// and its owner (CloudNativePG's "application" database, password from its Secret); the
/// other three roles are created with `LOGIN` and their databases by `postInitSQL`, once,
/// at bootstrap, and `managed.roles` then keeps every role's password equal to its Secret
/// for as long as the Cluster lives (CloudNativePG adopts a role that exists). `CONNECT` on
/// each database is revoked from `PUBLIC`, so a role reaches its own database only. No
/// superuser access is enabled: nothing of ours needs it.
pub fn cnpg_cluster(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Option<Plain>, RenderError> {
    let Some(cnpg) = cluster.spec.cloud_native_pg() else {
        return Ok(None);
    };
    let app = Component::Chat;
    let others: Vec<Component> = Component::ALL.into_iter().filter(|c| *c != app).collect();
    let post_init = cnpg_post_init_sql(&others);
    let roles = cnpg_managed_roles(cluster, &others);
    let mut storage = json!({"size": cnpg.storage.size});
    if let Some(class) = &cnpg.storage.storage_class {
        storage["storageClass"] = json!(class);
    }
    // What CloudNativePG creates (pods, volumes, Services) is recognisably this cluster's
    // PostgreSQL, but not `managed-by` this operator: it is CloudNativePG's, and the
    // operator's label selectors (pruning, pod observation) leave it alone.
    let mut inherited = selector_labels(cluster, "postgres");
    inherited.insert("app.kubernetes.io/part-of".into(), "grpc-chat".into());
    let mut spec = json!({
        "instances": cnpg.instances,
        "storage": storage,
        "enableSuperuserAccess": false,
        "bootstrap": {"initdb": {
            "database": app.database(),
            "owner": app.role(),
            "secret": {"name": role_secret_name(cluster, app)},
            "postInitSQL": post_init,
            "postInitApplicationSQL": [
                format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", app.database()),
            ],
        }},
        "managed": {"roles": roles},
        "inheritedMetadata": {"labels": inherited},
        "postgresql": {"parameters": {
            "max_connections": postgres_max_connections(&cluster.spec).to_string(),
        }},
    });
    if let Some(image) = &cnpg.image_name {
        spec["imageName"] = json!(image);
    }
    if let Some(r) = &cnpg.resources {
        spec["resources"] = json!(r);
    }
    if let Some(b) = &cnpg.backup {
        spec["backup"] = cnpg_backup(b);
    }
    let value = json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": metadata(cluster, name(cluster, "postgres"), "postgres", owner),
        "spec": spec,
    });
    Ok(Some(Plain {
        resource: cnpg_cluster_resource(),
        object: typed("Cluster", value)?,
    }))
}

/// What CloudNativePG runs once at bootstrap for the services other than the
/// "application" one: each role with `LOGIN`, its own database, and no `CONNECT` for
/// `PUBLIC`.
fn cnpg_post_init_sql(others: &[Component]) -> Vec<String> {
    let mut post_init = Vec::new();
    for c in others {
        post_init.push(format!("CREATE ROLE {} LOGIN", c.role()));
        post_init.push(format!(
            "CREATE DATABASE {} OWNER {}",
            c.database(),
            c.role()
        ));
        post_init.push(format!(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC",
            c.database()
        ));
    }
    post_init
}

/// `managed.roles`: CloudNativePG keeps each role's password equal to its Secret.
fn cnpg_managed_roles(cluster: &ChatCluster, others: &[Component]) -> Vec<Value> {
    others
        .iter()
        .map(|c| {
            json!({
                "name": c.role(),
                "ensure": "present",
                "login": true,
                "passwordSecret": {"name": role_secret_name(cluster, *c)},
            })
        })
        .collect()
}

/// The `backup` section: Barman to an object store, with S3 keys from Secrets or, without
/// them, the pod's IAM role.
fn cnpg_backup(b: &CnpgBackup) -> Value {
    let mut store = json!({"destinationPath": b.destination_path});
    if let Some(url) = &b.endpoint_url {
        store["endpointURL"] = json!(url);
    }
    store["s3Credentials"] = match (&b.access_key_id, &b.secret_access_key) {
        (Some(id), Some(key)) => json!({
            "accessKeyId": {"name": id.name, "key": id.key},
            "secretAccessKey": {"name": key.name, "key": key.key},
        }),
        _ => json!({"inheritFromIAMRole": true}),
    };
    let mut backup = json!({"barmanObjectStore": store});
    if let Some(r) = &b.retention_policy {
        backup["retentionPolicy"] = json!(r);
    }
    backup
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> Value {
    json!({
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
    })
}

fn value_env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// The environment of a component's container (and of its migration Job).
pub fn env(cluster: &ChatCluster, c: Component) -> Vec<Value> {
    let spec = &cluster.spec;
    let generated = name(cluster, "generated");
    let mut env = vec![
        value_env(vars::LISTEN_ADDR, format!("0.0.0.0:{GRPC_PORT}")),
        value_env(vars::METRICS_ADDR, format!("0.0.0.0:{METRICS_PORT}")),
    ];
    match &spec.service_secret {
        Some(s) => env.push(secret_env(vars::SERVICE_SECRET, &s.name, &s.key, false)),
        None => env.push(secret_env(
            vars::SERVICE_SECRET,
            &generated,
            keys::SERVICE_SECRET,
            false,
        )),
    }
    if let Some(host) = role_postgres_host(cluster) {
        // The service's own role; Kubernetes expands `$(POSTGRES_PASSWORD)` from the
        // variable defined just before. Generated passwords are alphanumeric, so they
        // need no URL encoding.
        env.push(secret_env(
            "POSTGRES_PASSWORD",
            &role_secret_name(cluster, c),
            "password",
            false,
        ));
        let mut url = format!(
            "postgres://{}:$(POSTGRES_PASSWORD)@{host}:5432/{}",
            c.role(),
            c.database()
        );
        if spec.cloud_native_pg().is_some() {
            // CloudNativePG serves TLS only (with its own CA, hence no `verify-full`).
            url.push_str("?sslmode=require");
        }
        env.push(value_env(vars::DATABASE_URL, url));
        component_env(cluster, c, &mut env);
        return env;
    }
    // Kubernetes expands `$(POSTGRES_URL)` from the variable defined just before.
    let params = match (&spec.postgres.external, spec.managed_postgres()) {
        (Some(ext), None) => {
            env.push(secret_env(
                "POSTGRES_URL",
                &ext.url_secret.name,
                &ext.url_secret.key,
                false,
            ));
            ext.params.clone()
        }
        _ => {
            env.push(secret_env(
                "POSTGRES_URL",
                &generated,
                keys::POSTGRES_URL,
                false,
            ));
            None
        }
    };
    let mut database_url = format!("$(POSTGRES_URL)/{}", c.database());
    if let Some(p) = params.filter(|p| !p.is_empty()) {
        database_url.push('?');
        database_url.push_str(p.trim_start_matches('?'));
    }
    env.push(value_env(vars::DATABASE_URL, database_url));
    component_env(cluster, c, &mut env);
    env
}

/// The part of [`env`] that depends on the component.
fn component_env(cluster: &ChatCluster, c: Component, env: &mut Vec<Value>) {
    let spec = &cluster.spec;
    env.push(value_env(
        vars::DATABASE_MAX_CONNECTIONS,
        c.database_pool().to_string(),
    ));
    let url = |c: Component| format!("http://{}:{GRPC_PORT}", name(cluster, c.name()));
    match c {
        Component::Auth => auth_env(cluster, env),
        Component::Chat => {
            nats_env(cluster, Component::Chat, env);
            env.extend(stream_env(spec));
            env.push(value_env(vars::AUTH_URL, url(Component::Auth)));
        }
        Component::Notification => {
            nats_env(cluster, Component::Notification, env);
            env.extend(stream_env(spec));
            env.push(value_env(vars::AUTH_URL, url(Component::Auth)));
            env.push(value_env(vars::CHAT_URL, url(Component::Chat)));
            email_env(cluster, env);
        }
        Component::Saga => {
            env.push(value_env(vars::AUTH_URL, url(Component::Auth)));
            env.push(value_env(vars::CHAT_URL, url(Component::Chat)));
            env.push(value_env(
                vars::NOTIFICATION_URL,
                url(Component::Notification),
            ));
        }
    }
}

/// Auth's signing keys and token settings.
fn auth_env(cluster: &ChatCluster, env: &mut Vec<Value>) {
    let spec = &cluster.spec;
    let generated = name(cluster, "generated");
    match &spec.signing_key {
        Some(s) => env.push(secret_env(vars::JWT_SIGNING_KEY, &s.name, &s.key, false)),
        None => env.push(secret_env(
            vars::JWT_SIGNING_KEY,
            &generated,
            keys::SIGNING_KEY,
            false,
        )),
    }
    if let Some(p) = &spec.auth.previous_public_key {
        env.push(secret_env(
            vars::JWT_PREVIOUS_PUBLIC_KEY,
            &p.name,
            &p.key,
            false,
        ));
    }
    if let Some(cost) = spec.auth.bcrypt_cost {
        env.push(value_env(vars::BCRYPT_COST, cost.to_string()));
    }
    if let Some(ttl) = spec.auth.access_token_ttl_secs {
        env.push(value_env(vars::ACCESS_TOKEN_TTL_SECS, ttl.to_string()));
    }
    if let Some(ttl) = spec.auth.refresh_token_ttl_secs {
        env.push(value_env(vars::REFRESH_TOKEN_TTL_SECS, ttl.to_string()));
    }
}

/// `NATS_URL` for `user`. The managed NATS requires each of its two clients to log in as
/// its own user; the kubelet expands `$(NATS_PASSWORD)` from the variable pushed just
/// before NATS_URL.
fn nats_env(cluster: &ChatCluster, user: Component, env: &mut Vec<Value>) {
    let spec = &cluster.spec;
    match &spec.nats.external {
        Some(ext) if spec.nats.managed.is_none() => env.push(value_env(vars::NATS_URL, &ext.url)),
        _ => {
            let (_, key) = nats_user(user).unwrap_or(("", ""));
            env.push(secret_env(
                "NATS_PASSWORD",
                &name(cluster, "generated"),
                key,
                false,
            ));
            env.push(value_env(
                vars::NATS_URL,
                format!(
                    "nats://{}:$(NATS_PASSWORD)@{}:4222",
                    user.name(),
                    name(cluster, "nats")
                ),
            ));
        }
    }
}

/// The notifier's email sender: the stub, or SMTP from the cluster's Secret.
fn email_env(cluster: &ChatCluster, env: &mut Vec<Value>) {
    match &cluster.spec.smtp {
        None => env.push(value_env(vars::EMAIL_SENDER, "stub")),
        Some(smtp) => {
            env.push(value_env(vars::EMAIL_SENDER, "smtp"));
            let s = &smtp.secret_name;
            env.push(secret_env(vars::SMTP_HOST, s, "host", false));
            env.push(secret_env(vars::SMTP_PORT, s, "port", false));
            env.push(secret_env(vars::SMTP_TLS, s, "tls", false));
            env.push(secret_env(vars::SMTP_FROM, s, "from", false));
            env.push(secret_env(vars::SMTP_USERNAME, s, "username", true));
            env.push(secret_env(vars::SMTP_PASSWORD, s, "password", true));
        }
    }
}

/// Copies of the events stream kept by a managed NATS of `nats_replicas` servers: three
/// survive the loss of one, more only slow every write down.
pub fn stream_replicas(nats_replicas: i32) -> i32 {
    nats_replicas.clamp(1, 3)
}

/// `max_file_store` of each managed NATS server: 90% of its volume, leaving room for the
/// filesystem's own overhead. `None` when the size is not a quantity (the CRD refuses those).
pub fn nats_max_file_store(nats: &ManagedNats) -> Option<u64> {
    let bytes = crate::quantity::value(&nats.storage)?;
    (bytes >= 1.0).then_some((bytes * 0.9) as u64)
}

/// `max_bytes` of the events stream: 75% of a server's `max_file_store`, leaving room
/// for consumer state and the JetStream cluster's own logs. Every replica holds a full copy,
/// so the limit is per server.
pub fn stream_max_bytes(nats: &ManagedNats) -> Option<u64> {
    nats_max_file_store(nats).map(|b| b / 4 * 3)
}

/// The events stream's settings (`NATS_STREAM_*`), the same for the two services that
/// create it. A managed NATS is known: replicas follow its size and limits its volume; for
/// an external one the services' defaults apply.
fn stream_env(spec: &ChatClusterSpec) -> Vec<Value> {
    let Some(nats) = spec.managed_nats() else {
        return Vec::new();
    };
    let mut env = vec![value_env(
        vars::NATS_STREAM_REPLICAS,
        stream_replicas(nats.replicas).to_string(),
    )];
    if let Some(max_bytes) = stream_max_bytes(&nats) {
        env.push(value_env(
            vars::NATS_STREAM_MAX_BYTES,
            max_bytes.to_string(),
        ));
    }
    env
}

fn restricted_container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn pod_security(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn pull_secrets(spec: &ChatClusterSpec) -> Value {
    spec.images
        .pull_secrets
        .iter()
        .map(|n| json!({"name": n}))
        .collect()
}

/// The pod spec shared by a component's Deployment and its migration Job.
fn service_pod_spec(cluster: &ChatCluster, c: Component, migrate: bool) -> Value {
    let spec = &cluster.spec;
    let mut container = json!({
        "name": c.name(),
        "image": c.image(spec),
        "imagePullPolicy": spec.images.pull_policy,
        "envFrom": [{"configMapRef": {"name": name(cluster, "config")}}],
        "env": env(cluster, c),
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    });
    if let Some(resources) = &c.spec(spec).resources {
        container["resources"] = json!(resources);
    }
    if migrate {
        container["args"] = json!(["migrate"]);
    } else {
        let grpc_probe = |period: i32, failures: i32| {
            json!({
                "grpc": {"port": GRPC_PORT},
                "periodSeconds": period,
                "failureThreshold": failures,
                "timeoutSeconds": 2,
            })
        };
        container["ports"] = json!([
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ]);
        container["startupProbe"] = grpc_probe(2, 60);
        container["readinessProbe"] = grpc_probe(5, 2);
        container["livenessProbe"] = grpc_probe(10, 3);
    }
    let mut pod = json!({
        "serviceAccountName": cluster.name_any(),
        "automountServiceAccountToken": false,
        "securityContext": pod_security(SERVICE_UID),
        "imagePullSecrets": pull_secrets(spec),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    });
    if migrate {
        pod["restartPolicy"] = json!("Never");
    } else {
        // Open streams get this long to drain after SIGTERM.
        pod["terminationGracePeriodSeconds"] = json!(30);
        pod["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(cluster, c.name())},
        }]);
    }
    pod
}

/// A service's Deployment. `config_hash` (and `secrets`, the digest of the Secret values
/// it reads) are put on the pod template so a ConfigMap or Secret change rolls the pods.
pub fn deployment(
    cluster: &ChatCluster,
    c: Component,
    config_hash: &str,
    secrets: Option<&str>,
    owner: &OwnerReference,
) -> Result<Deployment, RenderError> {
    let spec = &cluster.spec;
    let mut pod_labels = labels(cluster, c.name());
    pod_labels.insert("app.kubernetes.io/version".into(), spec.version.clone());
    let mut annotations = json!({
        "grpcchat.dev/config-hash": config_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": METRICS_PORT.to_string(),
        "prometheus.io/path": "/metrics",
    });
    if let Some(digest) = secrets {
        annotations[SECRETS_ANNOTATION] = json!(digest);
    }
    let mut deployment_spec = json!({
        "selector": {"matchLabels": selector_labels(cluster, c.name())},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": service_pod_spec(cluster, c, false),
        },
    });
    // Autoscaled: `replicas` is left out, so the operator does not own it and the HPA's
    // changes stand (see `controller::hand_over_replicas`).
    if c.autoscaling(spec).is_none() {
        deployment_spec["replicas"] = json!(c.replicas(spec));
    }
    typed(
        "Deployment",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(cluster, name(cluster, c.name()), c.name(), owner),
            "spec": deployment_spec,
        }),
    )
}

/// The HorizontalPodAutoscaler of an autoscaled component: CPU use relative to the pods'
/// request, within the spec's bounds. Named like the Deployment it scales.
pub fn hpa(
    cluster: &ChatCluster,
    c: Component,
    a: &crate::crd::AutoscalingSpec,
    owner: &OwnerReference,
) -> Result<HorizontalPodAutoscaler, RenderError> {
    typed(
        "HorizontalPodAutoscaler",
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(cluster, name(cluster, c.name()), c.name(), owner),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name(cluster, c.name()),
                },
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": a.target_cpu_utilization_percentage,
                        },
                    },
                }],
            },
        }),
    )
}

/// Annotation of a migration Job: the image it migrates for.
pub const IMAGE_ANNOTATION: &str = "grpcchat.dev/image";

/// A Job's pod template metadata: `labels`, and the digest of the Secret values its pod
/// reads when known (part of the Job's spec, hence of its name: a changed Secret makes a
/// new Job).
fn job_template_metadata(labels: BTreeMap<String, String>, secrets: Option<&str>) -> Value {
    let mut metadata = json!({"labels": labels});
    if let Some(digest) = secrets {
        metadata["annotations"] = json!({SECRETS_ANNOTATION: digest});
    }
    metadata
}

/// The Job that runs `<binary> migrate` (creates the database when missing and applies
/// its migrations) before the component's Deployment gets the new image.
///
/// A Job's pod template is immutable, so the Job is never changed once created: its name
/// ends with a digest of its whole spec, and a spec edit (resources, env, a Secret
/// reference) makes a new Job that replaces an unfinished one, instead of a refused patch
/// that would wedge the reconcile. `secrets` (the digest of the Secret values it reads)
/// is on its pod template too, so a fixed Secret retries a failed migration.
pub fn migration_job(
    cluster: &ChatCluster,
    c: Component,
    secrets: Option<&str>,
    owner: &OwnerReference,
) -> Result<Job, RenderError> {
    let component = format!("{}-migrate", c.name());
    let mut pod_labels = labels(cluster, &component);
    pod_labels.insert(
        "app.kubernetes.io/version".into(),
        cluster.spec.version.clone(),
    );
    let image = c.image(&cluster.spec);
    let template_metadata = job_template_metadata(pod_labels, secrets);
    let spec = json!({
        // Retries cover a database that is still starting.
        "backoffLimit": 10,
        "template": {
            "metadata": template_metadata,
            "spec": service_pod_spec(cluster, c, true),
        },
    });
    let digest = short_hash(&format!("{image}\n{spec}"));
    let mut metadata = metadata(
        cluster,
        name(cluster, &format!("{}-migrate-{digest}", c.name())),
        &component,
        owner,
    );
    metadata["annotations"] = json!({IMAGE_ANNOTATION: image});
    typed(
        "Job",
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": spec,
        }),
    )
}

/// The name of the component's migration Job for the current spec.
pub fn migration_job_name(cluster: &ChatCluster, c: Component) -> Result<String, RenderError> {
    let owner = owner_reference(cluster)?;
    Ok(migration_job(cluster, c, None, &owner)?.name_any())
}

/// The in-cluster Service of a component.
pub fn service(
    cluster: &ChatCluster,
    c: Component,
    owner: &OwnerReference,
) -> Result<Service, RenderError> {
    typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, name(cluster, c.name()), c.name(), owner),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(cluster, c.name()),
                "ports": [
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                     "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics",
                     "protocol": "TCP"},
                ],
            },
        }),
    )
}

/// At most one pod of a workload is evicted at a time.
pub fn pdb(
    cluster: &ChatCluster,
    component: &str,
    owner: &OwnerReference,
) -> Result<PodDisruptionBudget, RenderError> {
    typed(
        "PodDisruptionBudget",
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(cluster, name(cluster, component), component, owner),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(cluster, component)},
            },
        }),
    )
}

/// `app.kubernetes.io/component` values of the four services' pods; with `migrations`,
/// also of their migration Jobs' pods.
fn service_components(migrations: bool) -> Vec<String> {
    let mut names: Vec<String> = Component::ALL
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    if migrations {
        names.extend(
            Component::ALL
                .iter()
                .map(|c| format!("{}-migrate", c.name())),
        );
    }
    names
}

/// A peer: this cluster's pods whose component is one of `components`.
fn pods_of(cluster: &ChatCluster, components: &[String]) -> Value {
    json!({"podSelector": {
        "matchLabels": {"app.kubernetes.io/instance": cluster.name_any()},
        "matchExpressions": [{
            "key": "app.kubernetes.io/component",
            "operator": "In",
            "values": components,
        }],
    }})
}

/// An ingress rule for `ports` from `from`; with no peers, from any source.
fn allow(ports: &[i32], from: Vec<Value>) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"protocol": "TCP", "port": p}))
        .collect();
    let mut rule = json!({"ports": ports});
    if !from.is_empty() {
        rule["from"] = json!(from);
    }
    rule
}

/// The spec's peers as they go into a rule.
fn peers(spec_peers: &[k8s_openapi::api::networking::v1::NetworkPolicyPeer]) -> Vec<Value> {
    spec_peers
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

/// The NetworkPolicy `suffix`: ingress to `pods` only as `rules` allow.
fn network_policy(
    cluster: &ChatCluster,
    owner: &OwnerReference,
    suffix: &str,
    pods: Value,
    rules: Vec<Value>,
) -> Result<NetworkPolicy, RenderError> {
    typed(
        "NetworkPolicy",
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(cluster, name(cluster, suffix), "network-policy", owner),
            "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": rules},
        }),
    )
}

/// The NetworkPolicies of `spec.networkPolicy` (ingress only: what may reach each
/// workload). Policies add up, so each one names one group of pods and who may reach them:
/// - the services: gRPC from each other, metrics from `metricsFrom`;
/// - the public services (auth, chat, saga): gRPC from `entryPointFrom`;
/// - a managed PostgreSQL: port 5432 from the services and their migrations only;
/// - a managed NATS: clients (4222) from chat and notification only, routes (6222) from
///   its own pods, monitoring (8222) from `metricsFrom`.
///
/// NATS has no authentication and PostgreSQL one shared password: without these, any
/// pod of any namespace could read every chat event or the databases.
pub fn network_policies(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Vec<NetworkPolicy>, RenderError> {
    let Some(np) = &cluster.spec.network_policy else {
        return Ok(Vec::new());
    };
    let metrics_from = peers(&np.metrics_from);
    let selector = |components: &[String]| pods_of(cluster, components)["podSelector"].clone();
    let policy = |suffix: &str, pods: Value, rules: Vec<Value>| {
        network_policy(cluster, owner, suffix, pods, rules)
    };
    let services = service_components(false);
    let public: Vec<String> = Component::ALL
        .iter()
        .filter(|c| c.public_grpc_service().is_some())
        .map(|c| c.name().to_string())
        .collect();
    let mut out = vec![
        policy(
            "services",
            selector(&services),
            vec![
                allow(&[GRPC_PORT], vec![pods_of(cluster, &services)]),
                allow(&[METRICS_PORT], metrics_from.clone()),
            ],
        )?,
        policy(
            "public",
            selector(&public),
            vec![allow(&[GRPC_PORT], peers(&np.entry_point_from))],
        )?,
    ];
    if cluster.spec.managed_postgres().is_some() {
        out.push(policy(
            "postgres",
            selector(&["postgres".to_string()]),
            vec![allow(&[5432], {
                let mut sources = service_components(true);
                sources.push(POSTGRES_ROLES.to_string());
                vec![pods_of(cluster, &sources)]
            })],
        )?);
    }
    if cluster.spec.managed_nats().is_some() {
        let nats = ["nats".to_string()];
        out.push(policy(
            "nats",
            selector(&nats),
            vec![
                allow(
                    &[4222],
                    vec![pods_of(
                        cluster,
                        &[
                            Component::Chat.name().into(),
                            Component::Notification.name().into(),
                        ],
                    )],
                ),
                allow(&[6222], vec![pods_of(cluster, &nats)]),
                allow(&[8222], metrics_from),
            ],
        )?);
    }
    Ok(out)
}

/// The Prometheus Operator's PodMonitor kind (`monitoring.coreos.com/v1`).
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PodMonitor",
    ))
}

/// Name of the PodMonitor of the services.
pub fn pod_monitor_name(cluster: &ChatCluster) -> String {
    name(cluster, "services")
}

/// The PodMonitor that has the Prometheus Operator scrape the four services' `metrics`
/// port, when `spec.monitoring.podMonitor` is set. A PodMonitor rather than a
/// ServiceMonitor: every pod is a target whether or not it is Ready, so a pod that fails
/// its readiness probe still reports why. Other projects' kind, so kept untyped.
pub fn pod_monitor(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Option<Plain>, RenderError> {
    let Some(monitoring) = cluster.spec.monitoring.as_ref().filter(|m| m.pod_monitor) else {
        return Ok(None);
    };
    let mut meta = metadata(cluster, pod_monitor_name(cluster), "monitoring", owner);
    for (k, v) in &monitoring.labels {
        // The operator's own labels win: they select what it prunes.
        if meta["labels"].get(k).is_none() {
            meta["labels"][k] = json!(v);
        }
    }
    let components: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
    let value = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "grpc-chat",
                    "app.kubernetes.io/instance": cluster.name_any(),
                },
                "matchExpressions": [{
                    "key": "app.kubernetes.io/component",
                    "operator": "In",
                    "values": components,
                }],
            },
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics"}],
        },
    });
    Ok(Some(Plain {
        resource: pod_monitor_resource(),
        object: typed("PodMonitor", value)?,
    }))
}

/// `app.kubernetes.io/component` of the entry point's objects (Gateway, GRPCRoutes,
/// `LoadBalancer` Services, Ingress): what the reconcile selects to prune them.
pub const ENTRY_POINT: &str = "entry-point";

/// The Gateway API's `Gateway` kind (`gateway.networking.k8s.io/v1`).
pub fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
    ))
}

/// The Gateway API's `GRPCRoute` kind (`gateway.networking.k8s.io/v1`).
pub fn grpc_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
    ))
}

/// Name of the rendered Gateway's only listener, which the routes attach to.
pub const GATEWAY_LISTENER: &str = "grpc";

/// The `Gateway` `<name>` the operator runs itself (`spec.gateway.gatewayClassName`): one
/// listener for `host`, HTTPS on 443 with `tlsSecretName`, else HTTP on 80 (which
/// Gateway API implementations serve to GRPCRoutes as cleartext HTTP/2). It accepts
/// GRPCRoutes of its own namespace only. Other projects' kind, so kept untyped.
pub fn gateway(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Option<Plain>, RenderError> {
    let Some(spec) = &cluster.spec.gateway else {
        return Ok(None);
    };
    let Some(class) = &spec.gateway_class_name else {
        return Ok(None);
    };
    let mut listener = json!({
        "name": GATEWAY_LISTENER,
        "hostname": spec.host,
        "protocol": "HTTP",
        "port": 80,
        "allowedRoutes": {
            "namespaces": {"from": "Same"},
            "kinds": [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}],
        },
    });
    if let Some(tls) = &spec.tls_secret_name {
        listener["protocol"] = json!("HTTPS");
        listener["port"] = json!(443);
        listener["tls"] = json!({
            "mode": "Terminate",
            "certificateRefs": [{"group": "", "kind": "Secret", "name": tls}],
        });
    }
    let mut meta = metadata(cluster, cluster.name_any(), ENTRY_POINT, owner);
    if !spec.annotations.is_empty() {
        meta["annotations"] = json!(spec.annotations);
    }
    let value = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": meta,
        "spec": {"gatewayClassName": class, "listeners": [listener]},
    });
    Ok(Some(Plain {
        resource: gateway_resource(),
        object: typed("Gateway", value)?,
    }))
}

/// One `GRPCRoute` `<name>-<component>` per public service, with `spec.gateway`: requests
/// for `host` whose gRPC service is the component's go to its Service's `grpc` port
/// (which declares `appProtocol: kubernetes.io/h2c`, so the gateway speaks cleartext
/// HTTP/2 to the pods). One route per service rather than one with three rules: each
/// reports its own acceptance in its status, and a conflict on one leaves the others up.
pub fn grpc_routes(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Vec<Plain>, RenderError> {
    let Some(spec) = &cluster.spec.gateway else {
        return Ok(Vec::new());
    };
    let parent = match &spec.parent_ref {
        Some(p) => {
            let mut parent = json!({
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": p.name,
            });
            if let Some(ns) = &p.namespace {
                parent["namespace"] = json!(ns);
            }
            if let Some(section) = &p.section_name {
                parent["sectionName"] = json!(section);
            }
            if let Some(port) = p.port {
                parent["port"] = json!(port);
            }
            parent
        }
        None => json!({
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": cluster.name_any(),
            "sectionName": GATEWAY_LISTENER,
        }),
    };
    Component::ALL
        .into_iter()
        .filter_map(|c| c.public_grpc_service().map(|svc| (c, svc)))
        .map(|(c, svc)| {
            let value = json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GRPCRoute",
                "metadata": metadata(cluster, name(cluster, c.name()), ENTRY_POINT, owner),
                "spec": {
                    "parentRefs": [parent],
                    "hostnames": [spec.host],
                    "rules": [{
                        "matches": [{"method": {"type": "Exact", "service": svc}}],
                        "backendRefs": [{
                            "group": "",
                            "kind": "Service",
                            "name": name(cluster, c.name()),
                            "port": GRPC_PORT,
                        }],
                    }],
                },
            });
            Ok(Plain {
                resource: grpc_route_resource(),
                object: typed("GRPCRoute", value)?,
            })
        })
        .collect()
}

/// Name of the `LoadBalancer` Service of a public component.
pub fn load_balancer_name(cluster: &ChatCluster, c: Component) -> String {
    name(cluster, &format!("{}-public", c.name()))
}

/// One `LoadBalancer` Service `<name>-<component>-public` per public service, with
/// `spec.loadBalancer`. A layer-4 load balancer sees no gRPC service name, so one address
/// cannot serve three Deployments: each public service gets its own, and the CLI is given
/// the three (`--server`, `--auth-server`, `--saga-server`; `status.endpoints`).
/// `externalTrafficPolicy: Local` keeps the client's address (with `Cluster`, nodes
/// forward with their own), which auth's per-address rate limits count by; the load
/// balancer then sends only to nodes that run a pod, by the Service's health-check port.
pub fn load_balancers(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Vec<Service>, RenderError> {
    let Some(spec) = &cluster.spec.load_balancer else {
        return Ok(Vec::new());
    };
    Component::ALL
        .into_iter()
        .filter(|c| c.public_grpc_service().is_some())
        .map(|c| {
            let mut meta = metadata(cluster, load_balancer_name(cluster, c), ENTRY_POINT, owner);
            if !spec.annotations.is_empty() {
                meta["annotations"] = json!(spec.annotations);
            }
            let mut svc_spec = json!({
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "selector": selector_labels(cluster, c.name()),
                "ports": [{"name": "grpc", "port": spec.port, "targetPort": "grpc",
                           "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}],
            });
            if let Some(class) = &spec.class_name {
                svc_spec["loadBalancerClass"] = json!(class);
            }
            if !spec.source_ranges.is_empty() {
                svc_spec["loadBalancerSourceRanges"] = json!(spec.source_ranges);
            }
            typed(
                "Service",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": svc_spec}),
            )
        })
        .collect()
}

/// Where each public service is reached through its `LoadBalancer` Service, from the
/// Services as the API server has them (`status.loadBalancer.ingress`, which the cloud's
/// controller fills in): `(auth, chat, saga)` names to `host:port`, only those that have an
/// address yet.
pub fn load_balancer_endpoints(services: &[(Component, Service)]) -> BTreeMap<String, String> {
    services
        .iter()
        .filter_map(|(c, svc)| {
            let ingress = svc
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = ingress
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .or_else(|| ingress.ip.clone().filter(|ip| !ip.is_empty()))?;
            let port = svc.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port)?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Some((c.name().to_string(), format!("{host}:{port}")))
        })
        .collect()
}

/// The Ingress routing each public gRPC service by its path prefix to its Service
/// (ingress-nginx's gRPC annotations; TLS only).
pub fn ingress(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Option<Ingress>, RenderError> {
    let Some(spec) = &cluster.spec.ingress else {
        return Ok(None);
    };
    let mut annotations = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/backend-protocol".to_string(),
            "GRPC".to_string(),
        ),
        // `Connect` streams stay open for as long as a client watches a chat.
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(),
            "3600".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_string(),
            "3600".to_string(),
        ),
    ]);
    annotations.extend(spec.annotations.clone());
    let paths: Vec<Value> = Component::ALL
        .into_iter()
        .filter_map(|c| {
            c.public_grpc_service().map(|svc| {
                json!({
                    "path": format!("/{svc}"),
                    "pathType": "Prefix",
                    "backend": {"service": {
                        "name": name(cluster, c.name()),
                        "port": {"name": "grpc"},
                    }},
                })
            })
        })
        .collect();
    let mut metadata = metadata(cluster, cluster.name_any(), ENTRY_POINT, owner);
    metadata["annotations"] = json!(annotations);
    let mut ingress_spec = json!({
        "rules": [{"host": spec.host, "http": {"paths": paths}}],
    });
    if let Some(class) = &spec.class_name {
        ingress_spec["ingressClassName"] = json!(class);
    }
    if let Some(tls) = &spec.tls_secret_name {
        ingress_spec["tls"] = json!([{"hosts": [spec.host], "secretName": tls}]);
    }
    typed(
        "Ingress",
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": metadata,
            "spec": ingress_spec,
        }),
    )
    .map(Some)
}

/// Where clients connect, when that follows from the spec (gateway, ingress): the host
/// name, which TLS and the routes' `hostnames` need (an address would match neither), and
/// the listener's port. A `LoadBalancer`'s addresses are only known once assigned
/// ([`load_balancer_endpoints`]).
pub fn endpoint(spec: &ChatClusterSpec) -> Option<String> {
    if let Some(g) = &spec.gateway {
        let port = match &g.parent_ref {
            Some(p) => p.port.unwrap_or(443),
            None if g.tls_secret_name.is_some() => 443,
            None => 80,
        };
        return Some(format!("{}:{port}", g.host));
    }
    spec.ingress.as_ref().map(|i| {
        let port = if i.tls_secret_name.is_some() { 443 } else { 80 };
        format!("{}:{port}", i.host)
    })
}

fn volume_claim(storage: &str, class: &Option<String>) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage}},
    });
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    json!({"metadata": {"name": "data"}, "spec": spec})
}

/// The managed PostgreSQL's headless Service (the StatefulSet's governing Service).
pub fn postgres_service(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Service, RenderError> {
    typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, name(cluster, "postgres"), "postgres", owner),
            "spec": {
                "clusterIP": "None",
                "selector": selector_labels(cluster, "postgres"),
                "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres", "protocol": "TCP"}],
            },
        }),
    )
}

/// A single PostgreSQL instance with a persistent volume. The roles Job
/// ([`postgres_roles_job`]) creates the services' roles and databases in it, so it needs
/// no init scripts (which would run only on an empty volume).
pub fn postgres_stateful_set(
    cluster: &ChatCluster,
    pg: &ManagedPostgres,
    owner: &OwnerReference,
) -> Result<StatefulSet, RenderError> {
    let ready =
        json!({"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", POSTGRES_USER]}});
    let mut readiness = ready.clone();
    readiness["periodSeconds"] = json!(5);
    let mut liveness = ready;
    liveness["periodSeconds"] = json!(15);
    liveness["failureThreshold"] = json!(6);
    let mut container = json!({
        "name": "postgres",
        "image": pg.image,
        // The image's entrypoint runs what follows; see `postgres_max_connections`.
        "args": [
            "postgres",
            "-c",
            format!("max_connections={}", postgres_max_connections(&cluster.spec)),
        ],
        "env": [
            value_env("POSTGRES_USER", POSTGRES_USER),
            secret_env("POSTGRES_PASSWORD", &name(cluster, "generated"), keys::POSTGRES_PASSWORD, false),
            value_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ],
        "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if let Some(r) = &pg.resources {
        container["resources"] = json!(r);
    }
    typed(
        "StatefulSet",
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata(cluster, name(cluster, "postgres"), "postgres", owner),
            "spec": {
                "replicas": 1,
                "serviceName": name(cluster, "postgres"),
                "selector": {"matchLabels": selector_labels(cluster, "postgres")},
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": pg.volume_policy.as_str(),
                    "whenScaled": "Retain",
                },
                "template": {
                    "metadata": {"labels": labels(cluster, "postgres")},
                    "spec": {
                        "automountServiceAccountToken": false,
                        // uid 70 is `postgres` in the alpine image.
                        "securityContext": pod_security(70),
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                        "volumes": [
                            {"name": "run", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
                "volumeClaimTemplates": [volume_claim(&pg.storage, &pg.storage_class_name)],
            },
        }),
    )
}

/// `app.kubernetes.io/component` of the single-pod PostgreSQL's roles Job.
pub const POSTGRES_ROLES: &str = "postgres-roles";

/// The psql script of [`postgres_roles_job`]. Each statement is idempotent, so the Job
/// can run any number of times: on a new server, on one created by an older operator
/// (whose databases and tables the shared superuser owns), and after a password rotation.
fn postgres_roles_sql() -> String {
    let mut sql = String::from("\\set ON_ERROR_STOP on\n");
    for c in Component::ALL {
        let (role, db) = (c.role(), c.database());
        sql.push_str(&format!(
            "SELECT 'CREATE ROLE {role}' WHERE NOT EXISTS \
             (SELECT FROM pg_roles WHERE rolname = '{role}') \\gexec\n\
             ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
             PASSWORD :'{role}';\n\
             SELECT 'CREATE DATABASE {db} OWNER {role}' WHERE NOT EXISTS \
             (SELECT FROM pg_database WHERE datname = '{db}') \\gexec\n\
             ALTER DATABASE {db} OWNER TO {role};\n\
             REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n\
             \\connect {db}\n\
             ALTER SCHEMA public OWNER TO {role};\n\
             SELECT format('ALTER TABLE %I.%I OWNER TO {role}', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
             AND c.relowner <> '{role}'::regrole \\gexec\n\
             SELECT format('ALTER SEQUENCE %I.%I OWNER TO {role}', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'S' \
             AND c.relowner <> '{role}'::regrole AND NOT EXISTS (SELECT FROM pg_depend d \
             WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')) \\gexec\n\
             SELECT format('ALTER ROUTINE %s OWNER TO {role}', p.oid::regprocedure) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public' AND p.proowner <> '{role}'::regrole \\gexec\n\
             SELECT format('ALTER TYPE %I.%I OWNER TO {role}', n.nspname, t.typname) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') \
             AND t.typowner <> '{role}'::regrole \\gexec\n\
             \\connect postgres\n"
        ));
    }
    sql
}

/// The Job that gives each service its own PostgreSQL role in the single-pod PostgreSQL:
/// creates the role and its database when missing, sets the role's password from its
/// Secret, and makes it the owner of its database and everything in it. It runs `psql`
/// from the PostgreSQL image as the superuser, the only place the superuser password is
/// read besides the server itself, before any migration: the migrations and Deployments
/// wait for it (see the controller). Like a migration Job, its name ends with a digest of
/// its spec (and `secrets`, the digest of the passwords), so a changed password reruns it.
pub fn postgres_roles_job(
    cluster: &ChatCluster,
    pg: &ManagedPostgres,
    secrets: Option<&str>,
    owner: &OwnerReference,
) -> Result<Job, RenderError> {
    let generated = name(cluster, "generated");
    let mut env = vec![
        value_env("PGHOST", name(cluster, "postgres")),
        value_env("PGUSER", POSTGRES_USER),
        value_env("PGDATABASE", "postgres"),
        secret_env("PGPASSWORD", &generated, keys::POSTGRES_PASSWORD, false),
    ];
    let mut args = String::from("exec psql -X -q");
    for c in Component::ALL {
        let var = format!("{}_PASSWORD", c.role().to_uppercase());
        env.push(secret_env(
            &var,
            &role_secret_name(cluster, c),
            "password",
            false,
        ));
        args.push_str(&format!(" -v \"{}=${var}\"", c.role()));
    }
    args.push_str(" <<'SQL'\n");
    args.push_str(&postgres_roles_sql());
    args.push_str("SQL\n");
    let mut container = json!({
        "name": "roles",
        "image": pg.image,
        "command": ["/bin/sh", "-c", args],
        "env": env,
        "securityContext": restricted_container_security(),
    });
    if let Some(r) = &pg.resources {
        container["resources"] = json!(r);
    }
    let template_metadata = job_template_metadata(labels(cluster, POSTGRES_ROLES), secrets);
    let spec = json!({
        // Retries cover a server that is still starting.
        "backoffLimit": 20,
        "template": {
            "metadata": template_metadata,
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": pod_security(70),
                "containers": [container],
            },
        },
    });
    let digest = short_hash(&spec.to_string());
    let job_name = name(cluster, &format!("{POSTGRES_ROLES}-{digest}"));
    let mut metadata = metadata(cluster, job_name.clone(), POSTGRES_ROLES, owner);
    // What the controller's "done" check compares (see `controller::migrate`).
    metadata["annotations"] = json!({IMAGE_ANNOTATION: job_name});
    typed(
        "Job",
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": spec,
        }),
    )
}

/// The managed NATS user of a component that uses NATS, and the generated Secret key of
/// its password; `None` for the components that do not use NATS.
pub fn nats_user(c: Component) -> Option<(&'static str, &'static str)> {
    match c {
        Component::Chat => Some(("NATS_CHAT_PASSWORD", keys::NATS_CHAT_PASSWORD)),
        Component::Notification => Some((
            "NATS_NOTIFICATION_PASSWORD",
            keys::NATS_NOTIFICATION_PASSWORD,
        )),
        Component::Auth | Component::Saga => None,
    }
}

/// The `authorization` block of the managed NATS: a user per client, allowed only the
/// subjects it uses. chat-service publishes and subscribes the events (`chat.>`) and the
/// typing and presence events that are never stored (`chat_live.>`, outside the stream),
/// and creates or updates the events stream (`$JS.API.>`); notification-service only reads
/// the stream through its durable consumer (`$JS.API.>` for the consumer and its pulls,
/// `$JS.ACK.>` for acknowledgements). Both get replies on `_INBOX.>`. The passwords are
/// not in the file: nats-server reads `$NATS_*_PASSWORD` from its environment, which
/// comes from the generated Secret, so the ConfigMap holds no secret.
fn nats_authorization() -> String {
    let user = |c: Component, publish: &[&str], subscribe: &[&str]| {
        let (var, _) = nats_user(c).unwrap_or(("", ""));
        let list = |s: &[&str]| {
            s.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "    {{user: {}, password: ${var}, permissions: {{\n      \
             publish: {{allow: [{}]}},\n      subscribe: {{allow: [{}]}}\n    }}}}\n",
            c.name(),
            list(publish),
            list(subscribe),
        )
    };
    format!(
        "authorization {{\n  users: [\n{}{}  ]\n}}\n",
        user(
            Component::Chat,
            &["chat.>", "chat_live.>", "$JS.API.>"],
            &["chat.>", "chat_live.>", "_INBOX.>"]
        ),
        user(
            Component::Notification,
            &["$JS.API.>", "$JS.ACK.>"],
            &["_INBOX.>"]
        ),
    )
}

/// Where a NATS server writes its pid, for the preStop hook's lame-duck signal.
const NATS_PID_FILE: &str = "/var/run/nats/nats.pid";

/// `nats.conf`: JetStream on a volume it may fill to [`nats_max_file_store`], and a cluster
/// with static routes to every StatefulSet pod when there is more than one. A server
/// stopped by Kubernetes first enters lame-duck mode (the preStop hook signals it through
/// the pid file): it stops accepting clients and hands its streams' leadership over during
/// `lame_duck_duration`, instead of vanishing under them.
pub fn nats_config(cluster: &ChatCluster, nats: &ManagedNats) -> String {
    let max_file_store = nats_max_file_store(nats)
        .map(|b| format!("  max_file_store: {b}\n"))
        .unwrap_or_default();
    let mut conf = format!(
        "server_name: $POD_NAME\nlisten: 0.0.0.0:4222\nhttp: 0.0.0.0:8222\n\
         pid_file: {NATS_PID_FILE}\nlame_duck_duration: 30s\nlame_duck_grace_period: 10s\n\
         jetstream {{\n  store_dir: /data\n{max_file_store}}}\n{}",
        nats_authorization(),
    );
    if nats.replicas > 1 {
        let headless = name(cluster, "nats-headless");
        let sts = name(cluster, "nats");
        let routes: Vec<String> = (0..nats.replicas)
            .map(|i| format!("    nats://{sts}-{i}.{headless}:6222"))
            .collect();
        conf.push_str(&format!(
            "cluster {{\n  name: {}\n  listen: 0.0.0.0:6222\n  routes: [\n{}\n  ]\n}}\n",
            cluster.name_any(),
            routes.join("\n")
        ));
    }
    conf
}

/// The ConfigMap holding the managed NATS's `nats.conf` ([`nats_config`]).
pub fn nats_config_map(
    cluster: &ChatCluster,
    nats: &ManagedNats,
    owner: &OwnerReference,
) -> Result<ConfigMap, RenderError> {
    typed(
        "ConfigMap",
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(cluster, name(cluster, "nats"), "nats", owner),
            "data": {"nats.conf": nats_config(cluster, nats)},
        }),
    )
}

/// NATS's client Service and the headless Service its pods find each other through.
pub fn nats_services(
    cluster: &ChatCluster,
    owner: &OwnerReference,
) -> Result<Vec<Service>, RenderError> {
    let client = typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, name(cluster, "nats"), "nats", owner),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(cluster, "nats"),
                "ports": [
                    {"name": "client", "port": 4222, "targetPort": "client", "protocol": "TCP"},
                    {"name": "monitor", "port": 8222, "targetPort": "monitor", "protocol": "TCP"},
                ],
            },
        }),
    )?;
    let headless = typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, name(cluster, "nats-headless"), "nats", owner),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": selector_labels(cluster, "nats"),
                "ports": [
                    {"name": "client", "port": 4222, "targetPort": "client", "protocol": "TCP"},
                    {"name": "cluster", "port": 6222, "targetPort": "cluster", "protocol": "TCP"},
                    {"name": "monitor", "port": 8222, "targetPort": "monitor", "protocol": "TCP"},
                ],
            },
        }),
    )?;
    Ok(vec![client, headless])
}

/// The managed NATS cluster: `nats.replicas` pods with a JetStream volume each.
/// `secrets` is the digest of the NATS users' passwords (`Inputs::nats_digest`), put on
/// the pod template so that a changed password restarts the servers.
pub fn nats_stateful_set(
    cluster: &ChatCluster,
    nats: &ManagedNats,
    secrets: Option<&str>,
    owner: &OwnerReference,
) -> Result<StatefulSet, RenderError> {
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "monitor"},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut container = json!({
        "name": "nats",
        "image": nats.image,
        "args": ["--config", "/etc/nats/nats.conf"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            secret_env("NATS_CHAT_PASSWORD", &name(cluster, "generated"), keys::NATS_CHAT_PASSWORD, false),
            secret_env("NATS_NOTIFICATION_PASSWORD", &name(cluster, "generated"), keys::NATS_NOTIFICATION_PASSWORD, false),
        ],
        "ports": [
            {"name": "client", "containerPort": 4222, "protocol": "TCP"},
            {"name": "cluster", "containerPort": 6222, "protocol": "TCP"},
            {"name": "monitor", "containerPort": 8222, "protocol": "TCP"},
        ],
        "startupProbe": probe("/healthz", 2, 90),
        "readinessProbe": probe("/healthz?js-enabled-only=true", 5, 3),
        "livenessProbe": probe("/healthz?js-enabled-only=true", 15, 3),
        // Lame duck: clients are moved off and leadership handed over before SIGTERM.
        // `--signal` returns at once, so the hook waits out the lame-duck period itself.
        "lifecycle": {"preStop": {"exec": {"command": [
            "/bin/sh", "-c",
            format!("nats-server --signal ldm={NATS_PID_FILE} && sleep 40"),
        ]}}},
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": "/etc/nats"},
            {"name": "run", "mountPath": "/var/run/nats"},
        ],
    });
    if let Some(r) = &nats.resources {
        container["resources"] = json!(r);
    }
    let config_hash = short_hash(&nats_config(cluster, nats));
    let mut annotations = json!({"grpcchat.dev/config-hash": config_hash});
    if let Some(digest) = secrets {
        annotations[SECRETS_ANNOTATION] = json!(digest);
    }
    typed(
        "StatefulSet",
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata(cluster, name(cluster, "nats"), "nats", owner),
            "spec": {
                "replicas": nats.replicas,
                "serviceName": name(cluster, "nats-headless"),
                // All members must start together to form the cluster.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector_labels(cluster, "nats")},
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": nats.volume_policy.as_str(),
                    "whenScaled": "Retain",
                },
                "template": nats_pod_template(cluster, container, annotations),
                "volumeClaimTemplates": [volume_claim(&nats.storage, &nats.storage_class_name)],
            },
        }),
    )
}

/// The NATS pods: `container` with its configuration and lame-duck pid file mounted,
/// spread over the nodes so that losing one keeps a JetStream majority.
fn nats_pod_template(cluster: &ChatCluster, container: Value, annotations: Value) -> Value {
    json!({
        "metadata": {
            "labels": labels(cluster, "nats"),
            "annotations": annotations,
        },
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": pod_security(1000),
            "terminationGracePeriodSeconds": 60,
            "containers": [container],
            "volumes": [
                {"name": "config", "configMap": {"name": name(cluster, "nats")}},
                {"name": "run", "emptyDir": {}},
            ],
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(cluster, "nats")},
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: Value) -> ChatCluster {
        let mut c: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "grpcchat.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap();
        c.metadata.namespace = Some("chat".into());
        c
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, Value> {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), serde_json::to_value(&e).unwrap()))
            .collect()
    }

    fn first_container(
        template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    ) -> &k8s_openapi::api::core::v1::Container {
        &template.spec.as_ref().unwrap().containers[0]
    }

    fn deployment_of(d: &Desired, c: Component) -> &Deployment {
        &d.deployments.iter().find(|(x, _)| *x == c).unwrap().1
    }

    #[test]
    fn every_object_is_owned_labelled_and_namespaced() {
        let c = cluster(json!({"version": "1.0.0",
            "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls"}}));
        let d = desired(&c).unwrap();
        let secret = generated_secret(&c, &owner_reference(&c).unwrap(), &BTreeMap::new()).unwrap();
        let values = d.to_values(&secret);
        // ... + the PostgreSQL roles Job + ...
        assert_eq!(values.len(), 1 + 1 + 2 + 7 + 2 + 1 + 4 + 4 + 5 + 1);
        for v in values {
            let m = &v["metadata"];
            if v["kind"] == "Secret" {
                // Kept with the retained database volume (see the test below).
                assert!(m.get("ownerReferences").is_none());
                continue;
            }
            assert_eq!(m["namespace"], "chat", "{v}");
            assert_eq!(m["ownerReferences"][0]["uid"], "u-1");
            assert_eq!(m["ownerReferences"][0]["kind"], "ChatCluster");
            assert_eq!(m["ownerReferences"][0]["controller"], true);
            assert_eq!(m["labels"]["app.kubernetes.io/managed-by"], "chat-operator");
        }
    }

    #[test]
    fn the_pod_monitor_scrapes_the_metrics_port_of_the_four_services_only() {
        let c = cluster(json!({"version": "1.0.0"}));
        assert!(desired(&c).unwrap().pod_monitor.is_none());
        let c = cluster(json!({"version": "1.0.0", "nats": {"managed": {}},
                               "monitoring": {"podMonitor": true,
                                              "labels": {"release": "prometheus",
                                                         "app.kubernetes.io/managed-by": "x"}}}));
        let d = desired(&c).unwrap();
        let plain = d.pod_monitor.clone().expect("a PodMonitor");
        assert_eq!(plain.resource.plural, "podmonitors");
        assert_eq!(plain.resource.api_version, "monitoring.coreos.com/v1");
        let m = serde_json::to_value(&plain.object).unwrap();
        assert_eq!(m["metadata"]["name"], "demo-services");
        assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
        assert_eq!(
            m["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "chat-operator"
        );
        assert!(d
            .independent()
            .unwrap()
            .iter()
            .any(|p| p.describe() == "PodMonitor demo-services"));
        let selector = &m["spec"]["selector"];
        let selects = |labels: &BTreeMap<String, String>| {
            selector["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
                && selector["matchExpressions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| {
                        let values = e["values"].as_array().unwrap();
                        labels
                            .get(e["key"].as_str().unwrap())
                            .is_some_and(|l| values.iter().any(|v| v == l))
                    })
        };
        let port = m["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap();
        for (comp, dep) in &d.deployments {
            let template = &dep.spec.as_ref().unwrap().template;
            let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
            assert!(selects(&labels), "{comp:?} is not selected");
            let ports = template.spec.as_ref().unwrap().containers[0]
                .ports
                .clone()
                .unwrap();
            assert!(
                ports.iter().any(|p| p.name.as_deref() == Some(port)),
                "{comp:?}"
            );
        }
        // NATS has its own metrics; its pods are not the services'.
        for sts in &d.stateful_sets {
            let template = &sts.spec.as_ref().unwrap().template;
            let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
            assert!(!selects(&labels), "{} is selected", sts.name_any());
        }
    }

    #[test]
    fn selectors_match_pod_labels_and_services_select_deployments() {
        let c = cluster(json!({"version": "1.0.0"}));
        let d = desired(&c).unwrap();
        for (comp, dep) in &d.deployments {
            let spec = dep.spec.as_ref().unwrap();
            let selector = spec.selector.match_labels.clone().unwrap();
            let pod_labels = spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap();
            for (k, v) in &selector {
                assert_eq!(pod_labels.get(k), Some(v), "{comp:?} {k}");
            }
            let svc = d
                .services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&name(&c, comp.name())))
                .unwrap();
            assert_eq!(
                svc.spec.as_ref().unwrap().selector.as_ref(),
                Some(&selector)
            );
            let pdb = d
                .pdbs
                .iter()
                .find(|p| p.metadata.name == dep.metadata.name)
                .unwrap();
            assert_eq!(
                pdb.spec
                    .as_ref()
                    .unwrap()
                    .selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref(),
                Some(&selector)
            );
        }
        // Migration pods must not count as service pods.
        for (comp, job) in &d.migrations {
            let labels = job
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap();
            assert_eq!(
                labels["app.kubernetes.io/component"],
                format!("{}-migrate", comp.name())
            );
        }
    }

    #[test]
    fn services_are_probed_over_grpc_health_and_run_locked_down() {
        let c = cluster(json!({"version": "1.0.0"}));
        let d = desired(&c).unwrap();
        for (_, dep) in &d.deployments {
            let v = serde_json::to_value(dep).unwrap();
            let pod = &v["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(container[probe]["grpc"]["port"], GRPC_PORT);
            }
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(pod["automountServiceAccountToken"], false);
        }
    }

    #[test]
    fn env_wires_services_to_each_other_and_references_secrets() {
        let c = cluster(json!({"version": "1.0.0", "smtp": {"secretName": "mail"}}));
        let d = desired(&c).unwrap();
        let saga = env_of(deployment_of(&d, Component::Saga));
        assert_eq!(saga["AUTH_URL"]["value"], "http://demo-auth:50051");
        assert_eq!(saga["CHAT_URL"]["value"], "http://demo-chat:50051");
        assert_eq!(
            saga["NOTIFICATION_URL"]["value"],
            "http://demo-notification:50051"
        );
        // Each service logs in as its own role, not as the server's superuser.
        assert_eq!(
            saga["DATABASE_URL"]["value"],
            "postgres://saga_service:$(POSTGRES_PASSWORD)@demo-postgres:5432/saga"
        );
        assert_eq!(
            saga["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"],
            json!({"name": "demo-postgres-saga", "key": "password", "optional": false})
        );
        assert!(!saga.contains_key("POSTGRES_URL"));

        // chat and notification log in to NATS as their own users.
        let chat = env_of(deployment_of(&d, Component::Chat));
        assert_eq!(
            chat["NATS_URL"]["value"],
            "nats://chat:$(NATS_PASSWORD)@demo-nats:4222"
        );
        assert_eq!(
            chat["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"],
            json!({"name": "demo-generated", "key": "nats-chat-password", "optional": false})
        );
        let note = env_of(deployment_of(&d, Component::Notification));
        assert_eq!(
            note["NATS_URL"]["value"],
            "nats://notification:$(NATS_PASSWORD)@demo-nats:4222"
        );
        assert_eq!(
            note["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"],
            "nats-notification-password"
        );
        assert!(
            !saga.contains_key("NATS_PASSWORD"),
            "saga does not use NATS"
        );
        assert_eq!(
            chat["DATABASE_URL"]["value"],
            "postgres://chat_service:$(POSTGRES_PASSWORD)@demo-postgres:5432/chat"
        );

        let auth = env_of(deployment_of(&d, Component::Auth));
        assert_eq!(
            auth["DATABASE_URL"]["value"],
            "postgres://auth_service:$(POSTGRES_PASSWORD)@demo-postgres:5432/users"
        );
        assert_eq!(
            auth["JWT_SIGNING_KEY"]["valueFrom"]["secretKeyRef"],
            json!({"name": "demo-generated", "key": "jwt-signing-key", "optional": false})
        );
        assert!(!chat.contains_key("JWT_SIGNING_KEY"), "only auth signs");

        let notification = env_of(deployment_of(&d, Component::Notification));
        assert_eq!(notification["EMAIL_SENDER"]["value"], "smtp");
        assert_eq!(
            notification["SMTP_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"],
            "mail"
        );

        for (comp, dep) in &d.deployments {
            let env = env_of(dep);
            assert_eq!(
                env["SERVICE_SECRET"]["valueFrom"]["secretKeyRef"]["key"],
                "service-secret"
            );
            assert_eq!(env["LISTEN_ADDR"]["value"], "0.0.0.0:50051");
            // $(POSTGRES_PASSWORD) only expands when it is defined before DATABASE_URL.
            let names: Vec<String> = dep
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .clone()
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
            assert!(pos("POSTGRES_PASSWORD") < pos("DATABASE_URL"), "{comp:?}");
        }
        // No secret value is inlined anywhere.
        let all = serde_json::to_string(&d.to_values(&Secret::default())).unwrap();
        assert!(!all.contains("PRIVATE KEY") && !all.contains("postgres://chat:"));
    }

    #[test]
    fn postgres_allows_every_connection_the_pools_may_open() {
        // Two pods of each component, one more each while a rolling update runs.
        let c = cluster(json!({"version": "1.0.0"}));
        assert_eq!(
            database_connections(&c.spec),
            3 * (10 + 20 + 10 + 10) + DATABASE_CONNECTIONS_SPARE
        );
        assert_eq!(postgres_max_connections(&c.spec), 200);
        let d = desired(&c).unwrap();
        // Every pod's pool is set, and all of them fit what the server allows.
        let mut total = DATABASE_CONNECTIONS_SPARE;
        for (comp, dep) in &d.deployments {
            let pool: u32 = env_of(dep)["DATABASE_MAX_CONNECTIONS"]["value"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(pool, comp.database_pool(), "{comp:?}");
            let replicas = dep.spec.as_ref().unwrap().replicas.unwrap() as u32;
            total += pool * (replicas + 1);
        }
        assert!(total <= 200, "{total} connections");
        let pg = d
            .stateful_sets
            .iter()
            .find(|s| s.name_any() == "demo-postgres")
            .unwrap();
        let container = first_container(&pg.spec.as_ref().unwrap().template);
        assert_eq!(
            container.args.as_deref().unwrap(),
            ["postgres", "-c", "max_connections=200"]
        );

        // An autoscaler counts at its maximum, in steps of 50.
        let c = cluster(json!({"version": "1.0.0",
            "chat": {"autoscaling": {"minReplicas": 2, "maxReplicas": 10}}}));
        assert_eq!(
            database_connections(&c.spec),
            3 * (10 + 10 + 10) + 11 * 20 + DATABASE_CONNECTIONS_SPARE
        );
        assert_eq!(postgres_max_connections(&c.spec), 350);
        // A component scaled to zero holds none, and the floor is PostgreSQL's default.
        let c = cluster(json!({"version": "1.0.0",
            "auth": {"replicas": 0}, "chat": {"replicas": 0},
            "notification": {"replicas": 0}, "saga": {"replicas": 1}}));
        assert_eq!(
            database_connections(&c.spec),
            2 * 10 + DATABASE_CONNECTIONS_SPARE
        );
        assert_eq!(postgres_max_connections(&c.spec), 100);

        // CloudNativePG gets it as a parameter of its cluster.
        let c = cluster(json!({"version": "1.0.0",
            "postgres": {"cloudNativePG": {"storage": {"size": "1Gi"}}}}));
        let cnpg = desired(&c).unwrap().postgres_cluster.unwrap();
        let cnpg = serde_json::to_value(&cnpg.object).unwrap();
        assert_eq!(
            cnpg["spec"]["postgresql"]["parameters"]["max_connections"],
            "200"
        );
    }

    #[test]
    fn external_postgres_and_nats_replace_the_managed_ones() {
        let c = cluster(json!({
            "version": "1.0.0",
            "postgres": {"external": {"urlSecret": {"name": "db", "key": "url"}, "params": "sslmode=require"}},
            "nats": {"external": {"url": "nats://nats.messaging:4222"}},
        }));
        let d = desired(&c).unwrap();
        assert!(d.stateful_sets.is_empty());
        assert!(!d.services.iter().any(|s| s
            .metadata
            .name
            .as_deref()
            .unwrap()
            .contains("postgres")));
        let chat = env_of(deployment_of(&d, Component::Chat));
        assert_eq!(chat["NATS_URL"]["value"], "nats://nats.messaging:4222");
        assert_eq!(
            chat["POSTGRES_URL"]["valueFrom"]["secretKeyRef"],
            json!({"name": "db", "key": "url", "optional": false})
        );
        assert_eq!(
            chat["DATABASE_URL"]["value"],
            "$(POSTGRES_URL)/chat?sslmode=require"
        );
        assert_eq!(
            generated_keys(&c.spec),
            [keys::SIGNING_KEY, keys::PUBLIC_KEY, keys::SERVICE_SECRET]
        );
    }

    #[test]
    fn cloud_native_pg_renders_a_cluster_with_a_role_per_service() {
        let c = cluster(json!({
            "version": "1.0.0",
            "postgres": {"cloudNativePG": {
                "storage": {"size": "20Gi", "storageClass": "fast"},
                "backup": {
                    "destinationPath": "s3://backups/chat",
                    "endpointURL": "https://minio.example:9000",
                    "accessKeyId": {"name": "s3", "key": "id"},
                    "secretAccessKey": {"name": "s3", "key": "secret"},
                    "retentionPolicy": "30d",
                },
            }},
        }));
        let d = desired(&c).unwrap();
        // No single-pod PostgreSQL, and no shared superuser password.
        assert_eq!(d.stateful_sets.len(), 1, "only NATS");
        assert!(!d.services.iter().any(|s| s.name_any() == "demo-postgres"));
        assert_eq!(
            generated_keys(&c.spec),
            [
                keys::SIGNING_KEY,
                keys::PUBLIC_KEY,
                keys::SERVICE_SECRET,
                keys::NATS_CHAT_PASSWORD,
                keys::NATS_NOTIFICATION_PASSWORD
            ]
        );

        let pg = d.postgres_cluster.as_ref().expect("a CNPG Cluster");
        assert_eq!(pg.resource.api_version, "postgresql.cnpg.io/v1");
        assert_eq!(pg.describe(), "Cluster demo-postgres");
        let o = serde_json::to_value(&pg.object).unwrap();
        assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let spec = &o["spec"];
        assert_eq!(spec["instances"], 3);
        assert_eq!(
            spec["storage"],
            json!({"size": "20Gi", "storageClass": "fast"})
        );
        assert_eq!(spec["enableSuperuserAccess"], false);
        let inherited = &spec["inheritedMetadata"]["labels"];
        assert_eq!(inherited["app.kubernetes.io/component"], "postgres");
        assert!(inherited.get("app.kubernetes.io/managed-by").is_none());
        let initdb = &spec["bootstrap"]["initdb"];
        assert_eq!(initdb["database"], "chat");
        assert_eq!(initdb["owner"], "chat_service");
        assert_eq!(initdb["secret"]["name"], "demo-postgres-chat");
        let sql: Vec<&str> = initdb["postInitSQL"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            sql.contains(&"CREATE DATABASE users OWNER auth_service"),
            "{sql:?}"
        );
        assert!(
            sql.contains(&"CREATE DATABASE saga OWNER saga_service"),
            "{sql:?}"
        );
        assert!(sql.contains(&"REVOKE ALL ON DATABASE notification FROM PUBLIC"));
        let roles = spec["managed"]["roles"].as_array().unwrap();
        let names: Vec<&str> = roles.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["auth_service", "notification_service", "saga_service"]
        );
        assert_eq!(roles[0]["passwordSecret"]["name"], "demo-postgres-auth");
        assert!(roles
            .iter()
            .all(|r| r["login"] == true && r.get("superuser").is_none()));
        let store = &spec["backup"]["barmanObjectStore"];
        assert_eq!(store["destinationPath"], "s3://backups/chat");
        assert_eq!(store["endpointURL"], "https://minio.example:9000");
        assert_eq!(
            store["s3Credentials"]["secretAccessKey"],
            json!({"name": "s3", "key": "secret"})
        );
        assert_eq!(spec["backup"]["retentionPolicy"], "30d");

        // Each service logs in as its own role, to the primary, over TLS.
        for component in Component::ALL {
            let env = env_of(deployment_of(&d, component));
            assert_eq!(
                env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"],
                json!({"name": format!("demo-postgres-{}", component.name()),
                       "key": "password", "optional": false})
            );
            assert_eq!(
                env["DATABASE_URL"]["value"],
                format!(
                    "postgres://{}:$(POSTGRES_PASSWORD)@demo-postgres-rw:5432/{}?sslmode=require",
                    component.role(),
                    component.database()
                )
            );
            assert!(!env.contains_key("POSTGRES_URL"));
        }
        // The role Secrets are what CloudNativePG reads.
        let owner = owner_reference(&c).unwrap();
        let secret = postgres_role_secret(&c, &owner, Component::Saga, "pw").unwrap();
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(secret.labels()["cnpg.io/reload"], "true");
        let data = secret.string_data.unwrap();
        assert_eq!(data["username"], "saga_service");
        assert_eq!(data["password"], "pw");
    }

    #[test]
    fn managed_nats_requires_a_user_per_client_with_only_its_subjects() {
        let c = cluster(json!({"version": "1.0.0"}));
        let nats = c.spec.managed_nats().unwrap();
        let conf = nats_config(&c, &nats);
        // No password in the ConfigMap: nats-server reads them from its environment.
        assert!(
            conf.contains("{user: chat, password: $NATS_CHAT_PASSWORD"),
            "{conf}"
        );
        assert!(conf.contains("{user: notification, password: $NATS_NOTIFICATION_PASSWORD"));
        assert!(conf.contains("publish: {allow: [\"$JS.API.>\", \"$JS.ACK.>\"]}"));
        // Typing and presence travel outside the stream, on `chat_live.>`.
        assert!(
            conf.contains("subscribe: {allow: [\"chat.>\", \"chat_live.>\", \"_INBOX.>\"]}"),
            "{conf}"
        );
        let d = desired(&c).unwrap();
        let sts = serde_json::to_value(
            d.stateful_sets
                .iter()
                .find(|s| s.name_any() == "demo-nats")
                .unwrap(),
        )
        .unwrap();
        let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            env[1],
            json!({"name": "NATS_CHAT_PASSWORD", "valueFrom": {"secretKeyRef":
                {"name": "demo-generated", "key": "nats-chat-password", "optional": false}}})
        );
        assert_eq!(
            env[2]["valueFrom"]["secretKeyRef"]["key"],
            "nats-notification-password"
        );
        // An external NATS is reached as configured.
        let ext = cluster(json!({"version": "1.0.0",
                                 "nats": {"external": {"url": "nats://u:p@nats.x:4222"}}}));
        let d = desired(&ext).unwrap();
        let chat = env_of(deployment_of(&d, Component::Chat));
        assert_eq!(chat["NATS_URL"]["value"], "nats://u:p@nats.x:4222");
        assert!(!chat.contains_key("NATS_PASSWORD"));
    }

    #[test]
    fn cloud_native_pg_without_credentials_uses_the_pods_iam_role() {
        let c = cluster(json!({
            "version": "1.0.0",
            "postgres": {"cloudNativePG": {"instances": 2, "backup": {"destinationPath": "s3://b/c"}}},
        }));
        let d = desired(&c).unwrap();
        let o = serde_json::to_value(&d.postgres_cluster.unwrap().object).unwrap();
        assert_eq!(o["spec"]["instances"], 2);
        assert_eq!(o["spec"]["storage"], json!({"size": "10Gi"}));
        assert_eq!(
            o["spec"]["backup"]["barmanObjectStore"]["s3Credentials"],
            json!({"inheritFromIAMRole": true})
        );
        assert!(o["spec"]["backup"].get("retentionPolicy").is_none());
        // The other modes render no Cluster.
        assert!(desired(&cluster(json!({"version": "1.0.0"})))
            .unwrap()
            .postgres_cluster
            .is_none());
    }

    #[test]
    fn only_one_postgres_mode_is_accepted() {
        let c = cluster(json!({
            "version": "1.0.0",
            "postgres": {"cloudNativePG": {}, "managed": {}},
        }));
        assert!(c.spec.validate().is_err());
        let c = cluster(json!({"version": "1.0.0", "postgres": {"cloudNativePG": {}}}));
        c.spec.validate().unwrap();
        assert!(c.spec.managed_postgres().is_none());
    }

    #[test]
    fn replicas_images_and_resources_follow_the_spec() {
        let c = cluster(json!({
            "version": "2.0.0",
            "images": {"repository": "registry.example.com/chat/"},
            "chat": {"replicas": 5, "resources": {"limits": {"cpu": "1"}}},
            "saga": {"replicas": 1, "image": "custom/saga:dev"},
        }));
        let d = desired(&c).unwrap();
        let chat = deployment_of(&d, Component::Chat);
        assert_eq!(chat.spec.as_ref().unwrap().replicas, Some(5));
        let container = first_container(&chat.spec.as_ref().unwrap().template);
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/chat/chat-service:2.0.0")
        );
        assert!(container.resources.is_some());
        let saga = deployment_of(&d, Component::Saga);
        assert_eq!(saga.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(
            saga.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .as_deref(),
            Some("custom/saga:dev")
        );
        assert_eq!(
            deployment_of(&d, Component::Auth)
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            Some(2)
        );
        let job = &d
            .migrations
            .iter()
            .find(|(x, _)| *x == Component::Saga)
            .unwrap()
            .1;
        let job_container = &job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(
            job_container.args.as_deref(),
            Some(&["migrate".to_string()][..])
        );
        assert_eq!(job_container.image.as_deref(), Some("custom/saga:dev"));
    }

    #[test]
    fn ingress_routes_public_grpc_services_with_tls() {
        let c = cluster(json!({
            "version": "1.0.0",
            "ingress": {"host": "chat.example.com", "className": "nginx", "tlsSecretName": "chat-tls",
                        "annotations": {"cert-manager.io/cluster-issuer": "le"}},
        }));
        let ing = serde_json::to_value(desired(&c).unwrap().ingress.unwrap()).unwrap();
        assert_eq!(
            ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"],
            "GRPC"
        );
        assert_eq!(
            ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
            "le"
        );
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        assert_eq!(
            ing["spec"]["tls"][0],
            json!({"hosts": ["chat.example.com"], "secretName": "chat-tls"})
        );
        let paths: Vec<(String, String)> = ing["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap().into(),
                    p["backend"]["service"]["name"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [
                (
                    "/grpcchat.auth.v1.AuthService".to_string(),
                    "demo-auth".to_string()
                ),
                ("/grpcchat.chat.v1.ChatService".into(), "demo-chat".into()),
                (
                    "/grpcchat.saga.v1.SagaOrchestrator".into(),
                    "demo-saga".into()
                ),
            ]
        );
        assert_eq!(endpoint(&c.spec).as_deref(), Some("chat.example.com:443"));
    }

    #[test]
    fn managed_nats_forms_a_jetstream_cluster() {
        let c = cluster(json!({"version": "1.0.0", "nats": {"managed": {"replicas": 3}}}));
        let conf = nats_config(&c, &c.spec.managed_nats().unwrap());
        assert!(conf.contains("jetstream"));
        assert!(conf.contains("nats://demo-nats-2.demo-nats-headless:6222"));
        let single = cluster(json!({"version": "1.0.0", "nats": {"managed": {"replicas": 1}}}));
        assert!(!nats_config(&single, &single.spec.managed_nats().unwrap()).contains("cluster"));
    }

    #[test]
    fn the_events_stream_follows_the_managed_nats() {
        let env = |spec: Value, c| env_of(deployment_of(&desired(&cluster(spec)).unwrap(), c));
        for (nats_replicas, stream) in [(1, "1"), (3, "3"), (5, "3")] {
            let spec = json!({"version": "1", "nats": {"managed": {"replicas": nats_replicas}}});
            for c in [Component::Chat, Component::Notification] {
                assert_eq!(
                    env(spec.clone(), c)["NATS_STREAM_REPLICAS"]["value"],
                    stream
                );
            }
        }
        // 10Gi volume: the server may fill 90% of it, the stream 75% of that.
        let c = cluster(json!({"version": "1", "nats": {"managed": {"storage": "10Gi"}}}));
        let nats = c.spec.managed_nats().unwrap();
        let store = (10.0 * 1024f64.powi(3) * 0.9) as u64;
        assert!(nats_config(&c, &nats).contains(&format!("max_file_store: {store}")));
        assert_eq!(
            env_of(deployment_of(&desired(&c).unwrap(), Component::Chat))["NATS_STREAM_MAX_BYTES"]
                ["value"],
            (store / 4 * 3).to_string()
        );
        // External NATS: the services' defaults.
        let ext = json!({"version": "1", "nats": {"external": {"url": "nats://x:4222"}}});
        assert!(!env(ext, Component::Chat).contains_key("NATS_STREAM_REPLICAS"));
        // Lame duck on the way out.
        let sts = nats_stateful_set(&c, &nats, None, &owner_reference(&c).unwrap()).unwrap();
        let v = serde_json::to_value(&sts).unwrap();
        let hook = v["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]
            ["command"][2]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            hook.contains("--signal ldm=/var/run/nats/nats.pid"),
            "{hook}"
        );
        assert!(nats_config(&c, &nats).contains("pid_file: /var/run/nats/nats.pid"));
    }

    #[test]
    fn the_generated_secret_is_kept_with_a_retained_database_volume() {
        let owners = |spec: Value| {
            let c = cluster(spec);
            let s = generated_secret(&c, &owner_reference(&c).unwrap(), &BTreeMap::new()).unwrap();
            s.metadata.owner_references.unwrap_or_default().len()
        };
        assert_eq!(owners(json!({"version": "1"})), 0, "Retain is the default");
        assert_eq!(
            owners(json!({"version": "1", "postgres": {"managed": {"volumePolicy": "Delete"}}})),
            1
        );
        assert_eq!(
            owners(json!({"version": "1",
                "postgres": {"external": {"urlSecret": {"name": "db", "key": "url"}}}})),
            1
        );
    }

    #[test]
    fn volume_policy_becomes_the_pvc_retention_policy() {
        let c = cluster(
            json!({"version": "1.0.0", "postgres": {"managed": {"volumePolicy": "Delete", "storage": "20Gi"}}}),
        );
        let sts = postgres_stateful_set(
            &c,
            &c.spec.managed_postgres().unwrap(),
            &owner_reference(&c).unwrap(),
        )
        .unwrap();
        let v = serde_json::to_value(&sts).unwrap();
        assert_eq!(
            v["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Delete"
        );
        assert_eq!(
            v["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "20Gi"
        );
        let default = cluster(json!({"version": "1.0.0"}));
        let sts = postgres_stateful_set(
            &default,
            &default.spec.managed_postgres().unwrap(),
            &owner_reference(&default).unwrap(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&sts).unwrap()["spec"]["persistentVolumeClaimRetentionPolicy"]
                ["whenDeleted"],
            "Retain"
        );
    }

    #[test]
    fn the_secrets_a_component_reads_are_digested_onto_its_pod_template() {
        let c = cluster(json!({"version": "1.0.0", "smtp": {"secretName": "mail"},
            "auth": {"previousPublicKey": {"name": "old-key", "key": "pub"}}}));
        let read = |comp| secrets_read(&c, comp);
        assert_eq!(
            read(Component::Auth),
            [
                (
                    "demo-generated".to_string(),
                    "jwt-signing-key".to_string(),
                    false
                ),
                ("demo-generated".into(), "service-secret".into(), false),
                ("demo-postgres-auth".into(), "password".into(), false),
                ("old-key".into(), "pub".into(), false),
            ]
        );
        assert!(read(Component::Notification).contains(&(
            "mail".to_string(),
            "password".to_string(),
            true
        )));
        assert!(!read(Component::Chat).iter().any(|(n, _, _)| n == "mail"));
        assert_eq!(
            secret_names(&c),
            [
                "demo-generated",
                "demo-postgres-auth",
                "demo-postgres-chat",
                "demo-postgres-notification",
                "demo-postgres-saga",
                "mail",
                "old-key"
            ]
        );

        let inputs = Inputs {
            secret_digests: BTreeMap::from([(Component::Auth, "abc123".to_string())]),
            roles_digest: None,
            nats_digest: Some("def456".to_string()),
        };
        let d = desired_with(&c, &inputs).unwrap();
        let auth = deployment_of(&d, Component::Auth);
        let annotations = auth
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(
            annotations.annotations.as_ref().unwrap()[SECRETS_ANNOTATION],
            "abc123"
        );
        assert_eq!(
            env_of(auth)["JWT_PREVIOUS_PUBLIC_KEY"]["valueFrom"]["secretKeyRef"],
            json!({"name": "old-key", "key": "pub", "optional": false})
        );
        // The migration Job follows the digest too: a fixed Secret retries it.
        let plain = desired(&c).unwrap();
        let job = |d: &Desired| d.migrations[0].1.name_any();
        assert_ne!(job(&d), job(&plain));
        // The NATS servers read their users' passwords at start: a change restarts them.
        let nats = |d: &Desired| {
            let sts = d.stateful_sets.iter().find(|s| s.name_any() == "demo-nats");
            serde_json::to_value(sts.unwrap()).unwrap()["spec"]["template"]["metadata"]
                ["annotations"][SECRETS_ANNOTATION]
                .clone()
        };
        assert_eq!(nats(&d), "def456");
        assert_eq!(nats(&plain), Value::Null);
    }

    #[test]
    fn the_longest_accepted_name_fits_every_derived_name_and_label() {
        let name = "a".repeat(crate::crd::MAX_NAME_LENGTH);
        // Every entry point at once (the CRD allows one): the names of all of them.
        let mut c = cluster(json!({"version": "1.0.0",
            "ingress": {"host": "chat.example.com", "tlsSecretName": "tls"},
            "loadBalancer": {},
            "gateway": {"host": "chat.example.com", "gatewayClassName": "eg"}}));
        c.metadata.name = Some(name.clone());
        let d = desired(&c).unwrap();
        let secret = generated_secret(&c, &owner_reference(&c).unwrap(), &BTreeMap::new()).unwrap();
        for v in d.to_values(&secret) {
            let object = v["metadata"]["name"].as_str().unwrap();
            // Services are DNS labels; the Job controller copies a Job's name into a label.
            assert!(object.len() <= 63, "{object}");
            for (_, label) in v["metadata"]["labels"].as_object().unwrap() {
                assert!(label.as_str().unwrap().len() <= 63, "{label}");
            }
        }
        for c2 in Component::ALL {
            assert!(migration_job_name(&c, c2).unwrap().len() <= 63);
        }
        // The StatefulSet controller labels pods `<statefulset>-<revision hash of 10>`.
        for sts in &d.stateful_sets {
            assert!(sts.metadata.name.as_ref().unwrap().len() + 11 <= 63);
        }
    }

    #[test]
    fn a_changed_job_spec_gets_a_new_migration_job() {
        let a = cluster(json!({"version": "1.0.0"}));
        let b = cluster(json!({"version": "1.1.0"}));
        let c = cluster(
            json!({"version": "1.0.0", "auth": {"resources": {"requests": {"cpu": "200m"}}}}),
        );
        let job = |x: &ChatCluster, comp| migration_job_name(x, comp).unwrap();
        assert_ne!(job(&a, Component::Auth), job(&b, Component::Auth));
        assert_ne!(job(&a, Component::Auth), job(&c, Component::Auth));
        // Only what the Job's pod carries counts.
        assert_eq!(job(&a, Component::Chat), job(&c, Component::Chat));
        assert_eq!(job(&a, Component::Auth), job(&a.clone(), Component::Auth));
        let rendered =
            migration_job(&b, Component::Auth, None, &owner_reference(&b).unwrap()).unwrap();
        assert_eq!(
            rendered.annotations()[IMAGE_ANNOTATION],
            "ghcr.io/grpc-chat/auth-service:1.1.0"
        );
    }

    /// The `(matched gRPC service, backend Service)` of each route, and its parentRef.
    fn routes(d: &Desired) -> Vec<(String, String, Value)> {
        d.grpc_routes
            .iter()
            .map(|r| {
                let v = serde_json::to_value(&r.object).unwrap();
                let rule = &v["spec"]["rules"][0];
                assert_eq!(v["spec"]["hostnames"], json!(["chat.example.com"]), "{v}");
                assert_eq!(rule["matches"][0]["method"]["type"], "Exact");
                assert_eq!(rule["backendRefs"][0]["port"], GRPC_PORT);
                assert_eq!(
                    v["metadata"]["labels"]["app.kubernetes.io/component"],
                    ENTRY_POINT
                );
                assert_eq!(v["spec"]["parentRefs"].as_array().unwrap().len(), 1);
                (
                    rule["matches"][0]["method"]["service"]
                        .as_str()
                        .unwrap()
                        .into(),
                    rule["backendRefs"][0]["name"].as_str().unwrap().into(),
                    v["spec"]["parentRefs"][0].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_rendered_gateway_serves_the_public_services_with_tls_or_h2c() {
        let c = cluster(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com", "gatewayClassName": "eg",
                        "tlsSecretName": "chat-tls"}}));
        let d = desired(&c).unwrap();
        let gw = serde_json::to_value(&d.gateway.as_ref().unwrap().object).unwrap();
        assert_eq!(gw["kind"], "Gateway");
        assert_eq!(gw["spec"]["gatewayClassName"], "eg");
        let listener = &gw["spec"]["listeners"][0];
        assert_eq!(listener["protocol"], "HTTPS");
        assert_eq!(listener["port"], 443);
        assert_eq!(listener["hostname"], "chat.example.com");
        assert_eq!(listener["tls"]["certificateRefs"][0]["name"], "chat-tls");
        assert_eq!(listener["allowedRoutes"]["kinds"][0]["kind"], "GRPCRoute");
        let parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                            "name": "demo", "sectionName": GATEWAY_LISTENER});
        assert_eq!(
            routes(&d),
            [
                (
                    "grpcchat.auth.v1.AuthService".to_string(),
                    "demo-auth".to_string(),
                    parent.clone()
                ),
                (
                    "grpcchat.chat.v1.ChatService".into(),
                    "demo-chat".into(),
                    parent.clone()
                ),
                (
                    "grpcchat.saga.v1.SagaOrchestrator".into(),
                    "demo-saga".into(),
                    parent
                ),
            ]
        );
        assert_eq!(endpoint(&c.spec).as_deref(), Some("chat.example.com:443"));
        assert!(d.ingress.is_none() && d.load_balancers.is_empty());
        // In the order applied: the Gateway, then its routes.
        let kinds: Vec<String> = d
            .independent()
            .unwrap()
            .iter()
            .map(|p| p.resource.kind.clone())
            .filter(|k| k == "Gateway" || k == "GRPCRoute")
            .collect();
        assert_eq!(kinds, ["Gateway", "GRPCRoute", "GRPCRoute", "GRPCRoute"]);

        // Without TLS: cleartext HTTP/2 on port 80.
        let c = cluster(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com", "gatewayClassName": "eg"}}));
        let gw = serde_json::to_value(&desired(&c).unwrap().gateway.unwrap().object).unwrap();
        let listener = &gw["spec"]["listeners"][0];
        assert_eq!(
            (listener["protocol"].as_str(), listener["port"].as_i64()),
            (Some("HTTP"), Some(80))
        );
        assert!(listener.get("tls").is_none());
        assert_eq!(endpoint(&c.spec).as_deref(), Some("chat.example.com:80"));
    }

    #[test]
    fn routes_attach_to_an_existing_gateway_without_rendering_one() {
        let c = cluster(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com",
                        "parentRef": {"name": "public", "namespace": "gateways",
                                      "sectionName": "https"}}}));
        let d = desired(&c).unwrap();
        assert!(d.gateway.is_none());
        let parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                            "name": "public", "namespace": "gateways", "sectionName": "https"});
        let r = routes(&d);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|(_, _, p)| *p == parent), "{r:?}");
        assert_eq!(endpoint(&c.spec).as_deref(), Some("chat.example.com:443"));
        // A listener on another port: the routes pick it and the endpoint says it.
        let c = cluster(json!({"version": "1.0.0",
            "gateway": {"host": "chat.example.com", "parentRef": {"name": "public", "port": 8443}}}));
        assert_eq!(routes(&desired(&c).unwrap())[0].2["port"], 8443);
        assert_eq!(endpoint(&c.spec).as_deref(), Some("chat.example.com:8443"));
    }

    #[test]
    fn load_balancers_give_each_public_service_its_own_address() {
        let c = cluster(json!({"version": "1.0.0",
            "loadBalancer": {"port": 443, "className": "metallb", "sourceRanges": ["10.0.0.0/8"],
                             "annotations": {"example.com/internal": "true"}}}));
        let d = desired(&c).unwrap();
        assert_eq!(endpoint(&c.spec), None);
        let lbs: Vec<Value> = d
            .load_balancers
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        let names: Vec<&str> = lbs
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["demo-auth-public", "demo-chat-public", "demo-saga-public"]
        );
        let chat = &lbs[1];
        assert_eq!(chat["spec"]["type"], "LoadBalancer");
        assert_eq!(chat["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            chat["spec"]["selector"]["app.kubernetes.io/component"],
            "chat"
        );
        assert_eq!(
            chat["spec"]["selector"]["app.kubernetes.io/instance"],
            "demo"
        );
        assert_eq!(
            chat["spec"]["ports"],
            json!([{"name": "grpc", "port": 443, "targetPort": "grpc", "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c"}])
        );
        assert_eq!(chat["spec"]["loadBalancerClass"], "metallb");
        assert_eq!(
            chat["spec"]["loadBalancerSourceRanges"],
            json!(["10.0.0.0/8"])
        );
        assert_eq!(
            chat["metadata"]["annotations"]["example.com/internal"],
            "true"
        );

        // Addresses as the cloud's controller reports them; one still pending.
        let with = |i: usize, ingress: Value| -> (Component, Service) {
            let mut s = d.load_balancers[i].clone();
            s.status = Some(
                serde_json::from_value(json!({"loadBalancer": {"ingress": ingress}})).unwrap(),
            );
            (Component::ALL[[0, 1, 3][i]], s)
        };
        let found = load_balancer_endpoints(&[
            with(
                0,
                json!([{"hostname": "lb.example.net", "ip": "192.0.2.1"}]),
            ),
            with(1, json!([{"ip": "2001:db8::1"}])),
            with(2, json!([])),
        ]);
        assert_eq!(
            found,
            BTreeMap::from([
                ("auth".to_string(), "lb.example.net:443".to_string()),
                ("chat".to_string(), "[2001:db8::1]:443".to_string()),
            ])
        );
    }

    #[test]
    fn the_in_cluster_services_tell_gateways_to_speak_h2c() {
        let c = cluster(json!({"version": "1.0.0"}));
        for svc in desired(&c).unwrap().services.iter().filter(|s| {
            Component::ALL
                .iter()
                .any(|c| s.name_any() == format!("demo-{}", c.name()))
        }) {
            let grpc = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
            assert_eq!(grpc.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        }
    }
}
