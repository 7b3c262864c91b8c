//! Defect 8: no Kubernetes Events at all, a 15 KB API response in `Degraded.message`, and
//! pods in CrashLoopBackOff or ImagePullBackOff, rollouts past their progress deadline or
//! migrations that never start left `Progressing=True` and `Degraded=False` forever. The
//! kubelet and the Deployment controller are played by writing pod and Deployment status.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, PodTemplateSpec},
    events::v1::Event,
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

/// A pod as the ReplicaSet or Job controller would create it from `template`, then given
/// a waiting container by playing the kubelet.
async fn stuck_pod(
    w: &World,
    name: &str,
    template: &PodTemplateSpec,
    extra_labels: &[(&str, &str)],
    reason: &str,
) {
    let mut labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in extra_labels {
        labels.insert(k.to_string(), v.to_string());
    }
    let spec = template.spec.clone().unwrap();
    let container = spec.containers[0].name.clone();
    let image = spec.containers[0].image.clone().unwrap();
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let pods = w.api::<Pod>();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": container, "image": image, "imageID": "", "ready": false,
            "restartCount": 4, "started": false,
            "state": {"waiting": {"reason": reason, "message": format!("{reason}: the kubelet gave up for now")}},
        }]}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn d8_failing_pods_stuck_rollouts_and_stuck_migrations_are_degraded_with_events() {
    if !enabled("defect 8: status and events") {
        return;
    }
    let w = World::new(Plane::shared(), "d8-status-events").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;

    // A service pod in CrashLoopBackOff.
    let auth = w.deployment("demo-auth").await.unwrap();
    stuck_pod(
        &w,
        "demo-auth-7d4b9c-x1",
        &auth.spec.unwrap().template,
        &[],
        "CrashLoopBackOff",
    )
    .await;
    let c = w
        .wait_for("demo", "Degraded for the crash-looping pod", |c| {
            condition_of(c, "Degraded")
                .is_some_and(|d| d.status == "True" && d.message.contains("CrashLoopBackOff"))
        })
        .await;
    assert_short_messages(&c);

    // A rollout past its progress deadline.
    let chat = w.deployment("demo-chat").await.unwrap();
    w.api::<Deployment>()
        .patch_status(
            "demo-chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {
                "observedGeneration": chat.metadata.generation,
                "conditions": [{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"demo-chat-5d8\" has timed out progressing.",
                    "lastUpdateTime": now(), "lastTransitionTime": now()}]}})),
        )
        .await
        .unwrap();
    w.wait_for("demo", "Degraded for the stuck rollout", |c| {
        degraded_message(c).contains("progress deadline")
    })
    .await;

    // A migration whose pod never starts.
    w.patch_spec("demo", json!({"version": "1.1.0"})).await;
    let jobs = w.wait_unfinished_jobs("demo", 4).await;
    let saga = jobs
        .iter()
        .find(|j| j.name_any().starts_with("demo-saga-migrate-"))
        .unwrap();
    stuck_pod(
        &w,
        &format!("{}-abcde", saga.name_any()),
        &saga.spec.as_ref().unwrap().template,
        &[("batch.kubernetes.io/job-name", &saga.name_any())],
        "ImagePullBackOff",
    )
    .await;
    let c = w
        .wait_for(
            "demo",
            "Degraded for the migration that never starts",
            |c| degraded_message(c).contains("ImagePullBackOff"),
        )
        .await;
    assert_short_messages(&c);

    // And all of it was told as Events on the ChatCluster.
    let events = w.api::<Event>().list(&ListParams::default()).await.unwrap();
    let about: Vec<&Event> = events
        .items
        .iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ChatCluster") && r.name.as_deref() == Some("demo")
            })
        })
        .collect();
    let reasons: Vec<String> = about.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(
        about.iter().any(|e| e.type_.as_deref() == Some("Warning")),
        "{reasons:?}"
    );
    assert!(
        about.iter().any(|e| e.type_.as_deref() == Some("Normal")),
        "{reasons:?}"
    );
    for e in &about {
        assert!(e.note.as_deref().unwrap_or_default().len() <= 1024);
    }
}
