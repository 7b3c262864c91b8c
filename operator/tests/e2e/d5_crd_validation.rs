//! Defect 5: the CRD accepted what fails later, and `kubectl apply` warned about
//! `uint32`/`uint64` formats. The API server now refuses at admission.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn d5_the_crd_refuses_what_would_fail_later() {
    if !enabled("defect 5: CRD validation") {
        return;
    }
    let plane = Plane::shared();
    assert!(
        !plane.install_stderr.contains("Warning"),
        "`kubectl apply --server-side -k k8s/` warned: {}",
        plane.install_stderr
    );
    let w = World::bare(plane, "d5-crd-validation").await;
    let cases = [
        (
            json!({"version": "1", "nats": {"managed": {}, "external": {"url": "nats://x:4222"}}}),
            "managed or external",
        ),
        (
            json!({"version": "1", "postgres": {"managed": {},
                   "external": {"urlSecret": {"name": "db", "key": "url"}}}}),
            "set only one of managed, cloudNativePG and external",
        ),
        (
            json!({"version": "1", "postgres": {"cloudNativePG": {}, "managed": {}}}),
            "set only one of managed, cloudNativePG and external",
        ),
        (
            json!({"version": "1", "postgres": {"cloudNativePG": {"storage": {"size": "big"}}}}),
            "quantity",
        ),
        (
            json!({"version": "1", "images": {"pullPolicy": "Sometimes"}}),
            "Unsupported value",
        ),
        (
            json!({"version": "1", "postgres": {"managed": {"storage": "ten gigs"}}}),
            "quantity",
        ),
        (
            json!({"version": "1", "nats": {"managed": {"storage": "0"}}}),
            "quantity",
        ),
        (
            json!({"version": "1", "nats": {"managed": {"replicas": 2}}}),
            "replicas",
        ),
        (json!({"version": ""}), "version"),
        (
            json!({"version": "1", "auth": {"bcryptCost": 3}}),
            "bcryptCost",
        ),
        (
            json!({"version": "1", "ingress": {"host": "Not A Host", "tlsSecretName": "t"}}),
            "host",
        ),
        (
            json!({"version": "1", "chat": {"replicas": -1}}),
            "replicas",
        ),
    ];
    for (spec, expected) in cases {
        let out = w.dry_run("demo", spec.clone());
        assert!(
            out.as_ref().is_err_and(|e| e.contains(expected)),
            "{spec} should be refused with \"{expected}\": {out:?}"
        );
    }
    // What the documentation shows is accepted, without warnings.
    let sample = std::fs::read_to_string(repo().join("k8s/sample-chatcluster.yaml")).unwrap();
    let sample: Value = serde_yaml::from_str(&sample).unwrap();
    let accepted = w.dry_run("demo", sample["spec"].clone());
    assert!(
        accepted
            .as_ref()
            .is_ok_and(|warnings| !warnings.contains("Warning")),
        "{accepted:?}"
    );
}
