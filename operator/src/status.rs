//! What the reconcile reports: the `status` of a `ChatCluster`, computed purely from what
//! the apply step observed, so every condition transition is unit-testable.
//!
//! Three conditions, as the Kubernetes API conventions suggest:
//! - `Ready`: every workload has all its desired pods ready and nothing is failing;
//! - `Progressing`: a migration or a rollout is under way;
//! - `Degraded`: something needs a person (invalid spec, a failed migration, or the API
//!   server refusing our writes); the reconcile keeps retrying with backoff meanwhile.
//!
//! `lastTransitionTime` only moves when a condition's status changes, so reconciling an
//! unchanged cluster writes an identical status (and the operator skips the write).

use crate::crd::{ChatClusterStatus, ComponentStatus, Condition};

/// How far a component's database migration for its current image has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Migration {
    /// Not a service (PostgreSQL, NATS), or migrated already.
    Done,
    Running,
    Failed(String),
}

/// One workload as the apply step saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub name: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The controller has seen the latest spec and every pod runs it.
    pub rolled_out: bool,
    pub migration: Migration,
    /// Image whose migrations are known to have completed.
    pub migrated_image: Option<String>,
}

/// What went wrong outside the workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    InvalidSpec(String),
    ReconcileError(String),
}

/// The status for `generation` given the observations (empty when `problem` stopped the
/// apply early: the previous component statuses are then kept).
pub fn compute(
    previous: Option<&ChatClusterStatus>,
    generation: Option<i64>,
    observed: &[Observed],
    problem: Option<&Problem>,
    endpoint: Option<String>,
    now: &str,
) -> ChatClusterStatus {
    let components: Vec<ComponentStatus> = if observed.is_empty() {
        previous.map(|p| p.components.clone()).unwrap_or_default()
    } else {
        observed
            .iter()
            .map(|o| ComponentStatus {
                name: o.name.clone(),
                replicas: o.replicas,
                ready_replicas: o.ready_replicas,
                migrated_image: o.migrated_image.clone(),
            })
            .collect()
    };

    let failed_migrations: Vec<String> = observed
        .iter()
        .filter_map(|o| match &o.migration {
            Migration::Failed(why) => Some(format!("{}: {why}", o.name)),
            _ => None,
        })
        .collect();
    let migrating: Vec<&str> = observed
        .iter()
        .filter(|o| o.migration == Migration::Running)
        .map(|o| o.name.as_str())
        .collect();
    let rolling: Vec<&str> = observed
        .iter()
        .filter(|o| !o.rolled_out && o.migration == Migration::Done)
        .map(|o| o.name.as_str())
        .collect();
    let unready: Vec<String> = components
        .iter()
        .filter(|c| c.ready_replicas < c.replicas)
        .map(|c| format!("{} {}/{}", c.name, c.ready_replicas, c.replicas))
        .collect();

    let degraded = match problem {
        Some(Problem::InvalidSpec(m)) => cond("Degraded", true, "InvalidSpec", m),
        Some(Problem::ReconcileError(m)) => cond("Degraded", true, "ReconcileError", m),
        None if !failed_migrations.is_empty() => cond(
            "Degraded",
            true,
            "MigrationFailed",
            &failed_migrations.join("; "),
        ),
        None => cond("Degraded", false, "AsExpected", "no problem observed"),
    };
    let progressing = if !migrating.is_empty() {
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
    } else {
        cond(
            "Progressing",
            false,
            "Complete",
            "every workload runs its spec",
        )
    };
    let ready = if problem.is_some() || !failed_migrations.is_empty() {
        cond("Ready", false, "Degraded", &degraded.1)
    } else if components.is_empty() {
        cond("Ready", false, "Pending", "nothing observed yet")
    } else if !unready.is_empty() || !migrating.is_empty() {
        let mut waiting = unready.clone();
        waiting.extend(migrating.iter().map(|m| format!("{m} migrating")));
        cond(
            "Ready",
            false,
            "ComponentsNotReady",
            &format!("waiting for {}", waiting.join(", ")),
        )
    } else {
        cond(
            "Ready",
            true,
            "AllComponentsReady",
            "every component is ready",
        )
    };

    let conditions = [ready, progressing, degraded]
        .into_iter()
        .map(|(type_, message, status, reason)| {
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
        })
        .collect();

    ChatClusterStatus {
        observed_generation: match problem {
            // A spec that could not be applied has not been observed.
            Some(_) => previous.and_then(|p| p.observed_generation),
            None => generation,
        },
        conditions,
        components,
        endpoint,
    }
}

/// (type, message, status, reason)
fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: &str,
) -> (&'static str, String, &'static str, &'static str) {
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
            None,
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
            None,
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
            None,
            None,
            "t0",
        );
        assert_eq!(
            get(&s, "Degraded"),
            ("True".into(), "MigrationFailed".into())
        );
        assert_eq!(get(&s, "Ready").0, "False");
    }

    #[test]
    fn errors_keep_the_last_observation_and_generation() {
        let before = compute(
            None,
            Some(1),
            &[obs("auth", 1, 1, Migration::Done)],
            None,
            None,
            "t0",
        );
        let s = compute(
            Some(&before),
            Some(2),
            &[],
            Some(&Problem::ReconcileError("forbidden".into())),
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
    fn transition_time_moves_only_when_status_changes() {
        let o = [obs("auth", 1, 1, Migration::Done)];
        let a = compute(None, Some(1), &o, None, None, "t0");
        let b = compute(Some(&a), Some(1), &o, None, None, "t1");
        assert_eq!(a, b, "an unchanged cluster yields an identical status");
        let c = compute(
            Some(&b),
            Some(1),
            &[obs("auth", 1, 0, Migration::Done)],
            None,
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
