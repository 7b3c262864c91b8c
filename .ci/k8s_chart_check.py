#!/usr/bin/env python3
"""The Helm chart and the plain manifests install the same operator.

    python3 .ci/k8s_chart_check.py OUTDIR

Renders charts/chat-operator with `helm template` (default values, and a set of
non-default values), builds k8s/ with `kubectl kustomize`, and then

  * equivalence: every object of the default render equals the object of the same
    kind/namespace/name in k8s/, once the labels and annotations only Helm adds are
    removed (helm.sh/chart, app.kubernetes.io/managed-by: Helm, app.kubernetes.io/version,
    meta.helm.sh/*). The only object allowed on one side alone is k8s/'s Namespace
    (`helm install --create-namespace` makes it). A difference fails with a diff.
  * variants: the non-default values land where they should (a Role instead of a
    ClusterRole for watchNamespace, no Lease RBAC without leader election, resources,
    image, env, scheduling fields; no PodDisruptionBudget for one replica).
  * ServiceMonitor: with metrics.serviceMonitor.enabled=true the chart renders one that
    selects the metrics Service's labels and port, valid against the Prometheus
    Operator's CRD schema (../shared/k8s-testenv/crds/, skipped when that is absent).
  * the sample shipped with the chart (samples/chatcluster.yaml) is k8s/sample-chatcluster.yaml.

The renders are written to OUTDIR (for kubernetes-validate). `helm` and `kubectl` are
taken from PATH.
"""

import difflib
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "chat-operator"
RELEASE = "chat-operator"
NAMESPACE = "chat-operator"

# Labels and annotations that only exist because Helm installed the object.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/version"}
HELM_ANNOTATION_PREFIXES = ("meta.helm.sh/", "helm.sh/")

# Non-default values, and what they must produce.
VARIANT_VALUES = [
    "watchNamespace=team-a",
    "leaderElection.enabled=false",
    "replicaCount=1",
    "image.repository=registry.example.com/ops/chat-operator",
    "image.tag=9.9.9",
    "image.pullPolicy=Always",
    "imagePullSecrets[0].name=regcred",
    "resources.requests.cpu=200m",
    "resources.requests.memory=128Mi",
    "resources.limits.memory=1Gi",
    "logLevel=debug",
    "otlpEndpoint=http://otel-collector.observability:4317",
    "nodeSelector.kubernetes\\.io/os=linux",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "podAnnotations.example\\.com/team=chat",
]

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def helm_template(extra):
    return run(["helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--include-crds", *extra])


def load(text, source):
    objs = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        meta = doc.get("metadata", {})
        key = (doc["kind"], meta.get("namespace", ""), meta["name"])
        if key in objs:
            fail(f"{source}: {key} appears twice")
        objs[key] = doc
    return objs


def strip_helm(meta):
    labels = meta.get("labels") or {}
    for k in list(labels):
        if k in HELM_LABELS or (k == "app.kubernetes.io/managed-by" and labels[k] == "Helm"):
            del labels[k]
    if "labels" in meta and not labels:
        del meta["labels"]
    ann = meta.get("annotations") or {}
    for k in list(ann):
        if k.startswith(HELM_ANNOTATION_PREFIXES):
            del ann[k]
    if "annotations" in meta and not ann:
        del meta["annotations"]


def numbers(v):
    """`minimum: 0.0` (the generated CRD) and `minimum: 0` (kustomize's re-encoding) are
    the same schema: compare integral floats as integers."""
    if isinstance(v, dict):
        return {k: numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [numbers(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def normalise(obj):
    obj = numbers(obj)
    strip_helm(obj.get("metadata", {}))
    tmpl = obj.get("spec", {}).get("template", {})
    if "metadata" in tmpl:
        strip_helm(tmpl["metadata"])
    return obj


def dump(obj):
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False).splitlines(keepends=True)


def fmt(key):
    kind, ns, name = key
    return f"{kind} {ns + '/' if ns else ''}{name}"


def equivalence(chart, manifests):
    chart = {k: normalise(v) for k, v in chart.items()}
    manifests = {k: normalise(v) for k, v in manifests.items()}
    only_manifests = set(manifests) - set(chart)
    allowed = {("Namespace", "", NAMESPACE)}
    for key in sorted(only_manifests - allowed):
        fail(f"{fmt(key)} is in k8s/ but the chart does not render it")
    for key in sorted(set(chart) - set(manifests)):
        fail(f"{fmt(key)} is rendered by the chart but missing from k8s/")
    for key in sorted(set(chart) & set(manifests)):
        a, b = dump(manifests[key]), dump(chart[key])
        if a != b:
            diff = "".join(difflib.unified_diff(a, b, "k8s/", "chart (default values)", n=3))
            fail(f"{fmt(key)} differs between k8s/ and the chart:\n{diff}")
    print(f"equivalence: {len(set(chart) & set(manifests))} objects compared "
          f"(chart {len(chart)}, k8s/ {len(manifests)})")


def by_kind(objs, kind):
    return {k: v for k, v in objs.items() if k[0] == kind}


def expect(cond, msg):
    if not cond:
        fail(f"variant: {msg}")


def variant(objs):
    roles = by_kind(objs, "Role")
    expect(not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"),
           "watchNamespace set, yet cluster-wide RBAC is rendered")
    expect(("Role", "team-a", RELEASE) in roles, "no Role chat-operator in team-a")
    binding = objs.get(("RoleBinding", "team-a", RELEASE))
    expect(binding is not None and binding["roleRef"]["kind"] == "Role"
           and binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE,
                                        "namespace": NAMESPACE}],
           "RoleBinding in team-a does not bind the operator's ServiceAccount to its Role")
    expect(not any("leader-election" in k[2] for k in objs),
           "leader election off, yet its Role/RoleBinding are rendered")
    dep = objs.get(("Deployment", NAMESPACE, RELEASE))
    if dep is None:
        fail("variant: no Deployment")
        return
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    expect(dep["spec"]["replicas"] == 1, "replicaCount not applied")
    expect(c["image"] == "registry.example.com/ops/chat-operator:9.9.9", f"image is {c['image']}")
    expect(c["imagePullPolicy"] == "Always", "image.pullPolicy not applied")
    expect(pod.get("imagePullSecrets") == [{"name": "regcred"}], "imagePullSecrets not applied")
    expect(c["resources"] == {"requests": {"cpu": "200m", "memory": "128Mi"},
                              "limits": {"memory": "1Gi"}},
           f"resources are {c['resources']}")
    expect(env.get("WATCH_NAMESPACE") == "team-a", "WATCH_NAMESPACE is not team-a")
    expect(env.get("LEADER_ELECTION") == "false", "LEADER_ELECTION is not false")
    expect(env.get("RUST_LOG") == "debug", "logLevel not applied")
    expect(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability:4317",
           "otlpEndpoint not applied")
    expect(pod.get("nodeSelector") == {"kubernetes.io/os": "linux"}, "nodeSelector not applied")
    expect(pod.get("tolerations") == [{"key": "dedicated", "operator": "Exists"}],
           "tolerations not applied")
    expect(not by_kind(objs, "PodDisruptionBudget"),
           "replicaCount=1, yet a PodDisruptionBudget (minAvailable 1 would block drains)")
    expect(not by_kind(objs, "ServiceMonitor"), "a ServiceMonitor although not enabled")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    expect(ann.get("example.com/team") == "chat" and ann.get("prometheus.io/scrape") == "true",
           "podAnnotations not merged with the Prometheus ones")
    print(f"variant: {len(objs)} objects checked ({', '.join(VARIANT_VALUES[:2])}, ...)")


def strict(schema):
    """Structural CRD schemas prune unknown fields; fail on them instead, as
    kubernetes-validate --strict does for built-in kinds."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


def crd_schema(path):
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return strict(version["schema"]["openAPIV3Schema"])
    sys.exit(f"{path}: no v1 schema")


def service_monitor(text):
    objs = load(text, "chart (serviceMonitor)")
    monitors = by_kind(objs, "ServiceMonitor")
    if len(monitors) != 1:
        fail(f"serviceMonitor enabled: {len(monitors)} ServiceMonitors rendered")
        return
    sm = next(iter(monitors.values()))
    svc = objs.get(("Service", NAMESPACE, f"{RELEASE}-metrics"))
    if svc is None:
        fail("serviceMonitor: no Service chat-operator-metrics")
        return
    labels = svc["metadata"]["labels"]
    sel = sm["spec"]["selector"]["matchLabels"]
    expect(all(labels.get(k) == v for k, v in sel.items()),
           f"ServiceMonitor selector {sel} does not match the Service's labels {labels}")
    ports = {p["name"] for p in svc["spec"]["ports"]}
    expect(all(e["port"] in ports for e in sm["spec"]["endpoints"]),
           "ServiceMonitor endpoint port is not a port of the metrics Service")
    expect(sm["metadata"]["labels"].get("release") == "prometheus",
           "metrics.serviceMonitor.labels not applied")
    crd = ROOT.parent / "shared" / "k8s-testenv" / "crds" / "monitoring.coreos.com_servicemonitors.yaml"
    if not crd.exists():
        print(f"serviceMonitor: {crd.name} not found, schema check skipped")
        return
    import jsonschema
    errors = list(jsonschema.Draft7Validator(crd_schema(crd)).iter_errors(sm))
    for e in errors:
        fail(f"ServiceMonitor vs its CRD schema: {'/'.join(map(str, e.path))}: {e.message}")
    print("serviceMonitor: rendered, selects the metrics Service, valid against its CRD")


def sample():
    shipped = (CHART / "samples" / "chatcluster.yaml").read_text()
    expect(shipped == (ROOT / "k8s" / "sample-chatcluster.yaml").read_text(),
           "charts/chat-operator/samples/chatcluster.yaml differs from k8s/sample-chatcluster.yaml")


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "k8s-checks"
    out.mkdir(parents=True, exist_ok=True)

    default_text = helm_template([])
    variant_text = helm_template([a for v in VARIANT_VALUES for a in ("--set", v)])
    manifests_text = run(["kubectl", "kustomize", "k8s/"])
    (out / "chart-default.yaml").write_text(default_text)
    (out / "chart-variant.yaml").write_text(variant_text)
    (out / "kustomize.yaml").write_text(manifests_text)

    equivalence(load(default_text, "chart"), load(manifests_text, "k8s/"))
    variant(load(variant_text, "chart (variant)"))
    service_monitor(helm_template(["--set", "metrics.serviceMonitor.enabled=true",
                                   "--set", "metrics.serviceMonitor.labels.release=prometheus"]))
    sample()
    if failures:
        sys.exit(f"{len(failures)} chart check(s) failed")


if __name__ == "__main__":
    main()
