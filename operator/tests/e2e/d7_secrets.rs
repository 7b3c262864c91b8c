//! Defect 7: a changed Secret never reached the pods (rotating the generated service
//! secret, a user's SMTP Secret or the signing key left every pod template unchanged),
//! and the CRD could not name the previous public key that a signing-key rotation needs.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{
    api::{Patch, PatchParams},
    ResourceExt,
};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn d7_a_changed_secret_rolls_the_pods_that_read_it() {
    if !enabled("defect 7: changed secrets") {
        return;
    }
    let w = World::new(Plane::shared(), "d7-secret-rotation").await;
    let smtp = [
        ("host", "smtp.example.com"),
        ("port", "587"),
        ("tls", "starttls"),
        ("from", "chat@example.com"),
        ("password", "one"),
    ];
    put_secret(&w, "mail", &smtp).await;
    w.bring_up(
        "demo",
        json!({"version": "1.0.0", "smtp": {"secretName": "mail"}}),
    )
    .await;
    let templates = || async {
        let mut out = BTreeMap::new();
        for c in ["auth", "chat", "notification", "saga"] {
            let d = w.deployment(&format!("demo-{c}")).await.unwrap();
            out.insert(c, template_annotations(&d));
        }
        out
    };
    let before = templates().await;

    // The user's SMTP password: only the notifier reads it.
    let start = w.settle(Duration::from_secs(3)).await;
    let mut rotated = smtp;
    rotated[4] = ("password", "two");
    put_secret(&w, "mail", &rotated).await;
    let after = eventually("the notifier's pods roll", SETTLE, || async {
        let now = templates().await;
        (now["notification"] != before["notification"]).then_some(now)
    })
    .await;
    for c in ["auth", "chat", "saga"] {
        assert_eq!(after[c], before[c], "{c} does not read the SMTP Secret");
    }
    eprintln!(
        "measure: reconciles for a changed user Secret: {}",
        w.settle(Duration::from_secs(3)).await - start
    );

    // The generated service secret: every service reads it.
    let generated = w.secret("demo-generated").await.unwrap();
    let mut data: BTreeMap<String, ByteString> = generated.data.clone().unwrap();
    data.insert(
        "service-secret".into(),
        ByteString(b"rotated-by-a-person".to_vec()),
    );
    w.api::<Secret>()
        .patch(
            "demo-generated",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": data})),
        )
        .await
        .unwrap();
    eventually("every service's pods roll", SETTLE, || async {
        let now = templates().await;
        ["auth", "chat", "notification", "saga"]
            .iter()
            .all(|c| now[c] != after[c])
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn d7_the_signing_key_rotates_through_the_crd() {
    if !enabled("defect 7: signing-key rotation") {
        return;
    }
    let w = World::new(Plane::shared(), "d7-signing-key").await;
    w.bring_up("demo", json!({"version": "1.0.0"})).await;
    let generated = w.secret("demo-generated").await.unwrap();
    let public = secret_value(&generated, "jwt-public-key");
    assert!(public.contains("BEGIN PUBLIC KEY"), "{public}");
    let chat_before = template_annotations(&w.deployment("demo-chat").await.unwrap());

    // The documented rotation: a new key in a Secret of one's own, the old public key
    // still accepted until every token it signed has expired.
    let new_key = chat_operator::secrets::signing_key_pem().unwrap();
    put_secret(&w, "signing-2", &[("key", &new_key)]).await;
    w.patch_spec(
        "demo",
        json!({"signingKey": {"name": "signing-2", "key": "key"},
               "auth": {"previousPublicKey": {"name": "demo-generated", "key": "jwt-public-key"}}}),
    )
    .await;
    let auth = eventually("auth signs with the new key", SETTLE, || async {
        let d = w.deployment("demo-auth").await?;
        let key = env_of(&d, "JWT_SIGNING_KEY")?;
        (key["valueFrom"]["secretKeyRef"]["name"] == "signing-2").then_some(d)
    })
    .await;
    assert_eq!(
        env_of(&auth, "JWT_PREVIOUS_PUBLIC_KEY").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "demo-generated", "key": "jwt-public-key", "optional": false})
    );
    assert_eq!(
        template_annotations(&w.deployment("demo-chat").await.unwrap()),
        chat_before,
        "only auth reads the signing key"
    );

    // After the access-token lifetime: the old key is dropped.
    w.patch_spec("demo", json!({"auth": {"previousPublicKey": null}}))
        .await;
    eventually("the previous key is dropped", SETTLE, || async {
        let d = w.deployment("demo-auth").await?;
        env_of(&d, "JWT_PREVIOUS_PUBLIC_KEY")
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn d7_fixing_the_database_secret_content_after_a_failed_migration_retries_it() {
    if !enabled("defect 7: fixing the database secret content") {
        return;
    }
    let w = World::new(Plane::shared(), "d7-fix-secret-content").await;
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

    let failed: Vec<String> = w.jobs("demo").await.iter().map(|j| j.name_any()).collect();
    // The fix: the Secret's content; the reference stays.
    put_secret(
        &w,
        "db-bad",
        &[("url", "postgres://chat:right@db.example:5432")],
    )
    .await;
    let again = w.wait_unfinished_jobs("demo", 4).await;
    assert!(again.iter().all(|j| !failed.contains(&j.name_any())));
    for j in &again {
        w.complete_job(&j.name_any()).await;
    }
    eventually("the services roll out", SETTLE, || async {
        w.deployment("demo-chat").await
    })
    .await;
}
