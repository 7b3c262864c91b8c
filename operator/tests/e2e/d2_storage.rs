//! Defect 2: growing `postgres.managed.storage` (or NATS storage, or changing a
//! storageClassName) bricked the reconcile: `volumeClaimTemplates` are immutable, the
//! StatefulSets were applied first, and a following `version` bump started no migration.
//! Now the claims are expanded where the StorageClass allows it, the template is left
//! alone, and what cannot be done (shrinking, another class) is refused at admission.
//! Runs on the plane with the StatefulSet controller (it creates the claims); the test
//! plays the volume binder.

use k8s_openapi::api::{
    apps::v1::StatefulSet, core::v1::PersistentVolumeClaim, storage::v1::StorageClass,
};
use kube::{
    api::{Api, Patch, PatchParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

async fn storage_class(w: &World, name: &str, expandable: bool) {
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "e2e.example.com/none",
        "allowVolumeExpansion": expandable,
    }))
    .unwrap();
    Api::<StorageClass>::all(w.client.clone())
        .patch(name, &PatchParams::apply(USER).force(), &Patch::Apply(&sc))
        .await
        .unwrap();
}

/// Plays the volume binder: the claim is bound to a volume of its requested size.
async fn bind(w: &World, pvc: &str) -> PersistentVolumeClaim {
    let claims = w.api::<PersistentVolumeClaim>();
    let claim = eventually(&format!("PVC {pvc}"), SETTLE, || async {
        claims.get_opt(pvc).await.ok().flatten()
    })
    .await;
    let size = claim
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"]
        .clone();
    claims
        .patch(
            pvc,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"volumeName": format!("pv-{pvc}")}})),
        )
        .await
        .unwrap();
    claims
        .patch_status(
            pvc,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Bound",
                "accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}}})),
        )
        .await
        .unwrap()
}

fn requested(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"]
        .0
        .clone()
}

#[tokio::test]
async fn d2_growing_storage_expands_the_volumes_and_keeps_reconciling() {
    if !enabled("defect 2: growing storage") {
        return;
    }
    let w = World::new(Plane::shared_with_controllers(), "d2-grow-storage").await;
    storage_class(&w, "d2-expandable", true).await;
    storage_class(&w, "d2-fixed", false).await;
    w.apply_cluster(
        "demo",
        json!({"version": "1.0.0",
               "postgres": {"managed": {"storage": "1Gi", "storageClassName": "d2-expandable"}},
               "nats": {"managed": {"replicas": 1, "storage": "1Gi", "storageClassName": "d2-fixed"}}}),
    )
    .await;
    w.complete_migrations("demo", 4).await;
    bind(&w, "data-demo-postgres-0").await;
    bind(&w, "data-demo-nats-0").await;

    // What cannot be done is refused at admission, with a message that says why.
    let shrink = w.dry_run(
        "demo",
        json!({"version": "1.0.0",
               "postgres": {"managed": {"storage": "500Mi", "storageClassName": "d2-expandable"}},
               "nats": {"managed": {"replicas": 1, "storage": "1Gi", "storageClassName": "d2-fixed"}}}),
    );
    assert!(
        shrink.as_ref().is_err_and(|e| e.contains("shrink")),
        "{shrink:?}"
    );
    let reclass = w.dry_run(
        "demo",
        json!({"version": "1.0.0",
               "postgres": {"managed": {"storage": "1Gi", "storageClassName": "other"}},
               "nats": {"managed": {"replicas": 1, "storage": "1Gi", "storageClassName": "d2-fixed"}}}),
    );
    assert!(
        reclass
            .as_ref()
            .is_err_and(|e| e.contains("storageClassName")),
        "{reclass:?}"
    );

    // Grow both volumes and upgrade in the same edit.
    w.patch_spec(
        "demo",
        json!({"version": "1.1.0", "postgres": {"managed": {"storage": "2Gi"}},
               "nats": {"managed": {"storage": "2Gi"}}}),
    )
    .await;
    let claims = w.api::<PersistentVolumeClaim>();
    eventually("the PostgreSQL volume is expanded", SETTLE, || async {
        let pvc = claims.get("data-demo-postgres-0").await.ok()?;
        (requested(&pvc) == "2Gi").then_some(())
    })
    .await;
    let jobs = w.wait_unfinished_jobs("demo", 4).await;
    assert!(jobs.iter().all(|j| j.name_any().contains("migrate")));
    // The class that cannot expand: reported, not retried into a wedge.
    let c = w
        .wait_for("demo", "the refused expansion in the status", |c| {
            degraded_message(c).contains("data-demo-nats-0")
        })
        .await;
    assert_short_messages(&c);
    let message = degraded_message(&c);
    assert!(message.contains("cannot grow from 1Gi to 2Gi"), "{message}");
    assert_eq!(
        requested(&claims.get("data-demo-nats-0").await.unwrap()),
        "1Gi"
    );
    // The StatefulSet's claim template is left as it was created.
    let sts = w.api::<StatefulSet>().get("demo-postgres").await.unwrap();
    let template = &sts.spec.unwrap().volume_claim_templates.unwrap()[0];
    assert_eq!(
        template
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
}
