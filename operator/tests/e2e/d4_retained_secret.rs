//! Defect 4: deleting and re-creating a ChatCluster with the default `volumePolicy:
//! Retain` kept the PostgreSQL volume but garbage-collected the generated Secret; the new
//! one had a new password that the retained data directory never had. Runs on the plane
//! with the garbage collector and the StatefulSet controller.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, PersistentVolumeClaim},
};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn d4_recreating_a_cluster_keeps_the_retained_database_password() {
    if !enabled("defect 4: re-create with Retain") {
        return;
    }
    let w = World::new(Plane::shared_with_controllers(), "d4-recreate-retain").await;
    w.apply_cluster("demo", json!({"version": "1.0.0"})).await;
    let secret = eventually("the generated Secret", SETTLE, || async {
        w.secret("demo-generated").await
    })
    .await;
    let password = secret_value(&secret, "postgres-password");
    let claims = w.api::<PersistentVolumeClaim>();
    eventually("the PostgreSQL volume", SETTLE, || async {
        claims.get_opt("data-demo-postgres-0").await.ok().flatten()
    })
    .await;

    w.delete_cluster("demo").await;
    eventually("the garbage collector ran", SETTLE, || async {
        let sts = w.api::<StatefulSet>().get_opt("demo-postgres").await.ok()?;
        let cm = w.api::<ConfigMap>().get_opt("demo-config").await.ok()?;
        (sts.is_none() && cm.is_none()).then_some(())
    })
    .await;
    // Give the collector time for the rest of what it would collect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        claims
            .get_opt("data-demo-postgres-0")
            .await
            .unwrap()
            .is_some(),
        "Retain keeps the volume"
    );
    assert!(
        w.secret("demo-generated").await.is_some(),
        "the password of the retained volume is kept with it"
    );

    w.apply_cluster("demo", json!({"version": "1.0.0"})).await;
    w.wait_unfinished_jobs("demo", 4).await;
    let again = w.secret("demo-generated").await.unwrap();
    assert_eq!(secret_value(&again, "postgres-password"), password);
}
