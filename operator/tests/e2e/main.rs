//! End-to-end tests of `chat-operator` against a real kube-apiserver and etcd
//! (`../shared/k8s-testenv`): the install from `k8s/`, the real binary under its
//! ServiceAccount's RBAC, and the controllers that the test environment lacks played by
//! patching status. Opt-in: `CHAT_OPERATOR_E2E=1 cargo test -p chat-operator --test e2e`
//! (see `support`). `happy` holds the first install and the ordinary operations; the
//! `dN_*` modules the day-2 defects of issue #14, each test of which failed before its fix.

mod d1_migration_jobs;
mod d2_storage;
mod d3_names;
mod d4_retained_secret;
mod d5_crd_validation;
mod d7_secrets;
mod d8_status_events;
mod d9_independent_applies;
mod happy;
mod i15_topology;
mod support;
