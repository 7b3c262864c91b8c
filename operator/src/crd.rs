//! The `ChatCluster` custom resource: one object that describes a whole grpc-chat
//! installation (the four services, their PostgreSQL and NATS, email, keys, entry point).
//!
//! The Rust types are the source of truth: the CRD's structural schema is generated from
//! them (`chat-operator crd`, checked in as `k8s/crd.yaml`), so the API server validates
//! exactly what the reconcile can read. Every field has a default where one makes sense,
//! so the smallest useful object is `spec: {version: "0.1.0"}`. Choices that are "one of"
//! (PostgreSQL managed, CloudNativePG or external; NATS managed or external) are optional
//! fields with a CEL rule rather than a Rust enum, because Kubernetes structural schemas
//! cannot express untagged unions.
//!
//! Whatever would only fail later (a Job name over 63 characters, an unknown pull policy,
//! a size that is not a quantity, two PostgreSQL modes at once) is refused by the API
//! server at `kubectl apply`: enums, patterns and bounds from the types, and CEL rules
//! (`x-kubernetes-validations`, through kube's `KubeSchema` derive) for what a schema
//! cannot say. [`ChatClusterSpec::validate`] repeats the checks the reconcile depends on,
//! for objects stored before the CRD had them.

use k8s_openapi::api::{core::v1::ResourceRequirements, networking::v1::NetworkPolicyPeer};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest `ChatCluster` name: the longest derived name is the migration Job
/// `<name>-notification-migrate-<8 hex>` (30 more characters), and the Job controller
/// copies a Job's name into a pod label, whose values are at most 63 characters.
pub const MAX_NAME_LENGTH: usize = 33;

/// CEL: a string is a positive Kubernetes quantity (`10Gi`, `500M`).
const POSITIVE_QUANTITY: &str = "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))";

/// CEL transition rule: a volume size only grows (volumes are expanded, never shrunk,
/// as CloudNativePG and Strimzi do).
const NO_SHRINK: &str = "!isQuantity(self) || !isQuantity(oldSelf) || \
     quantity(self).compareTo(quantity(oldSelf)) >= 0";
const NO_SHRINK_MESSAGE: &str =
    "storage cannot shrink: a volume can only be expanded (make a new cluster to move to a smaller one)";

/// CEL transition rule: the StorageClass of the volumes stays what it was.
const SAME_STORAGE_CLASS: &str = "has(self.storageClassName) == has(oldSelf.storageClassName) && \
     (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)";
const STORAGE_CLASS_FIXED: &str =
    "storageClassName cannot change: a volume keeps the class it was created with";

/// CEL: at most one public entry point.
const ONE_ENTRY_POINT: &str = "!has(self.spec) || [has(self.spec.gateway), \
     has(self.spec.loadBalancer), has(self.spec.ingress)].filter(x, x).size() <= 1";
const ONE_ENTRY_POINT_MESSAGE: &str =
    "set at most one entry point: spec.gateway, spec.loadBalancer or spec.ingress";

/// CEL: an Ingress has TLS (ingress-nginx cannot serve gRPC over cleartext HTTP/2).
const INGRESS_NEEDS_TLS: &str = "has(self.tlsSecretName)";
const INGRESS_NEEDS_TLS_MESSAGE: &str =
    "ingress needs tlsSecretName: ingress-nginx cannot serve gRPC over cleartext HTTP/2 \
     (h2c); without TLS use spec.gateway or spec.loadBalancer";

/// API group of the operator's resources.
pub const GROUP: &str = "grpcchat.dev";

/// Desired state of a grpc-chat installation.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    doc = "A grpc-chat installation: its four services, PostgreSQL, NATS, email, keys and entry point.",
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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 33").message(
        "metadata.name must be at most 33 characters: the operator derives the names and \
         labels of its objects (at most 63 characters) from it"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(
        "metadata.name must be a DNS label that starts with a letter (it names Services)"
    ),
    validation = Rule::new(ONE_ENTRY_POINT).message(ONE_ENTRY_POINT_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Version of the services: the image tag of every component unless overridden.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    )]
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
    /// Public gRPC entry point through the Gateway API (recommended): one `GRPCRoute` per
    /// public service, attached to an existing Gateway or to one the operator renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// Public gRPC entry point as `LoadBalancer` Services, one per public service (a
    /// layer-4 load balancer cannot route by gRPC service, so each gets its own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Public gRPC entry point as an ingress-nginx `Ingress` (legacy: ingress-nginx is
    /// retired). Needs TLS: ingress-nginx does not serve gRPC over cleartext HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// NetworkPolicies letting each workload be reached only by what needs it. Absent:
    /// none (every pod reachable from every namespace, as Kubernetes does by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Prometheus Operator objects for the services' metrics. Absent: none (the pods carry
    /// the `prometheus.io/*` annotations either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
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
    #[schemars(length(min = 1, max = 512))]
    pub repository: String,
    /// `imagePullPolicy` of every container.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets used to pull the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImagesSpec {
    fn default() -> Self {
        Self {
            repository: default_repository(),
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

fn default_repository() -> String {
    "ghcr.io/grpc-chat".into()
}

/// A container's `imagePullPolicy`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull only when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
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
    /// Scale on CPU with a HorizontalPodAutoscaler instead of a fixed `replicas` (which is
    /// then ignored: the HPA owns the Deployment's replicas). Needs `resources.requests.cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
            autoscaling: None,
        }
    }
}

/// A HorizontalPodAutoscaler (`autoscaling/v2`) on the component's Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas")
    .message("autoscaling: maxReplicas must be at least minReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest pods; 2 keeps the service up while one pod is replaced.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the pods' CPU request, that the HPA keeps them at.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    75
}

fn default_replicas() -> i32 {
    2
}

/// AuthService: a component plus its token and hashing settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// What every component takes.
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// `BCRYPT_COST` (4 to 31); absent: the service's default (12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 31))]
    pub bcrypt_cost: Option<i32>,
    /// `ACCESS_TOKEN_TTL_SECS`; absent: the service's default (900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub access_token_ttl_secs: Option<i64>,
    /// `REFRESH_TOKEN_TTL_SECS`; absent: the service's default (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub refresh_token_ttl_secs: Option<i64>,
    /// During a signing-key rotation: the retired key's public half (SPKI PEM), still
    /// accepted for tokens it signed (`JWT_PREVIOUS_PUBLIC_KEY`). For the generated key:
    /// `{name: <cluster>-generated, key: jwt-public-key}`. Remove it once the access-token
    /// lifetime has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_public_key: Option<SecretKeySelector>,
}

/// PostgreSQL: set at most one of `managed`, `cloudNativePG` and `external`; none means
/// managed with defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.managed), has(self.external), has(self.cloudNativePG)].filter(x, x).size() <= 1"
).message(POSTGRES_ONE_MODE))]
pub struct PostgresSpec {
    /// One PostgreSQL pod run by the operator: for development and trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// An existing server the operator does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
    /// A CloudNativePG `Cluster` (replicated, failover, TLS, backups): for production.
    /// Needs the CloudNativePG operator in the cluster.
    #[serde(
        default,
        rename = "cloudNativePG",
        skip_serializing_if = "Option::is_none"
    )]
    pub cloud_native_pg: Option<CloudNativePg>,
}

const POSTGRES_ONE_MODE: &str =
    "spec.postgres: set only one of managed, cloudNativePG and external";

/// A PostgreSQL cluster run by CloudNativePG: a primary and streaming replicas with
/// automated failover, TLS, and (optionally) continuous backup to an object store.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudNativePg {
    /// Number of PostgreSQL instances (one primary, the rest replicas); 3 survives the
    /// loss of a node with a replica left.
    #[serde(default = "default_cnpg_instances")]
    #[schemars(range(min = 1))]
    pub instances: i32,
    /// The volume of each instance.
    #[serde(default)]
    pub storage: CnpgStorage,
    /// Operand image (`imageName` of the Cluster); absent: CloudNativePG's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image_name: Option<String>,
    /// CPU and memory of each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Continuous backup (base backups and WAL archive) to an object store; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<CnpgBackup>,
}

impl Default for CloudNativePg {
    fn default() -> Self {
        Self {
            instances: default_cnpg_instances(),
            storage: CnpgStorage::default(),
            image_name: None,
            resources: None,
            backup: None,
        }
    }
}

fn default_cnpg_instances() -> i32 {
    3
}

/// The volume of each CloudNativePG instance.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CnpgStorage {
    /// Size of each instance's volume (CloudNativePG expands volumes, never shrinks them).
    #[serde(default = "default_postgres_storage")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("storage must be a positive quantity, such as 10Gi"))]
    #[x_kube(validation = Rule::new(NO_SHRINK).message(NO_SHRINK_MESSAGE))]
    pub size: String,
    /// StorageClass; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl Default for CnpgStorage {
    fn default() -> Self {
        Self {
            size: default_postgres_storage(),
            storage_class: None,
        }
    }
}

/// Backups to an S3-compatible object store through Barman (the Cluster's
/// `backup.barmanObjectStore`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CnpgBackup {
    /// Where the backups go, e.g. `s3://backups/chat`.
    #[schemars(length(min = 1, max = 1024))]
    pub destination_path: String,
    /// The object store's endpoint when it is not AWS S3, e.g. `https://minio.example:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "endpointURL")]
    pub endpoint_url: Option<String>,
    /// The access key id (a Secret key); absent with `secretAccessKey` absent: the pods'
    /// IAM role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretKeySelector>,
    /// The secret access key (a Secret key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretKeySelector>,
    /// How long backups and WAL are kept, e.g. `30d` (days, weeks or months).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*[dwm]$"))]
    pub retention_policy: Option<String>,
}

/// A single-instance PostgreSQL StatefulSet run by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SAME_STORAGE_CLASS).message(STORAGE_CLASS_FIXED))]
pub struct ManagedPostgres {
    /// PostgreSQL image.
    #[serde(default = "default_postgres_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Size of the data volume.
    #[serde(default = "default_postgres_storage")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("storage must be a positive quantity, such as 10Gi"))]
    #[x_kube(validation = Rule::new(NO_SHRINK).message(NO_SHRINK_MESSAGE))]
    pub storage: String,
    /// StorageClass of the data volume; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the data volume when the ChatCluster is deleted.
    #[serde(default)]
    pub volume_policy: VolumePolicy,
    /// CPU and memory of the PostgreSQL container; absent: no requests or limits.
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
    /// The value of the StatefulSet's PVC retention policy.
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
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))")
    .message("spec.nats: set managed or external, not both"))]
pub struct NatsSpec {
    /// A NATS cluster with JetStream, run by the operator as a StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedNats>,
    /// An existing NATS server with JetStream enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalNats>,
}

/// A NATS cluster with JetStream, run by the operator as a StatefulSet.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SAME_STORAGE_CLASS).message(STORAGE_CLASS_FIXED))]
pub struct ManagedNats {
    /// NATS server image.
    #[serde(default = "default_nats_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Cluster size: 1, or 3 and more for a JetStream cluster that survives a node.
    #[serde(default = "default_nats_replicas")]
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == 1 || self >= 3").message(
        "replicas must be 1, or 3 or more: JetStream needs a majority of its nodes"
    ))]
    pub replicas: i32,
    /// Size of each node's JetStream volume.
    #[serde(default = "default_nats_storage")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("storage must be a positive quantity, such as 1Gi"))]
    #[x_kube(validation = Rule::new(NO_SHRINK).message(NO_SHRINK_MESSAGE))]
    pub storage: String,
    /// StorageClass of the JetStream volumes; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the JetStream volumes when the ChatCluster is deleted.
    #[serde(default)]
    pub volume_policy: VolumePolicy,
    /// CPU and memory of each NATS container; absent: no requests or limits.
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
    #[schemars(length(min = 1, max = 1024))]
    pub url: String,
}

/// Outgoing email through SMTP.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpSpec {
    /// Secret with keys `host`, `port`, `tls` (`none`, `starttls` or `tls`), `from`, and
    /// optionally `username` and `password`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Gateway API entry point: a `GRPCRoute` per public service (AuthService,
/// ChatService, SagaOrchestrator) for `host`, attached either to a Gateway the platform
/// team runs (`parentRef`, the production form) or to a `Gateway` the operator renders
/// (`gatewayClassName`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.parentRef) != has(self.gatewayClassName)").message(
    "gateway: set parentRef (attach the routes to an existing Gateway) or gatewayClassName \
     (the operator renders its own Gateway), exactly one"
))]
#[x_kube(validation = Rule::new("!has(self.parentRef) || !has(self.tlsSecretName)").message(
    "gateway.tlsSecretName is for the Gateway the operator renders; with parentRef, TLS is \
     configured on that Gateway's listener"
))]
pub struct GatewaySpec {
    /// Host name clients connect to (a DNS name, no wildcard): the routes' `hostnames`, the
    /// rendered listener's `hostname` and the TLS server name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// An existing Gateway to attach the routes to. It must allow routes from this
    /// namespace (`allowedRoutes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<GatewayParentRef>,
    /// GatewayClass of the `Gateway` `<name>` the operator renders, when there is no
    /// `parentRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub gateway_class_name: Option<String>,
    /// Secret (`kubernetes.io/tls`) with the certificate for `host`, for the rendered
    /// Gateway: an HTTPS listener on port 443. Absent: an HTTP listener on port 80, which
    /// Gateway API implementations serve as cleartext HTTP/2 (h2c) for GRPCRoutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Extra annotations of the rendered Gateway (e.g. cert-manager's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A Gateway the routes attach to (a Gateway API `ParentReference`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; absent: the ChatCluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The listener to attach to; absent: every listener that accepts the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    /// The listener port clients connect to: selects listeners and is the port of
    /// `status.endpoint`. Absent: every listener; the endpoint says 443 (an HTTPS
    /// listener, as production Gateways have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// `LoadBalancer` Services in front of the public services: `<name>-auth-public`,
/// `<name>-chat-public` and `<name>-saga-public`, each on its own address (what the
/// cloud's load balancer controller assigns), reported in `status.endpoints`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// Port of each Service. The traffic is the services' own cleartext HTTP/2 (h2c)
    /// unless the load balancer terminates TLS (cloud annotations, then usually 443; the
    /// `chat` CLI uses TLS for port 443).
    #[serde(default = "default_load_balancer_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `spec.loadBalancerClass`; absent: the cluster's default load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Client address ranges allowed (`spec.loadBalancerSourceRanges`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// Annotations of the Services (the cloud's load balancer options).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// gRPC port of every service (`LISTEN_ADDR`), and the load balancer's default port.
pub const GRPC_PORT: i32 = 50051;

fn default_load_balancer_port() -> i32 {
    GRPC_PORT
}

/// The ingress-nginx Ingress in front of the public services (legacy; TLS only).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(INGRESS_NEEDS_TLS).message(INGRESS_NEEDS_TLS_MESSAGE))]
pub struct IngressSpec {
    /// Host name clients connect to (a DNS name, no wildcard).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// IngressClass; absent: the cluster's default. The gRPC annotations written are
    /// ingress-nginx's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`. Required (kept optional in the type
    /// so that objects stored before it was can still be read and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations, e.g. for cert-manager.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Who may reach what, when NetworkPolicies are rendered: PostgreSQL only from the
/// services (and their migrations), NATS only from chat and notification (and its own
/// cluster), the services' gRPC port only from each other, and the public services' gRPC
/// port from the entry point.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Sources allowed to the public services' gRPC port: the ingress controller's or the
    /// Gateway's pods, e.g. `[{namespaceSelector: {matchLabels:
    /// {kubernetes.io/metadata.name: gateway-system}}}]`. Empty: any source (what a
    /// `LoadBalancer` Service needs, whose clients are outside the cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_point_from: Vec<NetworkPolicyPeer>,
    /// Sources allowed to scrape the metrics ports (Prometheus). Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// What Prometheus is told to scrape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A `monitoring.coreos.com/v1` PodMonitor `<name>-services` scraping the `metrics`
    /// port of the four services' pods. Needs the Prometheus Operator's CRDs in the
    /// cluster; turning it off deletes the PodMonitor.
    #[serde(default)]
    pub pod_monitor: bool,
    /// Extra labels of the PodMonitor, e.g. the ones a Prometheus' `podMonitorSelector`
    /// matches.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
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
    /// Where clients connect (`host:port`; the `chat` CLI's `--server`), once the entry
    /// point has an address: every public service there (gateway, ingress), or the
    /// ChatService's (loadBalancer, see `endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Per public service (`auth`, `chat`, `saga`), its `host:port`, when each has its own
    /// address (loadBalancer): `chat --server <chat> --auth-server <auth> --saga-server
    /// <saga>`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub endpoints: std::collections::BTreeMap<String, String>,
}

/// A standard Kubernetes condition (`metav1.Condition`'s shape).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
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
    /// The ChatCluster's generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Rollout state of one workload.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// The workload: a component's name, or the managed PostgreSQL's or NATS's.
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
        let pg = &self.postgres;
        let modes = [
            pg.managed.is_some(),
            pg.external.is_some(),
            pg.cloud_native_pg.is_some(),
        ];
        if modes.into_iter().filter(|m| *m).count() > 1 {
            return Err(InvalidSpec(POSTGRES_ONE_MODE.into()));
        }
        if self.nats.managed.is_some() && self.nats.external.is_some() {
            return Err(InvalidSpec(
                "spec.nats: set managed or external, not both".into(),
            ));
        }
        let entry_points = [
            self.gateway.is_some(),
            self.load_balancer.is_some(),
            self.ingress.is_some(),
        ];
        if entry_points.iter().filter(|set| **set).count() > 1 {
            return Err(InvalidSpec(ONE_ENTRY_POINT_MESSAGE.into()));
        }
        if self
            .ingress
            .as_ref()
            .is_some_and(|i| i.tls_secret_name.is_none())
        {
            return Err(InvalidSpec(
                INGRESS_NEEDS_TLS_MESSAGE.replace("ingress needs", "spec.ingress needs"),
            ));
        }
        if let Some(g) = &self.gateway {
            if g.parent_ref.is_some() == g.gateway_class_name.is_some() {
                return Err(InvalidSpec(
                    "spec.gateway: set parentRef or gatewayClassName, exactly one".into(),
                ));
            }
        }
        if self.version.trim().is_empty() {
            return Err(InvalidSpec("spec.version must not be empty".into()));
        }
        for (name, component) in [
            ("auth", &self.auth.component),
            ("chat", &self.chat),
            ("notification", &self.notification),
            ("saga", &self.saga),
        ] {
            if component.replicas < 0 {
                return Err(InvalidSpec(format!(
                    "spec.{name}.replicas must not be negative"
                )));
            }
            if let Some(a) = &component.autoscaling {
                if a.min_replicas < 1 || a.max_replicas < a.min_replicas {
                    return Err(InvalidSpec(format!(
                        "spec.{name}.autoscaling: need 1 <= minReplicas <= maxReplicas"
                    )));
                }
                let cpu_request = component
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|r| r.contains_key("cpu"));
                if !cpu_request {
                    return Err(InvalidSpec(format!(
                        "spec.{name}.autoscaling scales on CPU use relative to the CPU request: \
                         set spec.{name}.resources.requests.cpu"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The managed (single-pod) PostgreSQL settings, or `None` when an external server or
    /// CloudNativePG is used.
    pub fn managed_postgres(&self) -> Option<ManagedPostgres> {
        let pg = &self.postgres;
        match (&pg.managed, &pg.external, &pg.cloud_native_pg) {
            (Some(m), _, _) => Some(m.clone()),
            (None, None, None) => Some(ManagedPostgres::default()),
            _ => None,
        }
    }

    /// The CloudNativePG settings, when PostgreSQL is a CloudNativePG `Cluster`.
    pub fn cloud_native_pg(&self) -> Option<&CloudNativePg> {
        match (&self.postgres.managed, &self.postgres.external) {
            (None, None) => self.postgres.cloud_native_pg.as_ref(),
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> ChatClusterSpec {
        serde_json::from_value(value).expect("spec")
    }

    #[test]
    fn one_entry_point_and_an_ingress_only_with_tls() {
        let gateway = serde_json::json!({"host": "chat.example.com", "gatewayClassName": "eg"});
        let tls_ingress = serde_json::json!({"host": "chat.example.com", "tlsSecretName": "t"});
        assert_eq!(
            spec(serde_json::json!({"version": "1", "gateway": gateway})).validate(),
            Ok(())
        );
        assert_eq!(
            spec(serde_json::json!({"version": "1", "ingress": tls_ingress})).validate(),
            Ok(())
        );
        let two = spec(serde_json::json!({"version": "1", "gateway": gateway, "loadBalancer": {}}));
        assert_eq!(
            two.validate(),
            Err(InvalidSpec(ONE_ENTRY_POINT_MESSAGE.into()))
        );
        let plain =
            spec(serde_json::json!({"version": "1", "ingress": {"host": "chat.example.com"}}));
        let err = plain.validate().expect_err("an ingress without TLS");
        assert!(
            err.0.starts_with("spec.ingress needs tlsSecretName"),
            "{err}"
        );
        let neither = spec(serde_json::json!({"version": "1", "gateway": {"host": "h"}}));
        assert!(neither.validate().is_err());
    }

    #[test]
    fn the_entry_point_rules_are_in_the_crd() {
        let crd = serde_json::to_string(&<ChatCluster as kube::CustomResourceExt>::crd())
            .expect("CRD as JSON");
        for rule in [
            ONE_ENTRY_POINT,
            INGRESS_NEEDS_TLS,
            "has(self.parentRef) != has(self.gatewayClassName)",
        ] {
            let quoted = serde_json::to_string(rule).expect("rule");
            assert!(crd.contains(&quoted), "{rule}");
        }
    }
}
