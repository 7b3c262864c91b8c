//! What the reconcile reports: the `status` of a `ChatCluster`, computed purely from what
//! the apply step observed, so every condition transition is unit-testable.
//!
//! Three conditions, as the Kubernetes API conventions suggest:
//! - `Ready`: every workload has all its desired pods ready and nothing is failing;
//! - `Progressing`: a migration or a rollout is under way;
//! - `Degraded`: something needs a person (an [`Issue`]: an invalid spec, an object the
//!   API server refused, a failed migration...); the reconcile keeps retrying meanwhile.
//!
//! A reconcile pass collects every issue instead of stopping at the first, so one refused
//! object never hides the others; `Degraded` names the most serious kind and lists them
//! all in a message bounded to [`MAX_MESSAGE`] bytes (API errors are first reduced to a
//! sentence by [`summarize`]: a 422 can carry a 15 KB dump of the object).
//!
//! `lastTransitionTime` only moves when a condition's status changes, so reconciling an
//! unchanged cluster writes an identical status (and the operator skips the write).

use crate::crd::{ChatClusterStatus, ComponentStatus, Condition};

/// The longest condition message, in bytes.
pub const MAX_MESSAGE: usize = 512;
/// The longest summary of one API error, in bytes.
pub const MAX_ERROR: usize = 200;

/// How far a component's database migration for its current image has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Migration {
    /// Not a service (PostgreSQL, NATS), or migrated already.
    Done,
    /// Its Job is running.
    Running,
    /// Its Job failed, with why.
    Failed(String),
}

/// One workload as the apply step saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The workload's name in the status.
    pub name: String,
    /// Desired pods.
    pub replicas: i32,
    /// Pods ready.
    pub ready_replicas: i32,
    /// The controller has seen the latest spec and every pod runs it.
    pub rolled_out: bool,
    /// Its migration for the current image.
    pub migration: Migration,
    /// Image whose migrations are known to have completed.
    pub migrated_image: Option<String>,
    /// Its controller gave up on the rollout (a Deployment past its progress deadline).
    pub stalled: bool,
}

/// Kinds of problems, most serious first: `Degraded.reason` is the first present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IssueKind {
    /// The spec cannot be reconciled at all.
    InvalidSpec,
    /// The reconcile failed before it could apply anything.
    ReconcileError,
    /// The API server refused an object.
    ApplyFailed,
    /// A Secret (or key) the pods read does not exist.
    SecretMissing,
    /// A migration Job ran out of retries.
    MigrationFailed,
    /// A migration Job's pod cannot start (image, configuration).
    MigrationStuck,
    /// A Deployment's controller gave up on the rollout.
    RolloutStuck,
    /// Pods that cannot start or keep crashing.
    PodsFailing,
    /// A volume could not be grown to the size the spec asks for.
    VolumeNotExpanded,
    /// A Gateway did not accept a GRPCRoute, or cannot reach its backend.
    RouteNotAccepted,
}

impl IssueKind {
    /// The condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueKind::InvalidSpec => "InvalidSpec",
            IssueKind::ReconcileError => "ReconcileError",
            IssueKind::ApplyFailed => "ApplyFailed",
            IssueKind::SecretMissing => "SecretMissing",
            IssueKind::MigrationFailed => "MigrationFailed",
            IssueKind::MigrationStuck => "MigrationStuck",
            IssueKind::RolloutStuck => "RolloutStuck",
            IssueKind::PodsFailing => "PodsFailing",
            IssueKind::VolumeNotExpanded => "VolumeNotExpanded",
            IssueKind::RouteNotAccepted => "RouteNotAccepted",
        }
    }

    /// Whether the spec could not be fully applied (then `observedGeneration` stays).
    fn blocks_observation(self) -> bool {
        matches!(
            self,
            IssueKind::InvalidSpec | IssueKind::ReconcileError | IssueKind::ApplyFailed
        )
    }
}

/// Something that needs a person, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// What sort of problem; the `Degraded` condition's reason.
    pub kind: IssueKind,
    /// What is wrong, for a person.
    pub message: String,
}

impl Issue {
    /// An issue of `kind`.
    pub fn new(kind: IssueKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text[..end].trim_end())
}

/// `parts` joined with `; ` within [`MAX_MESSAGE`] bytes: as many whole parts as fit,
/// then how many were left out.
pub fn bounded(parts: &[String]) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        let sep = if out.is_empty() { "" } else { "; " };
        let rest = parts.len() - i - 1;
        let tail = if rest > 0 {
            format!("; and {rest} more")
        } else {
            String::new()
        };
        if out.len() + sep.len() + part.len() + tail.len() <= MAX_MESSAGE {
            out.push_str(sep);
            out.push_str(part);
            continue;
        }
        if out.is_empty() {
            // Not even the first fits whole: cut it.
            let left = format!("; and {} more", parts.len() - 1);
            let room = MAX_MESSAGE - if parts.len() > 1 { left.len() } else { 0 };
            out = truncate(part, room);
            if parts.len() > 1 {
                out.push_str(&left);
            }
        } else {
            out.push_str(&format!("; and {} more", parts.len() - i));
        }
        return out;
    }
    out
}

/// One sentence about why the API server refused a request: the reason and, per cause,
/// the field and the last part of its message (a 422 puts a dump of the whole object
/// between them), at most [`MAX_ERROR`] bytes.
pub fn summarize(error: &kube::Error) -> String {
    let text = match error {
        kube::Error::Api(status) => {
            let causes: Vec<String> = status
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| {
                            // "Invalid value: <the value, maybe a whole object>: <why>".
                            let detail = match c.message.strip_prefix("Invalid value: ") {
                                Some(rest) => rest.rsplit(": ").next().unwrap_or(rest),
                                None => &c.message,
                            };
                            if c.field.is_empty() {
                                detail.to_string()
                            } else {
                                format!("{}: {detail}", c.field)
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let what = match status.code {
                403 => "forbidden",
                404 => "not found",
                409 => "conflict",
                422 => "invalid",
                _ => "refused",
            };
            if causes.is_empty() {
                // "<kind> \"<name>\" is forbidden: <why>": the object is named elsewhere.
                let why = status
                    .message
                    .split_once(": ")
                    .map(|(_, why)| why)
                    .unwrap_or(&status.message);
                format!("{what}: {why}")
            } else {
                format!("{what}: {}", causes.join(", "))
            }
        }
        other => other.to_string(),
    };
    truncate(&text, MAX_ERROR)
}

/// The status for `generation` given the observations and the issues found (observations
/// empty when nothing could be applied: the previous component statuses are then kept).
pub fn compute(
    previous: Option<&ChatClusterStatus>,
    generation: Option<i64>,
    observed: &[Observed],
    issues: &[Issue],
    endpoint: Option<String>,
    now: &str,
) -> ChatClusterStatus {
    let components = component_statuses(previous, observed);
    let issues = all_issues(issues, observed);
    let migrating = names(observed, |o| o.migration == Migration::Running);
    let degraded = degraded(&issues);
    let progressing = progressing(observed, &migrating);
    let ready = ready(&issues, &components, &migrating, &degraded.1);
    let conditions = [ready, progressing, degraded]
        .into_iter()
        .map(|c| condition_since(previous, generation, now, c))
        .collect();

    let unapplied = issues.iter().any(|i| i.kind.blocks_observation());
    ChatClusterStatus {
        // A spec that could not be (fully) applied has not been observed.
        observed_generation: if unapplied {
            previous.and_then(|p| p.observed_generation)
        } else {
            generation
        },
        conditions,
        components,
        endpoint,
        // The load balancers' addresses, filled in by the reconcile that read them.
        endpoints: Default::default(),
    }
}

/// The workloads as observed, or the previous ones when nothing was observed.
fn component_statuses(
    previous: Option<&ChatClusterStatus>,
    observed: &[Observed],
) -> Vec<ComponentStatus> {
    if observed.is_empty() {
        return previous.map(|p| p.components.clone()).unwrap_or_default();
    }
    observed
        .iter()
        .map(|o| ComponentStatus {
            name: o.name.clone(),
            replicas: o.replicas,
            ready_replicas: o.ready_replicas,
            migrated_image: o.migrated_image.clone(),
        })
        .collect()
}

/// The issues found plus the failed migrations, most serious first.
fn all_issues(issues: &[Issue], observed: &[Observed]) -> Vec<Issue> {
    let mut issues: Vec<Issue> = issues.to_vec();
    issues.extend(observed.iter().filter_map(|o| match &o.migration {
        Migration::Failed(why) => Some(Issue::new(
            IssueKind::MigrationFailed,
            format!("{}: {why}", o.name),
        )),
        _ => None,
    }));
    issues.sort_by_key(|i| i.kind);
    issues
}

/// The names of the workloads that `pick` selects.
fn names(observed: &[Observed], pick: impl Fn(&Observed) -> bool) -> Vec<&str> {
    observed
        .iter()
        .filter(|o| pick(o))
        .map(|o| o.name.as_str())
        .collect()
}

/// `Degraded`: the most serious kind of issue, with every issue's message.
fn degraded(issues: &[Issue]) -> Cond {
    match issues.first() {
        Some(first) => {
            let messages: Vec<String> = issues.iter().map(|i| i.message.clone()).collect();
            cond("Degraded", true, first.kind.as_str(), &bounded(&messages))
        }
        None => cond("Degraded", false, "AsExpected", "no problem observed"),
    }
}

/// `Progressing`: migrations first, then rollouts, then rollouts that stopped.
fn progressing(observed: &[Observed], migrating: &[&str]) -> Cond {
    let rolling = names(observed, |o| {
        !o.rolled_out && !o.stalled && o.migration == Migration::Done
    });
    let stalled = names(observed, |o| !o.rolled_out && o.stalled);
    if !migrating.is_empty() {
        cond(
            "Progressing",
            true,
            "Migrating",
            &format!("running database migrations of {}", migrating.join(", ")),
        )
    } else if !rolling.is_empty() {
        cond(
            "Progressing",
            true,
            "RollingOut",
            &format!("rolling out {}", rolling.join(", ")),
        )
    } else if !stalled.is_empty() {
        // As the Deployment controller says it: nothing is progressing any more.
        cond(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            &format!("the rollout of {} stopped progressing", stalled.join(", ")),
        )
    } else {
        cond(
            "Progressing",
            false,
            "Complete",
            "every workload runs its spec",
        )
    }
}

/// `Ready`: no issue (then it repeats `Degraded`'s message), and every component has
/// all its pods ready and migrated.
fn ready(
    issues: &[Issue],
    components: &[ComponentStatus],
    migrating: &[&str],
    degraded_message: &str,
) -> Cond {
    let unready: Vec<String> = components
        .iter()
        .filter(|c| c.ready_replicas < c.replicas)
        .map(|c| format!("{} {}/{}", c.name, c.ready_replicas, c.replicas))
        .collect();
    if !issues.is_empty() {
        cond("Ready", false, "Degraded", degraded_message)
    } else if components.is_empty() {
        cond("Ready", false, "Pending", "nothing observed yet")
    } else if !unready.is_empty() || !migrating.is_empty() {
        let mut waiting = unready.clone();
        waiting.extend(migrating.iter().map(|m| format!("{m} migrating")));
        cond(
            "Ready",
            false,
            "ComponentsNotReady",
            &bounded(&[format!("waiting for {}", waiting.join(", "))]),
        )
    } else {
        cond(
            "Ready",
            true,
            "AllComponentsReady",
            "every component is ready",
        )
    }
}

/// The condition, with `lastTransitionTime` kept from `previous` unless its status changed.
fn condition_since(
    previous: Option<&ChatClusterStatus>,
    generation: Option<i64>,
    now: &str,
    (type_, message, status, reason): Cond,
) -> Condition {
    let old = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => now.to_string(),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// An Event to publish about the ChatCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// A `Warning` Event; otherwise `Normal`.
    pub warning: bool,
    /// CamelCase, as `kubectl describe` shows it.
    pub reason: String,
    /// What the operator did or saw (`Reconcile`, `Migrate`, ...).
    pub action: String,
    /// One bounded sentence.
    pub message: String,
}

impl Note {
    /// A `Normal` Event.
    pub fn normal(reason: &str, action: &str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            action: action.into(),
            message: message.into(),
        }
    }

    /// A `Warning` Event.
    pub fn warning(reason: &str, action: &str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, action, message)
        }
    }
}

/// The Events that the change from `previous` to `next` is worth: a new or changed
/// problem (Warning, with the `Degraded` reason and message), its end, and the progress
/// milestones. An unchanged status is worth none, so a steady reconcile is silent.
pub fn notes(previous: Option<&ChatClusterStatus>, next: &ChatClusterStatus) -> Vec<Note> {
    let old = |t: &str| previous.and_then(|p| condition(p, t));
    let new = |t: &str| condition(next, t);
    let mut out = Vec::new();
    if let Some(d) = new("Degraded") {
        let before = old("Degraded");
        let was = before.is_some_and(|b| b.status == "True");
        if d.status == "True"
            && before.is_none_or(|b| {
                b.status != "True" || b.reason != d.reason || b.message != d.message
            })
        {
            out.push(Note::warning(&d.reason, "Reconcile", d.message.clone()));
        } else if d.status != "True" && was {
            out.push(Note::normal(
                "Recovered",
                "Reconcile",
                "no problem observed any more",
            ));
        }
    }
    if let Some(p) = new("Progressing") {
        let changed = old("Progressing").is_none_or(|b| b.reason != p.reason);
        if p.status == "True" && changed {
            out.push(Note::normal(&p.reason, "Reconcile", p.message.clone()));
        }
    }
    if let Some(r) = new("Ready") {
        if r.status == "True" && old("Ready").is_none_or(|b| b.status != "True") {
            out.push(Note::normal("Ready", "Reconcile", r.message.clone()));
        }
    }
    out
}

/// A condition before its times: (type, message, status, reason).
type Cond = (&'static str, String, &'static str, &'static str);

/// A condition of `type_`, `True` when `status`.
fn cond(type_: &'static str, status: bool, reason: &'static str, message: &str) -> Cond {
    let status = if status { "True" } else { "False" };
    (type_, message.to_string(), status, reason)
}

/// The named condition's status (`True`/`False`), if present.
pub fn condition<'a>(status: &'a ChatClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, replicas: i32, ready: i32, migration: Migration) -> Observed {
        Observed {
            name: name.into(),
            replicas,
            ready_replicas: ready,
            rolled_out: ready == replicas,
            migration,
            migrated_image: None,
            stalled: false,
        }
    }

    fn get(s: &ChatClusterStatus, t: &str) -> (String, String) {
        let c = condition(s, t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn all_ready_is_ready_not_progressing_not_degraded() {
        let s = compute(
            None,
            Some(3),
            &[
                obs("auth", 2, 2, Migration::Done),
                obs("chat", 1, 1, Migration::Done),
            ],
            &[],
            None,
            "t0",
        );
        assert_eq!(
            get(&s, "Ready"),
            ("True".into(), "AllComponentsReady".into())
        );
        assert_eq!(get(&s, "Progressing"), ("False".into(), "Complete".into()));
        assert_eq!(get(&s, "Degraded"), ("False".into(), "AsExpected".into()));
        assert_eq!(s.observed_generation, Some(3));
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn migrating_is_progressing_and_not_ready() {
        let s = compute(
            None,
            Some(1),
            &[obs("auth", 2, 0, Migration::Running)],
            &[],
            None,
            "t0",
        );
        assert_eq!(
            get(&s, "Ready"),
            ("False".into(), "ComponentsNotReady".into())
        );
        assert_eq!(get(&s, "Progressing"), ("True".into(), "Migrating".into()));
        assert!(condition(&s, "Ready").unwrap().message.contains("auth 0/2"));
    }

    #[test]
    fn failed_migration_is_degraded() {
        let s = compute(
            None,
            Some(1),
            &[obs(
                "chat",
                2,
                2,
                Migration::Failed("BackoffLimitExceeded".into()),
            )],
            &[],
            None,
            "t0",
        );
        assert_eq!(
            get(&s, "Degraded"),
            ("True".into(), "MigrationFailed".into())
        );
        assert_eq!(get(&s, "Ready").0, "False");
        // A migration failure does not stop the spec from being observed.
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn errors_keep_the_last_observation_and_generation() {
        let before = compute(
            None,
            Some(1),
            &[obs("auth", 1, 1, Migration::Done)],
            &[],
            None,
            "t0",
        );
        let s = compute(
            Some(&before),
            Some(2),
            &[],
            &[Issue::new(IssueKind::ReconcileError, "forbidden")],
            None,
            "t1",
        );
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.components, before.components);
        assert_eq!(
            get(&s, "Degraded"),
            ("True".into(), "ReconcileError".into())
        );
        assert_eq!(condition(&s, "Degraded").unwrap().message, "forbidden");
    }

    #[test]
    fn every_issue_is_listed_under_the_most_serious_reason() {
        let s = compute(
            None,
            Some(2),
            &[obs(
                "chat",
                2,
                2,
                Migration::Failed("job demo-chat-migrate-1 failed".into()),
            )],
            &[Issue::new(
                IssueKind::ApplyFailed,
                "StatefulSet demo-nats: forbidden: no",
            )],
            None,
            "t0",
        );
        let degraded = condition(&s, "Degraded").unwrap();
        assert_eq!(degraded.reason, "ApplyFailed");
        assert_eq!(
            degraded.message,
            "StatefulSet demo-nats: forbidden: no; chat: job demo-chat-migrate-1 failed"
        );
        assert_eq!(s.observed_generation, None, "not fully applied");
    }

    #[test]
    fn messages_are_bounded_and_say_what_was_left_out() {
        let parts: Vec<String> = (0..100)
            .map(|i| format!("Deployment demo-{i}: forbidden: quota exceeded"))
            .collect();
        let m = bounded(&parts);
        assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.starts_with("Deployment demo-0: "));
        assert!(m.ends_with(" more"), "{m}");
        let huge = ["x".repeat(20_000)];
        assert!(bounded(&huge).len() <= MAX_MESSAGE);
        assert_eq!(truncate("héllo", 5), "h…");
        assert_eq!(truncate("hello", 5), "hello");
    }

    /// The shape of the 422 the API server answers a changed Job template with: the whole
    /// pod template, dumped, between the field and "field is immutable".
    #[test]
    fn an_immutable_field_error_becomes_one_sentence() {
        let dump = format!(
            "{{\"labels\":{{}},\"Spec\":{{{}}}}}",
            "\"X\":null,".repeat(2000)
        );
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "message": format!("Job.batch \"demo-auth-migrate-1\" is invalid: spec.template: Invalid value: {dump}: field is immutable"),
            "details": {"name": "demo-auth-migrate-1", "group": "batch", "kind": "Job",
                "causes": [{"reason": "FieldValueInvalid", "field": "spec.template",
                    "message": format!("Invalid value: {dump}: field is immutable")}]},
        }))
        .unwrap();
        let s = summarize(&kube::Error::Api(Box::new(status)));
        assert_eq!(s, "invalid: spec.template: field is immutable");

        let denied: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "statefulsets.apps \"demo-postgres\" is forbidden: images must come from ghcr.io",
        }))
        .unwrap();
        assert_eq!(
            summarize(&kube::Error::Api(Box::new(denied))),
            "forbidden: images must come from ghcr.io"
        );
    }

    #[test]
    fn a_stalled_rollout_stops_progressing() {
        let mut o = obs("chat", 2, 1, Migration::Done);
        o.stalled = true;
        let s = compute(None, Some(1), &[o], &[], None, "t0");
        assert_eq!(
            get(&s, "Progressing"),
            ("False".into(), "ProgressDeadlineExceeded".into())
        );
    }

    #[test]
    fn events_follow_changes_and_a_steady_status_is_silent() {
        let ready = compute(
            None,
            Some(1),
            &[obs("auth", 1, 1, Migration::Done)],
            &[],
            None,
            "t0",
        );
        let first = notes(None, &ready);
        assert_eq!(
            first.iter().map(|n| n.reason.as_str()).collect::<Vec<_>>(),
            ["Ready"]
        );
        assert!(notes(Some(&ready), &ready).is_empty());

        let broken = compute(
            Some(&ready),
            Some(1),
            &[obs("auth", 1, 1, Migration::Done)],
            &[Issue::new(
                IssueKind::PodsFailing,
                "auth: pod x CrashLoopBackOff",
            )],
            None,
            "t1",
        );
        let n = notes(Some(&ready), &broken);
        assert_eq!(
            n,
            [Note::warning(
                "PodsFailing",
                "Reconcile",
                "auth: pod x CrashLoopBackOff"
            )]
        );
        assert!(notes(Some(&broken), &broken).is_empty());
        let healed = notes(Some(&broken), &ready);
        assert_eq!(healed[0].reason, "Recovered");
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let o = [obs("auth", 1, 1, Migration::Done)];
        let a = compute(None, Some(1), &o, &[], None, "t0");
        let b = compute(Some(&a), Some(1), &o, &[], None, "t1");
        assert_eq!(a, b, "an unchanged cluster yields an identical status");
        let c = compute(
            Some(&b),
            Some(1),
            &[obs("auth", 1, 0, Migration::Done)],
            &[],
            None,
            "t2",
        );
        assert_eq!(condition(&c, "Ready").unwrap().last_transition_time, "t2");
        assert_eq!(
            condition(&c, "Degraded").unwrap().last_transition_time,
            "t0"
        );
    }
}
