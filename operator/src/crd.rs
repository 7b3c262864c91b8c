//! The `ChatCluster` custom resource: one object that describes a whole grpc-chat
//! installation (the four services, their PostgreSQL and NATS, email, keys, ingress).
//!
//! The Rust types are the source of truth: the CRD's structural schema is generated from
//! them (`chat-operator crd`, checked in as `k8s/crd.yaml`), so the API server validates
//! exactly what the reconcile can read. Every field has a default where one makes sense,
//! so the smallest useful object is `spec: {version: "0.1.0"}`. Choices that are "one of"
//! (managed or external PostgreSQL/NATS) are two optional fields rather than a Rust enum,
//! because Kubernetes structural schemas cannot express untagged unions; the reconcile
//! rejects an object that sets both ([`ChatClusterSpec::validate`]).

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the operator's resources.
pub const GROUP: &str = "grpcchat.dev";

/// Desired state of a grpc-chat installation.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    doc = "A grpc-chat installation: its four services, PostgreSQL, NATS, email, keys and ingress.",
    group = "grpcchat.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    status = "ChatClusterStatus",
    shortname = "chatc",
    category = "grpc-chat",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Version of the services: the image tag of every component unless overridden.
    pub version: String,
    /// Where the service images come from.
    #[serde(default)]
    pub images: ImagesSpec,
    /// AuthService: accounts and tokens.
    #[serde(default)]
    pub auth: AuthSpec,
    /// ChatService: chats, messages and live streams.
    #[serde(default)]
    pub chat: ComponentSpec,
    /// NotificationService: emails about new messages.
    #[serde(default)]
    pub notification: ComponentSpec,
    /// SagaOrchestrator: the send-message saga.
    #[serde(default)]
    pub saga: ComponentSpec,
    /// PostgreSQL: managed by the operator (default) or an existing server.
    #[serde(default)]
    pub postgres: PostgresSpec,
    /// NATS with JetStream: managed by the operator (default) or an existing server.
    #[serde(default)]
    pub nats: NatsSpec,
    /// SMTP credentials for outgoing email. Absent: emails are only logged (the stub sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSpec>,
    /// The access-token signing key (Ed25519, PKCS#8 PEM). Absent: the operator generates
    /// one into the `<name>-generated` Secret and keeps it across reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SecretKeySelector>,
    /// The secret shared by the services to obtain service tokens. Absent: generated like
    /// the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_secret: Option<SecretKeySelector>,
    /// Public gRPC entry point for AuthService, ChatService and SagaOrchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// `RUST_LOG` of every service.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// OTLP/gRPC endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`); absent: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

fn default_log_level() -> String {
    "info".into()
}

/// Image coordinates shared by the four services.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagesSpec {
    /// Registry and path prefix: images are `<repository>/<binary>:<version>`.
    #[serde(default = "default_repository")]
    pub repository: String,
    /// `imagePullPolicy` of every container.
    #[serde(default = "default_pull_policy")]
    pub pull_policy: String,
    /// Names of Secrets used to pull the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImagesSpec {
    fn default() -> Self {
        Self {
            repository: default_repository(),
            pull_policy: default_pull_policy(),
            pull_secrets: Vec::new(),
        }
    }
}

fn default_repository() -> String {
    "ghcr.io/grpc-chat".into()
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

/// What every service component takes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Number of pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Full image reference overriding `<repository>/<binary>:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the service container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
        }
    }
}

fn default_replicas() -> i32 {
    2
}

/// AuthService: a component plus its token and hashing settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// `BCRYPT_COST` (4 to 31); absent: the service's default (12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 31))]
    pub bcrypt_cost: Option<u32>,
    /// `ACCESS_TOKEN_TTL_SECS`; absent: the service's default (900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_secs: Option<u64>,
    /// `REFRESH_TOKEN_TTL_SECS`; absent: the service's default (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl_secs: Option<u64>,
}

/// PostgreSQL: set `managed` or `external`, not both; neither means managed with defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
}

/// A single-instance PostgreSQL StatefulSet run by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPostgres {
    /// PostgreSQL image.
    #[serde(default = "default_postgres_image")]
    pub image: String,
    /// Size of the data volume.
    #[serde(default = "default_postgres_storage")]
    pub storage: String,
    /// StorageClass of the data volume; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the data volume when the ChatCluster is deleted.
    #[serde(default)]
    pub volume_policy: VolumePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ManagedPostgres {
    fn default() -> Self {
        Self {
            image: default_postgres_image(),
            storage: default_postgres_storage(),
            storage_class_name: None,
            volume_policy: VolumePolicy::default(),
            resources: None,
        }
    }
}

fn default_postgres_image() -> String {
    "postgres:17-alpine".into()
}

fn default_postgres_storage() -> String {
    "10Gi".into()
}

/// Whether volumes outlive the ChatCluster (the StatefulSet's PVC retention policy).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VolumePolicy {
    /// Keep the volumes (and the data) after the ChatCluster is deleted.
    #[default]
    Retain,
    /// Delete the volumes with the ChatCluster.
    Delete,
}

impl VolumePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumePolicy::Retain => "Retain",
            VolumePolicy::Delete => "Delete",
        }
    }
}

/// An existing PostgreSQL server.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPostgres {
    /// A Secret key holding the server URL without a database, e.g.
    /// `postgres://chat:p%40ss@db.example.com:5432` (password URL-encoded). The role must
    /// be allowed to create databases: each service creates its own when missing.
    pub url_secret: SecretKeySelector,
    /// Query string appended to every database URL, e.g. `sslmode=require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

/// NATS: set `managed` or `external`, not both; neither means managed with defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedNats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalNats>,
}

/// A NATS cluster with JetStream, run by the operator as a StatefulSet.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNats {
    #[serde(default = "default_nats_image")]
    pub image: String,
    /// Cluster size: 1, or 3 and more for a JetStream cluster that survives a node.
    #[serde(default = "default_nats_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Size of each node's JetStream volume.
    #[serde(default = "default_nats_storage")]
    pub storage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the JetStream volumes when the ChatCluster is deleted.
    #[serde(default)]
    pub volume_policy: VolumePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ManagedNats {
    fn default() -> Self {
        Self {
            image: default_nats_image(),
            replicas: default_nats_replicas(),
            storage: default_nats_storage(),
            storage_class_name: None,
            volume_policy: VolumePolicy::default(),
            resources: None,
        }
    }
}

fn default_nats_image() -> String {
    "nats:2.11-alpine".into()
}

fn default_nats_replicas() -> i32 {
    3
}

fn default_nats_storage() -> String {
    "1Gi".into()
}

/// An existing NATS server with JetStream enabled.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalNats {
    /// `NATS_URL` of the services, e.g. `nats://nats.messaging:4222`.
    pub url: String,
}

/// Outgoing email through SMTP.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpSpec {
    /// Secret with keys `host`, `port`, `tls` (`none`, `starttls` or `tls`), `from`, and
    /// optionally `username` and `password`.
    pub secret_name: String,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
}

/// The Ingress in front of the public services.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients connect to.
    pub host: String,
    /// IngressClass; absent: the cluster's default. The gRPC annotations written are
    /// ingress-nginx's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`; absent: plaintext (h2c) on port 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations, e.g. for cert-manager.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Observed state, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One entry per workload: the four services, PostgreSQL and NATS when managed.
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
    /// Where clients connect (`host:port` of the ingress), when there is an ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// A standard Kubernetes condition (`metav1.Condition`'s shape).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason, for machines.
    pub reason: String,
    /// Human-readable details.
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Rollout state of one workload.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    /// Desired pods.
    pub replicas: i32,
    /// Pods passing their readiness probe.
    pub ready_replicas: i32,
    /// The image whose database migrations have completed (services only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_image: Option<String>,
}

/// Why a spec cannot be reconciled; reported as `Degraded` with reason `InvalidSpec`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

impl ChatClusterSpec {
    /// Checks what the schema cannot express.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if self.postgres.managed.is_some() && self.postgres.external.is_some() {
            return Err(InvalidSpec(
                "spec.postgres: set managed or external, not both".into(),
            ));
        }
        if self.nats.managed.is_some() && self.nats.external.is_some() {
            return Err(InvalidSpec(
                "spec.nats: set managed or external, not both".into(),
            ));
        }
        if self.version.trim().is_empty() {
            return Err(InvalidSpec("spec.version must not be empty".into()));
        }
        for (name, replicas) in [
            ("auth", self.auth.component.replicas),
            ("chat", self.chat.replicas),
            ("notification", self.notification.replicas),
            ("saga", self.saga.replicas),
        ] {
            if replicas < 0 {
                return Err(InvalidSpec(format!(
                    "spec.{name}.replicas must not be negative"
                )));
            }
        }
        Ok(())
    }

    /// The managed PostgreSQL settings, or `None` when an external server is used.
    pub fn managed_postgres(&self) -> Option<ManagedPostgres> {
        match (&self.postgres.managed, &self.postgres.external) {
            (Some(m), _) => Some(m.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(ManagedPostgres::default()),
        }
    }

    /// The managed NATS settings, or `None` when an external server is used.
    pub fn managed_nats(&self) -> Option<ManagedNats> {
        match (&self.nats.managed, &self.nats.external) {
            (Some(m), _) => Some(m.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(ManagedNats::default()),
        }
    }
}
