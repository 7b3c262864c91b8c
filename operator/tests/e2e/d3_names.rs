//! Defect 3: a ChatCluster name over 33 characters could never reconcile (a derived
//! Job's name, copied into a pod label, exceeded 63 characters). The CRD refuses it.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn d3_a_name_too_long_for_the_derived_objects_is_refused_at_apply() {
    if !enabled("defect 3: long names") {
        return;
    }
    let w = World::new(Plane::shared(), "d3-long-names").await;
    let too_long = "a".repeat(34);
    let refused = w.dry_run(&too_long, json!({"version": "1.0.0"}));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("33")),
        "{refused:?}"
    );
    // The longest accepted name gets every derived object.
    let longest = format!("x{}", "y".repeat(32));
    w.apply_cluster(&longest, json!({"version": "1.0.0"})).await;
    w.complete_migrations(&longest, 4).await;
    eventually("the Deployments", SETTLE, || async {
        w.deployment(&format!("{longest}-notification")).await
    })
    .await;
    let c = w
        .wait_condition(&longest, "Progressing", "True", "RollingOut")
        .await;
    assert_eq!(condition_of(&c, "Degraded").unwrap().status, "False");
}
