//! Defect 9: one object the API server refused stopped every object after it. Here an
//! admission policy of the cluster's admins refuses the managed PostgreSQL and NATS
//! StatefulSets; the migrations, Deployments and PDBs must go ahead regardless.

use k8s_openapi::api::{apps::v1::StatefulSet, events::v1::Event};
use kube::{
    api::{ListParams, PostParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn d9_one_refused_object_does_not_stop_the_others() {
    if !enabled("defect 9: independent applies") {
        return;
    }
    let plane = Plane::shared();
    let w = World::new(plane, "d9-independent-applies").await;
    // A policy of the cluster's admins: StatefulSets here only run images from ghcr.io
    // (the managed PostgreSQL and NATS come from Docker Hub).
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "d9-ghcr-only"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["statefulsets"]}]},
            "validations": [{
                "expression": "object.spec.template.spec.containers.all(c, c.image.startsWith('ghcr.io/'))",
                "message": "images must come from ghcr.io"}],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "d9-ghcr-only"},
        "spec": {"policyName": "d9-ghcr-only", "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels":
                {"kubernetes.io/metadata.name": w.ns}}}},
    });
    for object in [policy, binding] {
        let mut cmd = plane.kubectl();
        cmd.args(["apply", "--server-side", "-f", "-"]);
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(object.to_string().as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    // The policy is in force once a probe is refused.
    let probe: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "probe",
            "template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "docker.io/library/busybox"}]}}},
    }))
    .unwrap();
    eventually("the policy is in force", SETTLE, || async {
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        w.api::<StatefulSet>()
            .create(&dry, &probe)
            .await
            .is_err()
            .then_some(())
    })
    .await;

    w.apply_cluster("demo", json!({"version": "1.0.0"})).await;
    // Everything else goes ahead: migrations, then the services.
    let jobs = w.wait_unfinished_jobs("demo", 4).await;
    let c = w
        .wait_for("demo", "the refused objects in the status", |c| {
            let m = degraded_message(c);
            m.contains("StatefulSet demo-postgres") && m.contains("ghcr.io")
        })
        .await;
    assert_eq!(condition_of(&c, "Degraded").unwrap().reason, "ApplyFailed");
    assert_short_messages(&c);
    for j in &jobs {
        w.complete_job(&j.name_any()).await;
    }
    eventually("the Deployments and PDBs", SETTLE, || async {
        w.deployment("demo-saga").await?;
        w.api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>()
            .get_opt("demo-saga")
            .await
            .ok()
            .flatten()
    })
    .await;
    let events = w.api::<Event>().list(&ListParams::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning")
                && e.note
                    .as_deref()
                    .unwrap_or_default()
                    .contains("demo-postgres")),
        "a Warning event names the refused object"
    );
}
