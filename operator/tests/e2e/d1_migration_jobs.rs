//! Defect 1: a spec edit while a migration Job existed wedged the whole reconcile (the
//! Job's pod template is immutable; the name hashed only the image), even after the Job
//! succeeded, and nothing after the Jobs was applied meanwhile. The same wedge followed
//! fixing the database Secret after a failed migration.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn d1_a_spec_edit_during_a_migration_replaces_the_job_instead_of_wedging() {
    if !enabled("defect 1: spec edit during a migration") {
        return;
    }
    let w = World::new(Plane::shared(), "d1-edit-during-migration").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    w.patch_spec("demo", json!({"version": "1.1.0"})).await;
    let first = w.wait_unfinished_jobs("demo", 4).await;
    let first_auth = first
        .iter()
        .find(|j| j.name_any().starts_with("demo-auth-migrate-"))
        .unwrap()
        .name_any();

    // Edit what the Job's pod template carries, and something applied after the Jobs.
    w.patch_spec(
        "demo",
        json!({"auth": {"resources": {"requests": {"cpu": "200m"}}},
               "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls"}}),
    )
    .await;
    eventually("the Ingress is applied meanwhile", SETTLE, || async {
        w.api::<k8s_openapi::api::networking::v1::Ingress>()
            .get_opt("demo")
            .await
            .ok()
            .flatten()
    })
    .await;
    let jobs = eventually("auth's Job is replaced", SETTLE, || async {
        let jobs: Vec<Job> = w
            .jobs("demo")
            .await
            .into_iter()
            .filter(|j| !job_finished(j) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let auth = jobs
            .iter()
            .find(|j| j.name_any().starts_with("demo-auth-migrate-"))?;
        let cpu = auth.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("cpu")
            .cloned();
        (auth.name_any() != first_auth && cpu.is_some_and(|c| c.0 == "200m") && jobs.len() == 4)
            .then_some(jobs)
    })
    .await;
    let c = w.cluster("demo").await;
    assert_ne!(
        condition_of(&c, "Degraded").unwrap().status,
        "True",
        "{}",
        degraded_message(&c)
    );

    for j in &jobs {
        w.complete_job(&j.name_any()).await;
    }
    eventually(
        "auth rolls out 1.1.0 with the new resources",
        SETTLE,
        || async {
            let d = w.deployment("demo-auth").await?;
            let cpu = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("cpu")
                .cloned()?;
            (image_of(&d).ends_with(":1.1.0") && cpu.0 == "200m").then_some(())
        },
    )
    .await;
    w.roll_out_all("demo").await;
    w.wait_condition("demo", "Ready", "True", "AllComponentsReady")
        .await;
}

#[tokio::test]
async fn d1_fixing_the_database_secret_after_a_failed_migration_retries_it() {
    if !enabled("defect 1: fixing the database secret") {
        return;
    }
    let w = World::new(Plane::shared(), "d1-fix-database-secret").await;
    put_secret(&w, "db-bad", &[("url", "postgres://nobody@nowhere:5432")]).await;
    w.apply_cluster(
        "demo",
        json!({"version": "1.0.0",
               "postgres": {"external": {"urlSecret": {"name": "db-bad", "key": "url"}}},
               "nats": {"external": {"url": "nats://nats.example:4222"}}}),
    )
    .await;
    for j in w.wait_unfinished_jobs("demo", 4).await {
        w.fail_job(&j.name_any()).await;
    }
    w.wait_condition("demo", "Degraded", "True", "MigrationFailed")
        .await;

    // The fix: another Secret.
    put_secret(&w, "db-good", &[("url", "postgres://chat@db.example:5432")]).await;
    w.patch_spec(
        "demo",
        json!({"postgres": {"external": {"urlSecret": {"name": "db-good", "key": "url"}}}}),
    )
    .await;
    let retried = w.wait_unfinished_jobs("demo", 4).await;
    for j in &retried {
        assert_eq!(
            job_env(j, "POSTGRES_URL").unwrap()["valueFrom"]["secretKeyRef"]["name"],
            "db-good"
        );
    }
    w.wait_condition("demo", "Progressing", "True", "Migrating")
        .await;

    for j in &retried {
        w.complete_job(&j.name_any()).await;
    }
    eventually("the services roll out", SETTLE, || async {
        w.deployment("demo-chat").await
    })
    .await;
}
