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
//!   by Kubernetes from `$(POSTGRES_URL)` (a secret key) and its database name, so no secret
//!   is ever inlined in a manifest;
//! - service URLs are the in-cluster Services `http://<name>-<component>:50051`;
//! - generated secrets (signing key, service secret, PostgreSQL password) live in the
//!   `<name>-generated` Secret, which the reconcile creates once and never rotates.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{ChatCluster, ChatClusterSpec, ManagedNats, ManagedPostgres};

/// gRPC port of every service (`LISTEN_ADDR`).
pub const GRPC_PORT: i32 = 50051;
/// Prometheus port of every service (`METRICS_ADDR`).
pub const METRICS_PORT: i32 = 9090;
/// User and group the service images run as (see the Dockerfile).
pub const SERVICE_UID: i64 = 10001;
/// Role of the managed PostgreSQL; it owns (and creates) the four databases.
pub const POSTGRES_USER: &str = "chat";

/// Keys of the `<name>-generated` Secret.
pub mod keys {
    pub const SIGNING_KEY: &str = "jwt-signing-key";
    pub const SERVICE_SECRET: &str = "service-secret";
    pub const POSTGRES_PASSWORD: &str = "postgres-password";
    pub const POSTGRES_URL: &str = "postgres-url";
}

/// Why rendering failed: a bug in this module (caught by its tests) or an owner without
/// the metadata the API server always sets.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the ChatCluster has no {0}")]
    MissingMetadata(&'static str),
    #[error("rendered {kind} does not parse: {source}")]
    Invalid {
        kind: &'static str,
        source: serde_json::Error,
    },
}

/// One of the four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Auth,
    Chat,
    Notification,
    Saga,
}

impl Component {
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

    /// The fully qualified gRPC service routed to it by the Ingress, for public ones.
    pub fn public_grpc_service(self) -> Option<&'static str> {
        match self {
            Component::Auth => Some("grpcchat.auth.v1.AuthService"),
            Component::Chat => Some("grpcchat.chat.v1.ChatService"),
            Component::Notification => None,
            Component::Saga => Some("grpcchat.saga.v1.SagaOrchestrator"),
        }
    }

    pub fn replicas(self, spec: &ChatClusterSpec) -> i32 {
        match self {
            Component::Auth => spec.auth.component.replicas,
            Component::Chat => spec.chat.replicas,
            Component::Notification => spec.notification.replicas,
            Component::Saga => spec.saga.replicas,
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

/// Everything the reconcile applies, in the order it applies it.
#[derive(Clone, Debug)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub config_maps: Vec<ConfigMap>,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    /// The migration Job of each component; its Deployment is applied once it succeeded.
    pub migrations: Vec<(Component, Job)>,
    pub deployments: Vec<(Component, Deployment)>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub ingress: Option<Ingress>,
}

impl Desired {
    /// Every object as JSON, for `chat-operator render`.
    pub fn to_values(&self, generated_secret: &Secret) -> Vec<Value> {
        fn v<T: serde::Serialize>(o: &T) -> Value {
            serde_json::to_value(o).unwrap_or(Value::Null)
        }
        let mut out = vec![v(&self.service_account), v(generated_secret)];
        out.extend(self.config_maps.iter().map(v));
        out.extend(self.services.iter().map(v));
        out.extend(self.stateful_sets.iter().map(v));
        out.extend(self.migrations.iter().map(|(_, j)| v(j)));
        out.extend(self.deployments.iter().map(|(_, d)| v(d)));
        out.extend(self.pdbs.iter().map(v));
        out.extend(self.ingress.iter().map(v));
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

/// Renders every object of `cluster`.
pub fn desired(cluster: &ChatCluster) -> Result<Desired, RenderError> {
    let owner = owner_reference(cluster)?;
    let spec = &cluster.spec;
    let config = config_map(cluster, &owner)?;
    let config_hash = short_hash(&serde_json::to_string(&config.data).unwrap_or_default());

    let mut config_maps = vec![config];
    let mut services = Vec::new();
    let mut stateful_sets = Vec::new();
    let mut pdbs = Vec::new();

    if let Some(pg) = spec.managed_postgres() {
        services.push(postgres_service(cluster, &owner)?);
        stateful_sets.push(postgres_stateful_set(cluster, &pg, &owner)?);
    }
    if let Some(nats) = spec.managed_nats() {
        config_maps.push(nats_config_map(cluster, &nats, &owner)?);
        services.extend(nats_services(cluster, &owner)?);
        stateful_sets.push(nats_stateful_set(cluster, &nats, &owner)?);
        pdbs.push(pdb(cluster, "nats", &owner)?);
    }

    let mut migrations = Vec::new();
    let mut deployments = Vec::new();
    for c in Component::ALL {
        services.push(service(cluster, c, &owner)?);
        migrations.push((c, migration_job(cluster, c, &owner)?));
        deployments.push((c, deployment(cluster, c, &config_hash, &owner)?));
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
        ingress: ingress(cluster, &owner)?,
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
        ("RUST_LOG".to_string(), cluster.spec.log_level.clone()),
        ("LOG_FORMAT".to_string(), "json".to_string()),
    ]);
    if let Some(endpoint) = &cluster.spec.otlp_endpoint {
        data.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
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

/// The Secret holding what the operator generated. `data` is the generated values (the
/// reconcile passes what it read back or created; `render` passes placeholders).
pub fn generated_secret(
    cluster: &ChatCluster,
    owner: &OwnerReference,
    data: &BTreeMap<String, String>,
) -> Result<Secret, RenderError> {
    typed(
        "Secret",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(cluster, name(cluster, "generated"), "secrets", owner),
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
    }
    if spec.service_secret.is_none() {
        k.push(keys::SERVICE_SECRET);
    }
    if spec.managed_postgres().is_some() {
        k.push(keys::POSTGRES_PASSWORD);
        k.push(keys::POSTGRES_URL);
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
    let url = |c: Component| format!("http://{}:{GRPC_PORT}", name(cluster, c.name()));
    let nats_url = match &spec.nats.external {
        Some(ext) if spec.nats.managed.is_none() => ext.url.clone(),
        _ => format!("nats://{}:4222", name(cluster, "nats")),
    };

    let mut env = vec![
        value_env("LISTEN_ADDR", format!("0.0.0.0:{GRPC_PORT}")),
        value_env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
    ];
    match &spec.service_secret {
        Some(s) => env.push(secret_env("SERVICE_SECRET", &s.name, &s.key, false)),
        None => env.push(secret_env(
            "SERVICE_SECRET",
            &generated,
            keys::SERVICE_SECRET,
            false,
        )),
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
    env.push(value_env("DATABASE_URL", database_url));

    match c {
        Component::Auth => {
            match &spec.signing_key {
                Some(s) => env.push(secret_env("JWT_SIGNING_KEY", &s.name, &s.key, false)),
                None => env.push(secret_env(
                    "JWT_SIGNING_KEY",
                    &generated,
                    keys::SIGNING_KEY,
                    false,
                )),
            }
            if let Some(cost) = spec.auth.bcrypt_cost {
                env.push(value_env("BCRYPT_COST", cost.to_string()));
            }
            if let Some(ttl) = spec.auth.access_token_ttl_secs {
                env.push(value_env("ACCESS_TOKEN_TTL_SECS", ttl.to_string()));
            }
            if let Some(ttl) = spec.auth.refresh_token_ttl_secs {
                env.push(value_env("REFRESH_TOKEN_TTL_SECS", ttl.to_string()));
            }
        }
        Component::Chat => {
            env.push(value_env("NATS_URL", nats_url));
            env.push(value_env("AUTH_URL", url(Component::Auth)));
        }
        Component::Notification => {
            env.push(value_env("NATS_URL", nats_url));
            env.push(value_env("AUTH_URL", url(Component::Auth)));
            env.push(value_env("CHAT_URL", url(Component::Chat)));
            match &spec.smtp {
                None => env.push(value_env("EMAIL_SENDER", "stub")),
                Some(smtp) => {
                    env.push(value_env("EMAIL_SENDER", "smtp"));
                    let s = &smtp.secret_name;
                    env.push(secret_env("SMTP_HOST", s, "host", false));
                    env.push(secret_env("SMTP_PORT", s, "port", false));
                    env.push(secret_env("SMTP_TLS", s, "tls", false));
                    env.push(secret_env("SMTP_FROM", s, "from", false));
                    env.push(secret_env("SMTP_USERNAME", s, "username", true));
                    env.push(secret_env("SMTP_PASSWORD", s, "password", true));
                }
            }
        }
        Component::Saga => {
            env.push(value_env("AUTH_URL", url(Component::Auth)));
            env.push(value_env("CHAT_URL", url(Component::Chat)));
            env.push(value_env("NOTIFICATION_URL", url(Component::Notification)));
        }
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

/// A service's Deployment. `config_hash` is put on the pod template so a ConfigMap
/// change rolls the pods.
pub fn deployment(
    cluster: &ChatCluster,
    c: Component,
    config_hash: &str,
    owner: &OwnerReference,
) -> Result<Deployment, RenderError> {
    let spec = &cluster.spec;
    let mut pod_labels = labels(cluster, c.name());
    pod_labels.insert("app.kubernetes.io/version".into(), spec.version.clone());
    typed(
        "Deployment",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(cluster, name(cluster, c.name()), c.name(), owner),
            "spec": {
                "replicas": c.replicas(spec),
                "selector": {"matchLabels": selector_labels(cluster, c.name())},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {
                            "grpcchat.dev/config-hash": config_hash,
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": METRICS_PORT.to_string(),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": service_pod_spec(cluster, c, false),
                },
            },
        }),
    )
}

/// Name of the migration Job for the component's current image: a new image gets a new
/// Job, the same image reuses the finished one.
pub fn migration_job_name(cluster: &ChatCluster, c: Component) -> String {
    name(
        cluster,
        &format!(
            "{}-migrate-{}",
            c.name(),
            short_hash(&c.image(&cluster.spec))
        ),
    )
}

/// The Job that runs `<binary> migrate` (creates the database when missing and applies
/// its migrations) before the component's Deployment gets the new image.
pub fn migration_job(
    cluster: &ChatCluster,
    c: Component,
    owner: &OwnerReference,
) -> Result<Job, RenderError> {
    let component = format!("{}-migrate", c.name());
    let mut pod_labels = labels(cluster, &component);
    pod_labels.insert(
        "app.kubernetes.io/version".into(),
        cluster.spec.version.clone(),
    );
    typed(
        "Job",
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata(cluster, migration_job_name(cluster, c), &component, owner),
            "spec": {
                // Retries cover a database that is still starting.
                "backoffLimit": 10,
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": service_pod_spec(cluster, c, true),
                },
            },
        }),
    )
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

/// The Ingress routing each public gRPC service by its path prefix to its Service.
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
    let mut metadata = metadata(cluster, cluster.name_any(), "ingress", owner);
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

/// Where clients connect, when the cluster has an Ingress.
pub fn endpoint(spec: &ChatClusterSpec) -> Option<String> {
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

/// A single PostgreSQL instance with a persistent volume. The services create their
/// databases in it, so it needs no init scripts.
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

/// `nats.conf`: JetStream on a volume, and a cluster with static routes to every
/// StatefulSet pod when there is more than one.
pub fn nats_config(cluster: &ChatCluster, nats: &ManagedNats) -> String {
    let mut conf = String::from(
        "server_name: $POD_NAME\nlisten: 0.0.0.0:4222\nhttp: 0.0.0.0:8222\nlame_duck_duration: 30s\n\
         jetstream {\n  store_dir: /data\n}\n",
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

pub fn nats_stateful_set(
    cluster: &ChatCluster,
    nats: &ManagedNats,
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
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": "client", "containerPort": 4222, "protocol": "TCP"},
            {"name": "cluster", "containerPort": 6222, "protocol": "TCP"},
            {"name": "monitor", "containerPort": 8222, "protocol": "TCP"},
        ],
        "startupProbe": probe("/healthz", 2, 90),
        "readinessProbe": probe("/healthz?js-enabled-only=true", 5, 3),
        "livenessProbe": probe("/healthz?js-enabled-only=true", 15, 3),
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": "/etc/nats"},
        ],
    });
    if let Some(r) = &nats.resources {
        container["resources"] = json!(r);
    }
    let config_hash = short_hash(&nats_config(cluster, nats));
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
                "template": {
                    "metadata": {
                        "labels": labels(cluster, "nats"),
                        "annotations": {"grpcchat.dev/config-hash": config_hash},
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": pod_security(1000),
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": name(cluster, "nats")}}],
                        "topologySpreadConstraints": [{
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector_labels(cluster, "nats")},
                        }],
                    },
                },
                "volumeClaimTemplates": [volume_claim(&nats.storage, &nats.storage_class_name)],
            },
        }),
    )
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

    fn deployment_of(d: &Desired, c: Component) -> &Deployment {
        &d.deployments.iter().find(|(x, _)| *x == c).unwrap().1
    }

    #[test]
    fn every_object_is_owned_labelled_and_namespaced() {
        let c = cluster(json!({"version": "1.0.0", "ingress": {"host": "chat.example.com"}}));
        let d = desired(&c).unwrap();
        let secret = generated_secret(&c, &owner_reference(&c).unwrap(), &BTreeMap::new()).unwrap();
        let values = d.to_values(&secret);
        assert_eq!(values.len(), 1 + 1 + 2 + 7 + 2 + 4 + 4 + 5 + 1);
        for v in values {
            let m = &v["metadata"];
            assert_eq!(m["namespace"], "chat", "{v}");
            assert_eq!(m["ownerReferences"][0]["uid"], "u-1");
            assert_eq!(m["ownerReferences"][0]["kind"], "ChatCluster");
            assert_eq!(m["ownerReferences"][0]["controller"], true);
            assert_eq!(m["labels"]["app.kubernetes.io/managed-by"], "chat-operator");
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
        assert_eq!(saga["DATABASE_URL"]["value"], "$(POSTGRES_URL)/saga");

        let chat = env_of(deployment_of(&d, Component::Chat));
        assert_eq!(chat["NATS_URL"]["value"], "nats://demo-nats:4222");
        assert_eq!(chat["DATABASE_URL"]["value"], "$(POSTGRES_URL)/chat");

        let auth = env_of(deployment_of(&d, Component::Auth));
        assert_eq!(auth["DATABASE_URL"]["value"], "$(POSTGRES_URL)/users");
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
            // $(POSTGRES_URL) only expands when it is defined before DATABASE_URL.
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
            assert!(pos("POSTGRES_URL") < pos("DATABASE_URL"), "{comp:?}");
        }
        // No secret value is inlined anywhere.
        let all = serde_json::to_string(&d.to_values(&Secret::default())).unwrap();
        assert!(!all.contains("PRIVATE KEY") && !all.contains("postgres://chat:"));
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
            [keys::SIGNING_KEY, keys::SERVICE_SECRET]
        );
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
        let container = &chat
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
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
    fn a_new_image_gets_a_new_migration_job() {
        let a = cluster(json!({"version": "1.0.0"}));
        let b = cluster(json!({"version": "1.1.0"}));
        assert_ne!(
            migration_job_name(&a, Component::Auth),
            migration_job_name(&b, Component::Auth)
        );
        assert_eq!(
            migration_job_name(&a, Component::Auth),
            migration_job_name(&a.clone(), Component::Auth)
        );
    }
}
