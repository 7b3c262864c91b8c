//! What the workloads' own controllers and the kubelet say about them, turned into
//! [`Issue`]s: pods that cannot start or keep crashing, rollouts past their progress
//! deadline, migration Jobs whose pod never starts, GRPCRoutes a Gateway refused.
//!
//! Without this the status only counted ready replicas, so a crash-looping service or an
//! image that cannot be pulled left `Progressing=True` and `Degraded=False` forever. Pure
//! functions of the API objects, so each rule is unit-tested on objects as the API server
//! returns them; the reconcile lists the cluster's pods once per pass.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::ResourceExt;

use crate::status::{truncate, Issue, IssueKind};

/// Waiting reasons of a container that will not get better on its own.
pub const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What the Gateway implementation says of a GRPCRoute (`status.parents[]`): a parent that
/// did not accept it (`Accepted=False`: the listener does not allow the namespace, the
/// hostname does not match, no such listener) or cannot use its backend
/// (`ResolvedRefs=False`). The rendered `status.endpoint` does not work then, so it is
/// `Degraded`, in the gateway's words. A route without status (no implementation has
/// looked at it yet) is no issue.
pub fn route_issue(route: &serde_json::Value) -> Option<Issue> {
    let name = route["metadata"]["name"].as_str().unwrap_or_default();
    let parents = route["status"]["parents"].as_array()?;
    parents.iter().find_map(|parent| {
        let conditions = parent["conditions"].as_array()?;
        let refused = conditions.iter().find(|c| {
            c["status"] == "False" && (c["type"] == "Accepted" || c["type"] == "ResolvedRefs")
        })?;
        let gateway = &parent["parentRef"];
        let gateway = match gateway["namespace"].as_str() {
            Some(ns) => format!("{ns}/{}", gateway["name"].as_str().unwrap_or_default()),
            None => gateway["name"].as_str().unwrap_or_default().to_string(),
        };
        let what = if refused["type"] == "Accepted" {
            "is not accepted by"
        } else {
            "cannot reach its backend through"
        };
        Some(Issue::new(
            IssueKind::RouteNotAccepted,
            truncate(
                &format!(
                    "GRPCRoute {name} {what} Gateway {gateway}: {}: {}",
                    refused["reason"].as_str().unwrap_or_default(),
                    refused["message"].as_str().unwrap_or_default()
                ),
                200,
            ),
        ))
    })
}

/// The label the Job controller puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// `(reason, message)` of the first container of `pod` waiting for a stuck reason.
fn stuck_container(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        if STUCK_REASONS.contains(&reason.as_str()) {
            return Some((reason, waiting.message.clone().unwrap_or_default()));
        }
    }
    None
}

/// Issues about the cluster's pods. `running_jobs`: the migration Jobs still under way
/// (the pods of older Jobs are history, not a problem).
pub fn pod_issues(pods: &[Pod], running_jobs: &[String]) -> Vec<Issue> {
    // (kind, component, reason) -> (pods, first pod, its message)
    let mut groups: BTreeMap<(IssueKind, String, String), (usize, String, String)> =
        BTreeMap::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some((reason, message)) = stuck_container(pod) else {
            continue;
        };
        let labels = pod.labels();
        let component = labels.get(COMPONENT_LABEL).cloned().unwrap_or_default();
        let (kind, component) = match labels.get(JOB_NAME_LABEL) {
            Some(job) if running_jobs.contains(job) => (
                IssueKind::MigrationStuck,
                component
                    .strip_suffix("-migrate")
                    .unwrap_or(&component)
                    .to_string(),
            ),
            Some(_) => continue,
            None => (IssueKind::PodsFailing, component),
        };
        let entry = groups
            .entry((kind, component, reason))
            .or_insert_with(|| (0, pod.name_any(), message));
        entry.0 += 1;
    }
    groups
        .into_iter()
        .map(|((kind, component, reason), (count, pod, message))| {
            let what = match kind {
                IssueKind::MigrationStuck => format!("the migration of {component} cannot start"),
                _ => component,
            };
            let more = if count > 1 {
                format!(" (and {} more pods)", count - 1)
            } else {
                String::new()
            };
            let detail = if message.is_empty() {
                String::new()
            } else {
                format!(": {}", truncate(&message, 120))
            };
            Issue::new(kind, format!("{what}: pod {pod} {reason}{detail}{more}"))
        })
        .collect()
}

/// An issue when the Deployment controller gave up on the current rollout: past its
/// progress deadline, or unable to create pods (`ReplicaFailure`, e.g. a quota).
pub fn deployment_issue(d: &Deployment) -> Option<Issue> {
    let status = d.status.as_ref()?;
    if status.observed_generation < d.metadata.generation {
        // The controller has not seen the current spec: its conditions are about the last.
        return None;
    }
    let conditions = status.conditions.as_ref()?;
    let name = d.name_any();
    for c in conditions {
        let reason = c.reason.clone().unwrap_or_default();
        let message = truncate(c.message.as_deref().unwrap_or_default(), 160);
        if c.type_ == "Progressing" && c.status == "False" && reason == "ProgressDeadlineExceeded" {
            return Some(Issue::new(
                IssueKind::RolloutStuck,
                format!("Deployment {name}: the rollout exceeded its progress deadline: {message}"),
            ));
        }
        if c.type_ == "ReplicaFailure" && c.status == "True" {
            return Some(Issue::new(
                IssueKind::RolloutStuck,
                format!("Deployment {name}: cannot create pods: {reason}: {message}"),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_route_refused_by_its_gateway_is_an_issue_in_the_gateways_words() {
        use serde_json::json;
        let route = |conditions: serde_json::Value| {
            json!({"metadata": {"name": "demo-chat"}, "status": {"parents": [{
                "controllerName": "example.com/gateway",
                "parentRef": {"name": "public", "namespace": "infra"},
                "conditions": conditions,
            }]}})
        };
        assert_eq!(
            super::route_issue(&json!({"metadata": {"name": "demo-chat"}})),
            None
        );
        let accepted = route(
            json!([{"type": "Accepted", "status": "True", "reason": "Accepted"},
                                    {"type": "ResolvedRefs", "status": "True"}]),
        );
        assert_eq!(super::route_issue(&accepted), None);
        let refused = route(json!([{"type": "Accepted", "status": "False",
                                    "reason": "NotAllowedByListeners",
                                    "message": "namespace chat is not allowed"}]));
        let issue = super::route_issue(&refused).expect("an issue");
        assert_eq!(issue.kind, super::IssueKind::RouteNotAccepted);
        assert_eq!(
            issue.message,
            "GRPCRoute demo-chat is not accepted by Gateway infra/public: \
             NotAllowedByListeners: namespace chat is not allowed"
        );
        let unresolved = route(json!([{"type": "Accepted", "status": "True"},
                                      {"type": "ResolvedRefs", "status": "False",
                                       "reason": "BackendNotFound", "message": "no Service"}]));
        assert!(super::route_issue(&unresolved)
            .expect("an issue")
            .message
            .contains("cannot reach its backend"));
    }

    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, reason: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": reason, "message": "back-off 5m0s"}},
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn crash_looping_service_pods_are_one_issue_per_component() {
        let pods = [
            pod(
                "demo-auth-1",
                json!({"app.kubernetes.io/component": "auth"}),
                "CrashLoopBackOff",
            ),
            pod(
                "demo-auth-2",
                json!({"app.kubernetes.io/component": "auth"}),
                "CrashLoopBackOff",
            ),
            pod(
                "demo-chat-1",
                json!({"app.kubernetes.io/component": "chat"}),
                "ContainerCreating",
            ),
        ];
        let issues = pod_issues(&pods, &[]);
        assert_eq!(
            issues,
            [Issue::new(
                IssueKind::PodsFailing,
                "auth: pod demo-auth-1 CrashLoopBackOff: back-off 5m0s (and 1 more pods)"
            )]
        );
    }

    #[test]
    fn only_the_running_migrations_pods_count() {
        let labels =
            |job: &str| json!({"app.kubernetes.io/component": "saga-migrate", JOB_NAME_LABEL: job});
        let pods = [
            pod("new-x", labels("demo-saga-migrate-new"), "ImagePullBackOff"),
            pod("old-x", labels("demo-saga-migrate-old"), "ImagePullBackOff"),
        ];
        let issues = pod_issues(&pods, &["demo-saga-migrate-new".to_string()]);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].kind, IssueKind::MigrationStuck);
        assert!(issues[0]
            .message
            .starts_with("the migration of saga cannot start: pod new-x ImagePullBackOff"));
    }

    #[test]
    fn a_rollout_past_its_deadline_is_stuck_once_the_controller_saw_the_spec() {
        let d = |observed: i64| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "demo-chat", "generation": 2},
                "status": {"observedGeneration": observed, "conditions": [{
                    "type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded", "message": "timed out"}]},
            }))
            .unwrap()
        };
        assert!(deployment_issue(&d(1)).is_none());
        let issue = deployment_issue(&d(2)).unwrap();
        assert_eq!(issue.kind, IssueKind::RolloutStuck);
        assert!(issue.message.contains("progress deadline"));
    }
}
