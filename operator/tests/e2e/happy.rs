//! The first install and the ordinary operations: what must keep working while the
//! day-2 fixes change the reconcile.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::Job,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{PolicyRule, Role},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

const COMPONENTS: [&str; 4] = ["auth", "chat", "notification", "saga"];

/// `resourceVersion` of every object of `cluster` (and of the cluster itself), by kind/name.
async fn versions(w: &World, cluster: &str) -> Vec<(String, String)> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
    let mut out = Vec::new();
    macro_rules! collect {
        ($kind:ty, $label:expr) => {
            for o in w.api::<$kind>().list(&lp).await.expect("listing") {
                out.push((
                    format!("{} {}", $label, o.name_any()),
                    o.resource_version().unwrap_or_default(),
                ));
            }
        };
    }
    collect!(ServiceAccount, "ServiceAccount");
    collect!(Secret, "Secret");
    collect!(ConfigMap, "ConfigMap");
    collect!(Service, "Service");
    collect!(StatefulSet, "StatefulSet");
    collect!(Job, "Job");
    collect!(Deployment, "Deployment");
    collect!(PodDisruptionBudget, "PodDisruptionBudget");
    collect!(Ingress, "Ingress");
    let c = w.cluster(cluster).await;
    out.push((
        format!("ChatCluster {cluster}"),
        c.resource_version().unwrap_or_default(),
    ));
    out.sort();
    out
}

/// Triggers a reconcile without changing the spec (a label on the ChatCluster).
async fn poke(w: &World, cluster: &str, value: &str) {
    w.api::<chat_operator::crd::ChatCluster>()
        .patch(
            cluster,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"e2e/poke": value}}})),
        )
        .await
        .expect("labelling the cluster");
}

#[tokio::test]
async fn install_from_the_manifests_gates_deployments_on_migrations_and_becomes_ready() {
    if !enabled("install") {
        return;
    }
    let plane = Plane::private(false);
    let mut w = World::bare(plane, "grpc-chat").await;
    // As k8s/operator.yaml runs it: every namespace, leader election in chat-operator.
    w.start_operator(OperatorOptions {
        watch_namespace: None,
        service_account: ("chat-operator".into(), "chat-operator".into()),
        lease_name: "chat-operator-leader".into(),
        identity: "chat-operator-a".into(),
    });
    run(plane
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(repo().join("k8s/sample-chatcluster.yaml")));

    // First the infrastructure and the migrations, no Deployment before its Job succeeded.
    let jobs = w.wait_unfinished_jobs("chat", 4).await;
    for kind_name in [
        "chat-generated",
        "chat-postgres",
        "chat-nats",
        "chat-nats-headless",
    ] {
        assert!(
            w.secret(kind_name).await.is_some()
                || w.api::<StatefulSet>()
                    .get_opt(kind_name)
                    .await
                    .unwrap()
                    .is_some()
                || w.api::<Service>()
                    .get_opt(kind_name)
                    .await
                    .unwrap()
                    .is_some(),
            "{kind_name} exists"
        );
    }
    let c = w
        .wait_condition("chat", "Progressing", "True", "Migrating")
        .await;
    assert_eq!(c.status.as_ref().unwrap().observed_generation, Some(1));
    assert_eq!(condition_of(&c, "Ready").unwrap().status, "False");
    assert_eq!(condition_of(&c, "Degraded").unwrap().status, "False");
    for comp in COMPONENTS {
        assert!(w.deployment(&format!("chat-{comp}")).await.is_none());
    }

    // One migration done: only that component's Deployment appears.
    let auth_job = jobs
        .iter()
        .find(|j| j.name_any().starts_with("chat-auth-migrate-"))
        .expect("auth's migration Job");
    w.complete_job(&auth_job.name_any()).await;
    eventually("Deployment chat-auth", SETTLE, || async {
        w.deployment("chat-auth").await
    })
    .await;
    assert!(w.deployment("chat-chat").await.is_none());

    w.complete_migrations("chat", 3).await;
    for comp in COMPONENTS {
        let name = format!("chat-{comp}");
        let d = eventually(&name, SETTLE, || async { w.deployment(&name).await }).await;
        assert_eq!(
            image_of(&d),
            format!("ghcr.io/grpc-chat/{}:0.1.0", binary(comp))
        );
    }
    w.wait_condition("chat", "Progressing", "True", "RollingOut")
        .await;
    w.roll_out_all("chat").await;
    let c = w
        .wait_condition("chat", "Ready", "True", "AllComponentsReady")
        .await;
    eprintln!(
        "measure: reconciles from kubectl apply to Ready (sample, jobs and rollouts played): {}",
        w.settle(Duration::from_secs(3)).await
    );
    assert_eq!(condition_of(&c, "Progressing").unwrap().status, "False");
    assert_eq!(condition_of(&c, "Degraded").unwrap().status, "False");
    let status = c.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.endpoint.as_deref(), Some("chat.example.com:443"));
    assert!(w.api::<Ingress>().get_opt("chat").await.unwrap().is_some());
    plane.stop();
}

fn binary(component: &str) -> &'static str {
    match component {
        "auth" => "auth-service",
        "chat" => "chat-service",
        "notification" => "notification-service",
        _ => "saga-orchestrator",
    }
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing_and_drift_is_repaired() {
    if !enabled("no-op and drift") {
        return;
    }
    let w = World::new(Plane::shared(), "happy-noop").await;
    w.bring_up(
        "demo",
        json!({"version": "1.0.0",
               "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls"}}),
    )
    .await;
    w.settle(Duration::from_secs(3)).await;
    let before = versions(&w, "demo").await;
    let reconciles = w.reconciles();
    poke(&w, "demo", "1").await;
    let settled = w.settle(Duration::from_secs(3)).await;
    assert!(settled > reconciles, "the label triggered a reconcile");
    let mut after = versions(&w, "demo").await;
    // The label itself is the one write we made.
    let cluster_key = "ChatCluster demo".to_string();
    after.retain(|(k, _)| k != &cluster_key);
    let mut expected = before.clone();
    expected.retain(|(k, _)| k != &cluster_key);
    assert_eq!(
        after, expected,
        "a reconcile without a change wrote nothing"
    );
    eprintln!(
        "measure: reconciles after a no-op change: {}",
        settled - reconciles
    );

    // Drift: someone scales and re-images a Deployment, and deletes a Service.
    let before_drift = w.reconciles();
    w.api::<Deployment>()
        .patch(
            "demo-chat",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [
                {"name": "chat", "image": "evil:latest"}]}}}}),
            ),
        )
        .await
        .unwrap();
    w.api::<Service>()
        .delete("demo-auth", &DeleteParams::default())
        .await
        .unwrap();
    eventually("drift repaired", SETTLE, || async {
        let d = w.deployment("demo-chat").await?;
        let svc = w.api::<Service>().get_opt("demo-auth").await.ok()??;
        let repaired = d.spec.as_ref()?.replicas == Some(2)
            && image_of(&d) == "ghcr.io/grpc-chat/chat-service:1.0.0";
        (repaired && svc.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    let settled = w.settle(Duration::from_secs(3)).await;
    eprintln!(
        "measure: reconciles to repair two drifted objects: {}",
        settled - before_drift
    );

    // An ordinary spec edit.
    w.patch_spec("demo", json!({"chat": {"replicas": 3}})).await;
    eventually("the edit is applied", SETTLE, || async {
        let d = w.deployment("demo-chat").await?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let edited = w.settle(Duration::from_secs(3)).await;
    eprintln!(
        "measure: reconciles for a replicas edit: {}",
        edited - settled
    );
}

#[tokio::test]
async fn a_new_version_migrates_before_it_rolls_out() {
    if !enabled("upgrade") {
        return;
    }
    let w = World::new(Plane::shared(), "happy-upgrade").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    let start = w.settle(Duration::from_secs(3)).await;

    w.patch_spec("demo", json!({"version": "1.1.0"})).await;
    let jobs = w.wait_unfinished_jobs("demo", 4).await;
    assert!(jobs.iter().all(|j| {
        j.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .as_deref()
            .is_some_and(|i| i.ends_with(":1.1.0"))
    }));
    let c = w
        .wait_condition("demo", "Progressing", "True", "Migrating")
        .await;
    assert_eq!(c.status.unwrap().observed_generation, Some(2));
    let auth = w.deployment("demo-auth").await.unwrap();
    assert_eq!(image_of(&auth), "ghcr.io/grpc-chat/auth-service:1.0.0");

    for j in &jobs {
        w.complete_job(&j.name_any()).await;
    }
    eventually("the new image rolls out", SETTLE, || async {
        let d = w.deployment("demo-auth").await?;
        (image_of(&d) == "ghcr.io/grpc-chat/auth-service:1.1.0").then_some(())
    })
    .await;
    w.roll_out_all("demo").await;
    let c = w
        .wait_condition("demo", "Ready", "True", "AllComponentsReady")
        .await;
    let auth = c
        .status
        .unwrap()
        .components
        .into_iter()
        .find(|s| s.name == "auth")
        .unwrap();
    assert_eq!(
        auth.migrated_image.as_deref(),
        Some("ghcr.io/grpc-chat/auth-service:1.1.0")
    );
    let end = w.settle(Duration::from_secs(3)).await;
    eprintln!("measure: reconciles for a version upgrade: {}", end - start);
}

#[tokio::test]
async fn setting_the_version_back_rolls_back_without_migrating_again() {
    if !enabled("rollback") {
        return;
    }
    let w = World::new(Plane::shared(), "happy-rollback").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    w.patch_spec("demo", json!({"version": "1.1.0"})).await;
    w.complete_migrations("demo", 4).await;
    eventually("1.1.0 rolls out", SETTLE, || async {
        let d = w.deployment("demo-saga").await?;
        image_of(&d).ends_with(":1.1.0").then_some(())
    })
    .await;
    let jobs = w.jobs("demo").await.len();

    w.patch_spec("demo", json!({"version": "1.0.0"})).await;
    eventually("1.0.0 is back", SETTLE, || async {
        let d = w.deployment("demo-saga").await?;
        image_of(&d).ends_with(":1.0.0").then_some(())
    })
    .await;
    assert_eq!(w.jobs("demo").await.len(), jobs, "no migration ran again");
}

#[tokio::test]
async fn a_failed_migration_keeps_the_old_version() {
    if !enabled("failed migration") {
        return;
    }
    let w = World::new(Plane::shared(), "happy-failed-migration").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    w.patch_spec("demo", json!({"version": "1.1.0"})).await;
    let jobs = w.wait_unfinished_jobs("demo", 4).await;
    let chat_job = jobs
        .iter()
        .find(|j| j.name_any().starts_with("demo-chat-migrate-"))
        .unwrap();
    w.fail_job(&chat_job.name_any()).await;
    let c = w
        .wait_condition("demo", "Degraded", "True", "MigrationFailed")
        .await;
    assert_eq!(condition_of(&c, "Ready").unwrap().status, "False");
    assert!(condition_of(&c, "Degraded")
        .unwrap()
        .message
        .contains("chat"));
    // The others migrate and roll out; chat keeps serving the old version.
    for j in jobs.iter().filter(|j| j.name_any() != chat_job.name_any()) {
        w.complete_job(&j.name_any()).await;
    }
    eventually("auth rolls out 1.1.0", SETTLE, || async {
        let d = w.deployment("demo-auth").await?;
        (image_of(&d).ends_with(":1.1.0")).then_some(())
    })
    .await;
    let chat = w.deployment("demo-chat").await.unwrap();
    assert_eq!(image_of(&chat), "ghcr.io/grpc-chat/chat-service:1.0.0");
}

#[tokio::test]
async fn deleting_the_cluster_collects_what_it_owned() {
    if !enabled("garbage collection") {
        return;
    }
    let w = World::new(Plane::shared_with_controllers(), "happy-gc").await;
    w.apply_cluster(
        "demo",
        json!({"version": "1.0.0", "postgres": {"managed": {"volumePolicy": "Delete"}}}),
    )
    .await;
    w.complete_migrations("demo", 4).await;
    eventually("Deployments", SETTLE, || async {
        w.deployment("demo-saga").await
    })
    .await;
    w.delete_cluster("demo").await;
    eventually(
        "the garbage collector removes the owned objects",
        SETTLE,
        || async {
            let lp = ListParams::default().labels("app.kubernetes.io/instance=demo");
            let left = w.api::<Deployment>().list(&lp).await.ok()?.items.len()
                + w.api::<StatefulSet>().list(&lp).await.ok()?.items.len()
                + w.api::<Service>().list(&lp).await.ok()?.items.len()
                + w.api::<Job>().list(&lp).await.ok()?.items.len()
                + w.api::<ConfigMap>().list(&lp).await.ok()?.items.len()
                + w.api::<PodDisruptionBudget>()
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len()
                + w.api::<Secret>().list(&lp).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
}

/// The rules of the ClusterRole in `k8s/operator.yaml`, as a Role: what the chart's
/// `watchNamespace` mode grants.
fn namespaced_rules() -> Vec<PolicyRule> {
    let text = std::fs::read_to_string(repo().join("k8s/operator.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ClusterRole" {
            return serde_json::from_value(v["rules"].clone()).unwrap();
        }
    }
    panic!("k8s/operator.yaml has no ClusterRole");
}

#[tokio::test]
async fn namespaced_mode_needs_only_a_role_in_its_namespace() {
    if !enabled("namespaced mode") {
        return;
    }
    let plane = Plane::shared();
    let mut w = World::bare(plane, "happy-namespaced").await;
    let other = World::bare(plane, "happy-namespaced-other").await;
    let ns = w.ns.clone();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "ns-operator"}})).unwrap();
    w.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mut role: Role =
        serde_json::from_value(json!({"metadata": {"name": "ns-operator"}})).unwrap();
    let mut rules = namespaced_rules();
    rules.push(
        serde_json::from_value(json!({"apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"], "verbs": ["get", "create", "update"]}))
        .unwrap(),
    );
    role.rules = Some(rules);
    w.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = serde_json::from_value(json!({
        "metadata": {"name": "ns-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ns-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": "ns-operator", "namespace": ns}],
    }))
    .unwrap();
    w.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    w.start_operator(OperatorOptions {
        watch_namespace: Some(ns.clone()),
        service_account: (ns.clone(), "ns-operator".into()),
        lease_name: "chat-operator-leader".into(),
        identity: "ns-operator-a".into(),
    });
    other
        .apply_cluster("demo", json!({"version": "1.0.0"}))
        .await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    let untouched = other.cluster("demo").await;
    assert!(
        untouched.status.is_none(),
        "the other namespace is not watched"
    );
    assert!(other.secret("demo-generated").await.is_none());
}

#[tokio::test]
async fn the_lease_hands_over_to_the_standby() {
    if !enabled("leader hand-over") {
        return;
    }
    let plane = Plane::shared();
    let mut w = World::bare(plane, "happy-leader").await;
    let ns = w.ns.clone();
    let options = |identity: &str| OperatorOptions {
        identity: identity.into(),
        ..OperatorOptions::for_namespace(&ns)
    };
    w.start_operator(options("leader-a"));
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "chat-operator");
    let lease_name = OperatorOptions::for_namespace(&ns).lease_name;
    let holder = || async {
        leases
            .get_opt(&lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually("a takes the lease", SETTLE, || async {
        (holder().await.as_deref() == Some("leader-a")).then_some(())
    })
    .await;
    w.start_operator(options("leader-b"));
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    assert_eq!(w.operators[1].reconciles(), 0, "the standby does not act");

    w.operators[0].terminate();
    eventually("b takes the lease", SETTLE, || async {
        (holder().await.as_deref() == Some("leader-b")).then_some(())
    })
    .await;
    w.patch_spec("demo", json!({"chat": {"replicas": 4}})).await;
    eventually("b reconciles the change", SETTLE, || async {
        let d = w.deployment("demo-chat").await?;
        (d.spec?.replicas == Some(4)).then_some(())
    })
    .await;
    assert!(w.operators[1].reconciles() > 0);
}
