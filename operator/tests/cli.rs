//! The two outputs people read without a cluster: the CRD and `render`. Both are checked
//! against files in the repository, so a change to the types shows up in review as a
//! change to `k8s/crd.yaml` and to the rendered sample.

use std::path::PathBuf;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Set `UPDATE_EXPECT=1` to rewrite the checked-in files from the current code.
fn check(path: &str, actual: &str) {
    let file = repo(path);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap();
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{path} is stale: run `UPDATE_EXPECT=1 cargo test -p chat-operator --test cli` (or `chat-operator crd > k8s/crd.yaml`)"
    );
}

#[test]
fn checked_in_crd_is_the_generated_one() {
    check("k8s/crd.yaml", &chat_operator::crd_yaml().unwrap());
}

#[test]
fn rendering_the_sample_gives_the_expected_objects() {
    let sample = std::fs::read_to_string(repo("k8s/sample-chatcluster.yaml")).unwrap();
    let rendered = chat_operator::render_yaml(&sample).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            format!(
                "{} {}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        kinds.contains(&"Deployment chat-auth".to_string()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"Ingress chat".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"StatefulSet chat-postgres".to_string()),
        "{kinds:?}"
    );
    check("operator/tests/expected/sample-rendered.yaml", &rendered);
}

#[test]
fn the_binary_prints_the_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        chat_operator::crd_yaml().unwrap()
    );
}

#[test]
fn the_chart_ships_the_same_crd() {
    check(
        "charts/chat-operator/crds/crd.yaml",
        &chat_operator::crd_yaml().unwrap(),
    );
}
