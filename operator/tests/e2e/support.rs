//! The harness of the end-to-end suite: real control planes from `../shared/k8s-testenv`,
//! the operator installed from the repository's own manifests, the real `chat-operator`
//! binary running under its ServiceAccount's token, and helpers that play the
//! controllers the test environment does not run (Job, Deployment, StatefulSet status).
//!
//! Why it is shaped this way:
//! - A control plane costs ~300 MiB and a few seconds of CPU, so most tests share one:
//!   each test gets its own namespace and its own operator process watching only that
//!   namespace (`WATCH_NAMESPACE`), with its own Lease. Tests that need the garbage
//!   collector or the StatefulSet controller share a second plane started with
//!   `--controller-manager` (there the StatefulSet controller owns StatefulSet status, so
//!   those tests never fake StatefulSet readiness). A test that runs the operator across
//!   all namespaces gets a private plane.
//! - Shared planes outlive any one test (each `#[tokio::test]` has its own runtime, so
//!   they hold paths, never a client). A watchdog shell stops every plane and operator
//!   process and removes the scratch files when the test binary exits, however it exits.
//! - The suite is opt-in ([`OPT_IN`]): without it every test returns at once and says how
//!   to run it, so `cargo test --workspace` passes on a machine without `../shared`.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use chat_operator::crd::ChatCluster;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{Namespace, Secret},
    },
    ByteString,
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config, ResourceExt,
};
use serde_json::{json, Value};

/// The environment variable that turns the suite on (`1`).
pub const OPT_IN: &str = "CHAT_OPERATOR_E2E";
/// Overrides where the test environment is (default: `../shared/k8s-testenv` beside the
/// repository).
pub const TESTENV_DIR: &str = "K8S_TESTENV";

/// The field manager the tests write ChatClusters with, as a user's `kubectl` would.
pub const USER: &str = "e2e-user";

/// How long the operator gets to react to a change before a wait fails.
pub const SETTLE: Duration = Duration::from_secs(60);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the repository")
        .to_path_buf()
}

fn testenv() -> PathBuf {
    std::env::var_os(TESTENV_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/k8s-testenv"))
}

/// Installs another project's CRD from the test environment's `crds/` (e.g.
/// `monitoring.coreos.com_podmonitors.yaml`) on `plane` and waits until it is served.
/// CRDs are cluster-wide: installing one twice (from two tests) is a no-op.
pub fn install_crd(plane: &Plane, file: &str) {
    let path = testenv().join("crds").join(file);
    run(plane
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&path));
    // Right after the apply the CRD may have no conditions yet, which `kubectl wait`
    // reports as an error rather than waiting: retry for a while.
    for _ in 0..40 {
        let out = plane
            .kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("running kubectl wait: {e}"));
        if out.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    run(plane
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
        .arg(&path));
}

/// Whether the suite runs; prints how to run it when it does not.
pub fn enabled(test: &str) -> bool {
    if std::env::var(OPT_IN).is_ok_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    eprintln!(
        "{test}: skipped. The operator's end-to-end suite needs a real kube-apiserver: run it \
         with `{OPT_IN}=1 cargo test -p chat-operator --test e2e` (it boots \
         ../shared/k8s-testenv, or the directory in {TESTENV_DIR}, and needs kubectl; \
         .ci/run sets {OPT_IN}=1)"
    );
    false
}

/// Runs `cmd`, panicking with its output when it fails; returns stdout and stderr.
pub fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// This test process's scratch root: planes, kubeconfigs and operator logs live under it,
/// and a watchdog shell cleans it up once the process has exited, however it exits: it
/// kills the operators and stops the planes listed in `cleanup`, then removes the root.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("chat-operator-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("creating the scratch root");
        std::fs::write(root.join("cleanup"), "").expect("creating the cleanup list");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             while read -r what arg; do \
               case $what in kill) kill -9 \"$arg\" 2>/dev/null;; down) \"$0\" \"$arg\";; esac; \
             done < \"$1/cleanup\"; rm -rf \"$1\"",
            pid = std::process::id()
        );
        // Detached on purpose: it must outlive this process, so nobody waits for it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(testenv().join("down"))
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cleanup watchdog");
        root
    })
}

/// Adds a line to what the watchdog does at exit (`kill PID` or `down DIR`).
fn at_exit(what: &str, arg: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root().join("cleanup"))
        .expect("opening the cleanup list");
    writeln!(f, "{what} {arg}").expect("writing the cleanup list");
}

/// A fresh directory under the scratch root.
pub fn scratch(what: &str) -> PathBuf {
    let dir = root().join(format!("{}-{what}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// A running control plane (etcd + kube-apiserver, optionally the controller-manager).
pub struct Plane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_url: String,
    /// What `kubectl apply --server-side -k k8s/` printed on stderr (its warnings).
    pub install_stderr: String,
}

impl Plane {
    /// Boots a control plane and installs the CRD and the operator's RBAC from `k8s/`.
    pub fn start(controller_manager: bool) -> Plane {
        let dir = scratch("plane");
        at_exit("down", &dir.to_string_lossy());
        let mut up = Command::new(testenv().join("up"));
        up.arg(&dir);
        if controller_manager {
            up.arg("--controller-manager");
        }
        let (stdout, _) = run(&mut up);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("`up` printed no {name}: {stdout}"))
                .to_string()
        };
        let mut plane = Plane {
            kubeconfig: PathBuf::from(var("KUBECONFIG")),
            api_url: var("K8S_API_URL"),
            dir,
            install_stderr: String::new(),
        };
        let (_, stderr) = run(plane
            .kubectl()
            .args(["apply", "--server-side", "-k"])
            .arg(repo().join("k8s")));
        plane.install_stderr = stderr;
        run(plane.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/chatclusters.grpcchat.dev",
        ]));
        plane
    }

    /// The control plane shared by the tests that play every controller themselves.
    pub fn shared() -> &'static Plane {
        static PLANE: OnceLock<Plane> = OnceLock::new();
        PLANE.get_or_init(|| Plane::start(false))
    }

    /// The control plane shared by the tests that need the garbage collector or the
    /// StatefulSet controller (which creates the PersistentVolumeClaims).
    pub fn shared_with_controllers() -> &'static Plane {
        static PLANE: OnceLock<Plane> = OnceLock::new();
        PLANE.get_or_init(|| Plane::start(true))
    }

    /// A control plane for one test; [`Plane::stop`] it at the end (the watchdog stops it
    /// anyway when the test binary exits).
    pub fn private(controller_manager: bool) -> &'static Plane {
        Box::leak(Box::new(Plane::start(controller_manager)))
    }

    /// Stops the plane's processes.
    pub fn stop(&self) {
        let _ = Command::new(testenv().join("down")).arg(&self.dir).output();
    }

    /// `kubectl` as the cluster admin of this plane.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// A client with the admin's rights (the test's own, never the operator's).
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("loading the kubeconfig");
        Client::try_from(config).expect("building a client")
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let (token, _) =
            run(self
                .kubectl()
                .args(["create", "token", name, "-n", namespace, "--duration=6h"]));
        let path = scratch("sa").join("kubeconfig");
        let ca = self.dir.join("certs/apiserver.crt");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster: {{server: \"{}\", \
             certificate-authority: \"{}\"}}\nusers:\n- name: sa\n  user: {{token: \"{}\"}}\n\
             contexts:\n- name: sa\n  context: {{cluster: testenv, user: sa}}\ncurrent-context: sa\n",
            self.api_url,
            ca.display(),
            token.trim()
        );
        std::fs::write(&path, config).expect("writing the kubeconfig");
        path
    }
}

/// How a test starts an operator process.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// `WATCH_NAMESPACE`; `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// The ServiceAccount whose token it runs with.
    pub service_account: (String, String),
    /// `LEASE_NAME` (in the ServiceAccount's namespace, as `POD_NAMESPACE` is in a pod).
    pub lease_name: String,
    /// `POD_NAME`: its identity in the Lease.
    pub identity: String,
}

impl OperatorOptions {
    /// An operator watching only `namespace`, as installed by `k8s/`, with a Lease of its own.
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            watch_namespace: Some(namespace.into()),
            service_account: ("chat-operator".into(), "chat-operator".into()),
            lease_name: format!("lease-{namespace}"),
            identity: format!("operator-{namespace}-a"),
        }
    }
}

/// The `chat-operator` binary running against a plane.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub options: OperatorOptions,
}

impl Operator {
    pub fn start(plane: &Plane, options: OperatorOptions) -> Operator {
        let (sa_ns, sa) = &options.service_account;
        let kubeconfig = plane.service_account_kubeconfig(sa_ns, sa);
        let log = kubeconfig.with_file_name("operator.log");
        let file = std::fs::File::create(&log).expect("creating the operator log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-operator"));
        cmd.arg("run")
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("LEADER_ELECTION", "true")
            .env("LEASE_NAME", &options.lease_name)
            .env("POD_NAMESPACE", sa_ns)
            .env("POD_NAME", &options.identity)
            .env(
                "WATCH_NAMESPACE",
                options.watch_namespace.as_deref().unwrap_or(""),
            )
            .env("RUST_LOG", "info,chat_operator=debug")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("starting chat-operator");
        at_exit("kill", &child.id().to_string());
        Operator {
            child,
            log,
            options,
        }
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many reconciles it started so far.
    pub fn reconciles(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(r#""message":"reconciling""#))
            .count()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then waits for the process to end.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `timeout`; `context` adds
/// what to print when it gives up.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One test's world: a namespace on a plane, an admin client, and (usually) an operator
/// watching that namespace.
pub struct World {
    pub plane: &'static Plane,
    pub client: Client,
    pub ns: String,
    pub operators: Vec<Operator>,
}

impl World {
    /// A namespace `ns` on `plane` without an operator.
    pub async fn bare(plane: &'static Plane, ns: &str) -> World {
        let client = plane.client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("a namespace");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
        World {
            plane,
            client,
            ns: ns.into(),
            operators: Vec::new(),
        }
    }

    /// A namespace `ns` on `plane` with an operator watching it.
    pub async fn new(plane: &'static Plane, ns: &str) -> World {
        let mut world = World::bare(plane, ns).await;
        world.start_operator(OperatorOptions::for_namespace(ns));
        world
    }

    pub fn start_operator(&mut self, options: OperatorOptions) -> &mut Operator {
        self.operators.push(Operator::start(self.plane, options));
        self.operators.last_mut().expect("just pushed")
    }

    pub fn operator(&self) -> &Operator {
        self.operators.first().expect("the world has an operator")
    }

    /// Reconciles started by every operator of this world.
    pub fn reconciles(&self) -> usize {
        self.operators.iter().map(Operator::reconciles).sum()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or updates a ChatCluster as a user would (server-side apply, its own
    /// field manager).
    pub async fn apply_cluster(&self, name: &str, spec: Value) -> ChatCluster {
        let object = json!({
            "apiVersion": "grpcchat.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        });
        self.api::<ChatCluster>()
            .patch(
                name,
                &PatchParams::apply(USER).force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying ChatCluster {name}: {e}"))
    }

    /// JSON merge patch of a ChatCluster's spec (`kubectl patch --type=merge`).
    pub async fn patch_spec(&self, name: &str, patch: Value) -> ChatCluster {
        self.api::<ChatCluster>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": patch})),
            )
            .await
            .unwrap_or_else(|e| panic!("patching ChatCluster {name}: {e}"))
    }

    pub async fn cluster(&self, name: &str) -> ChatCluster {
        self.api::<ChatCluster>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading ChatCluster {name}: {e}"))
    }

    /// `(status, reason, message)` of a condition, when present.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let c = self.cluster(name).await;
        let status = c.status?;
        let cond = status.conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((cond.status, cond.reason, cond.message))
    }

    /// What to print when a wait fails: the cluster's status and the operators' logs.
    pub async fn diagnostics(&self, name: &str) -> String {
        let status = match self.api::<ChatCluster>().get_opt(name).await {
            Ok(Some(c)) => serde_json::to_string_pretty(&c.status).unwrap_or_default(),
            other => format!("{other:?}"),
        };
        let logs: Vec<String> = self
            .operators
            .iter()
            .map(|o| format!("--- {} ---\n{}", o.options.identity, o.tail(40)))
            .collect();
        format!("status of {name}: {status}\n{}", logs.join("\n"))
    }

    /// Waits until `check` holds for the cluster, printing diagnostics if it never does.
    pub async fn wait_for<F>(&self, name: &str, what: &str, mut check: F) -> ChatCluster
    where
        F: FnMut(&ChatCluster) -> bool,
    {
        let deadline = Instant::now() + SETTLE;
        loop {
            let c = self.cluster(name).await;
            if check(&c) {
                return c;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n{}",
                    self.diagnostics(name).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for a condition with this status and reason.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> ChatCluster {
        self.wait_for(name, &format!("{type_}={status} ({reason})"), |c| {
            condition_of(c, type_).is_some_and(|x| x.status == status && x.reason == reason)
        })
        .await
    }

    /// Waits until the reconciles stop: no new one started for `quiet`.
    pub async fn settle(&self, quiet: Duration) -> usize {
        let deadline = Instant::now() + SETTLE;
        let mut last = self.reconciles();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.reconciles();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the operator never settled: {last} reconciles so far"
            );
        }
    }

    /// The cluster's migration Jobs (not its PostgreSQL roles Jobs).
    pub async fn jobs(&self, cluster: &str) -> Vec<Job> {
        self.all_jobs(cluster)
            .await
            .into_iter()
            .filter(|j| !is_roles_job(j))
            .collect()
    }

    /// Every Job of the cluster: migrations and PostgreSQL roles.
    pub async fn all_jobs(&self, cluster: &str) -> Vec<Job> {
        self.api::<Job>()
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}")))
            .await
            .expect("listing Jobs")
            .items
    }

    /// Plays the Job controller for the single-pod PostgreSQL's roles Jobs: every
    /// unfinished one succeeds.
    pub async fn complete_roles_jobs(&self, cluster: &str) -> Vec<String> {
        let mut names = Vec::new();
        for j in self.all_jobs(cluster).await {
            if is_roles_job(&j) && !job_finished(&j) && j.metadata.deletion_timestamp.is_none() {
                self.complete_job(&j.name_any()).await;
                names.push(j.name_any());
            }
        }
        names
    }

    /// Waits until `n` migration Jobs exist that have not finished, and returns them,
    /// leaving the PostgreSQL roles Job alone.
    pub async fn wait_unfinished_jobs_only(&self, cluster: &str, n: usize) -> Vec<Job> {
        eventually(
            &format!("{n} unfinished migration Jobs"),
            SETTLE,
            || async {
                let jobs: Vec<Job> = self
                    .jobs(cluster)
                    .await
                    .into_iter()
                    .filter(|j| !job_finished(j) && j.metadata.deletion_timestamp.is_none())
                    .collect();
                (jobs.len() == n).then_some(jobs)
            },
        )
        .await
    }

    /// Waits until `n` migration Jobs exist that have not finished, and returns them.
    /// Plays the Job controller for the PostgreSQL roles Job on the way: it succeeds as
    /// soon as it exists (the tests about it complete it themselves, through `all_jobs`).
    pub async fn wait_unfinished_jobs(&self, cluster: &str, n: usize) -> Vec<Job> {
        let deadline = Instant::now() + SETTLE;
        loop {
            self.complete_roles_jobs(cluster).await;
            let jobs: Vec<Job> = self
                .jobs(cluster)
                .await
                .into_iter()
                .filter(|j| !job_finished(j) && j.metadata.deletion_timestamp.is_none())
                .collect();
            if jobs.len() == n {
                return jobs;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
                panic!(
                    "timed out waiting for {n} unfinished Jobs, have {names:?}\n{}",
                    self.diagnostics(cluster).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Plays the Job controller: the Job succeeded.
    pub async fn complete_job(&self, job: &str) {
        let now = now();
        let status = json!({"status": {
            "startTime": now, "completionTime": now, "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.api::<Job>()
            .patch_status(job, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("completing Job {job}: {e}"));
    }

    /// Plays the Job controller: the Job ran out of retries.
    pub async fn fail_job(&self, job: &str) {
        let now = now();
        let status = json!({"status": {
            "startTime": now, "failed": 11,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                 "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now},
            ],
        }});
        self.api::<Job>()
            .patch_status(job, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("failing Job {job}: {e}"));
    }

    /// Waits for the cluster's `n` migration Jobs and completes them (and its PostgreSQL
    /// roles Job, which is created in the same pass and holds the Deployments back).
    pub async fn complete_migrations(&self, cluster: &str, n: usize) -> Vec<String> {
        let jobs = self.wait_unfinished_jobs(cluster, n).await;
        self.complete_roles_jobs(cluster).await;
        let mut names = Vec::new();
        for j in jobs {
            self.complete_job(&j.name_any()).await;
            names.push(j.name_any());
        }
        names
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.api::<Deployment>()
            .get_opt(name)
            .await
            .expect("reading a Deployment")
    }

    /// Plays the Deployment controller: every desired pod of `name` runs its spec and is ready.
    pub async fn roll_out_deployment(&self, name: &str) {
        let d = self.deployment(name).await.expect("the Deployment exists");
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": d.metadata.generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        }});
        self.api::<Deployment>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("rolling out {name}: {e}"));
    }

    /// Plays the StatefulSet controller: every pod of `name` is ready.
    pub async fn roll_out_stateful_set(&self, name: &str) {
        let s = self
            .api::<StatefulSet>()
            .get(name)
            .await
            .expect("the StatefulSet exists");
        let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": s.metadata.generation, "replicas": replicas,
            "readyReplicas": replicas, "currentReplicas": replicas, "updatedReplicas": replicas,
            "availableReplicas": replicas, "currentRevision": "r1", "updateRevision": "r1",
        }});
        self.api::<StatefulSet>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("rolling out {name}: {e}"));
    }

    /// Plays every workload controller for the cluster's current objects.
    pub async fn roll_out_all(&self, cluster: &str) {
        let selector = format!("app.kubernetes.io/instance={cluster}");
        for d in self
            .api::<Deployment>()
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing Deployments")
        {
            self.roll_out_deployment(&d.name_any()).await;
        }
        for s in self
            .api::<StatefulSet>()
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing StatefulSets")
        {
            self.roll_out_stateful_set(&s.name_any()).await;
        }
    }

    /// From nothing to `Ready=True`: migrations complete, every workload rolled out.
    pub async fn bring_up(&self, cluster: &str, spec: Value) -> ChatCluster {
        self.apply_cluster(cluster, spec).await;
        self.complete_migrations(cluster, 4).await;
        for c in ["auth", "chat", "notification", "saga"] {
            let name = format!("{cluster}-{c}");
            eventually(&format!("Deployment {name}"), SETTLE, || async {
                self.deployment(&name).await
            })
            .await;
        }
        self.roll_out_all(cluster).await;
        self.wait_condition(cluster, "Ready", "True", "AllComponentsReady")
            .await
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.api::<Secret>()
            .get_opt(name)
            .await
            .expect("reading a Secret")
    }

    pub async fn delete_cluster(&self, name: &str) {
        self.api::<ChatCluster>()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting ChatCluster {name}: {e}"));
    }

    /// `kubectl` as the admin, in this world's namespace.
    pub fn kubectl(&self) -> Command {
        let mut cmd = self.plane.kubectl();
        cmd.args(["-n", &self.ns]);
        cmd
    }

    /// `kubectl apply --dry-run=server` of a ChatCluster with this spec: `Err(stderr)` when
    /// the API server refuses it.
    pub fn dry_run(&self, name: &str, spec: Value) -> Result<String, String> {
        dry_run_object(
            self,
            json!({
                "apiVersion": "grpcchat.dev/v1alpha1",
                "kind": "ChatCluster",
                "metadata": {"name": name, "namespace": self.ns},
                "spec": spec,
            }),
        )
    }
}

/// `kubectl apply --server-side --dry-run=server -f -` of `object`.
pub fn dry_run_object(world: &World, object: Value) -> Result<String, String> {
    use std::io::Write;
    let mut child = world
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            USER,
            "--dry-run=server",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(object.to_string().as_bytes())
        .expect("writing to kubectl");
    let out = child.wait_with_output().expect("running kubectl");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

pub fn condition_of<'a>(
    c: &'a ChatCluster,
    type_: &str,
) -> Option<&'a chat_operator::crd::Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
}

/// Whether `job` is a PostgreSQL roles Job (not a migration).
pub fn is_roles_job(job: &Job) -> bool {
    job.labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some(chat_operator::render::POSTGRES_ROLES)
}

pub fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image of a Deployment's first container.
pub fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The pod template annotations of a Deployment.
pub fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// A Secret with string data.
pub async fn put_secret(w: &World, name: &str, data: &[(&str, &str)]) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": w.ns},
        "stringData": data.iter().cloned().collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    w.api::<Secret>()
        .patch(
            name,
            &PatchParams::apply(USER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("writing Secret {name}: {e}"));
}

pub fn secret_value(s: &Secret, key: &str) -> String {
    let data: &BTreeMap<String, ByteString> = s.data.as_ref().expect("the Secret has data");
    String::from_utf8(data[key].0.clone()).unwrap()
}

/// The env var `name` of the Deployment's container, as JSON.
pub fn env_of(d: &Deployment, name: &str) -> Option<Value> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .map(|e| serde_json::to_value(e).unwrap())
}

pub fn job_env(job: &Job, name: &str) -> Option<Value> {
    let c = &job.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .map(|e| serde_json::to_value(e).unwrap())
}

pub fn degraded_message(c: &chat_operator::crd::ChatCluster) -> String {
    condition_of(c, "Degraded")
        .map(|x| x.message.clone())
        .unwrap_or_default()
}

/// Every condition message is short: a sentence or a few, never a dump of a response.
pub fn assert_short_messages(c: &chat_operator::crd::ChatCluster) {
    for cond in &c.status.as_ref().unwrap().conditions {
        assert!(
            cond.message.len() <= 1024,
            "{} message is {} bytes: {}",
            cond.type_,
            cond.message.len(),
            cond.message
        );
    }
}
