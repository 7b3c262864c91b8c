#!/usr/bin/env python3
"""Evaluates the Tiltfile offline and checks what it refers to.

    python3 .ci/tiltfile_check.py [RENDERED_SAMPLE.yaml]

The Tiltfile runs in a Starlark interpreter (PyPI `starlark-pyo3`) with stubs of the Tilt
built-ins it may call. The stubs have Tilt's parameter names and no catch-all, so an
unknown built-in or keyword fails, and every path they are given must exist. After the
evaluation it checks:

  * docker_build: the context and Dockerfile exist, the target is a stage of the
    Dockerfile, every `only` entry exists and together they hold every workspace member
    (otherwise `cargo build --workspace` fails inside the image), and every image built is
    used by an object Tilt deploys (Tilt skips images nothing uses);
  * the objects given to k8s_yaml parse; k8s_resource's workloads, `objects` selectors and
    resource_deps name things that exist; port forwards point at a container port;
  * k8s_kind image paths resolve in the custom resources and hold built images;
  * the images Tilt substitutes into the sample ChatCluster are the images the operator
    gives those services for the unmodified sample (RENDERED_SAMPLE, default
    operator/tests/expected/sample-rendered.yaml, the checked-in `chat-operator render
    k8s/sample-chatcluster.yaml`), so Tilt's builds replace the real ones;
  * `kubectl port-forward svc/...` commands name a Service and port the operator renders.
"""

import fnmatch
import glob
import re
import shlex
import sys
import tomllib
from pathlib import Path

import starlark as sl
import yaml

ROOT = Path(__file__).resolve().parent.parent
TILTFILE = ROOT / "Tiltfile"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}


class CheckError(Exception):
    pass


class Blob:
    """Tilt's Blob: YAML or text produced by the Tiltfile. Handed to Starlark as an opaque
    value (it comes back as itself when passed to a stub; `str(blob)` is not supported)."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def blob(text):
    return sl.OpaquePythonObject(Blob(text))


def path(p, kind="file"):
    if not isinstance(p, str):
        raise CheckError(f"expected a path, got {p!r}")
    full = ROOT / p
    if kind == "file" and not full.is_file():
        raise CheckError(f"{p}: no such file")
    if kind == "dir" and not full.is_dir():
        raise CheckError(f"{p}: no such directory")
    if kind == "any" and not full.exists():
        raise CheckError(f"{p}: no such file or directory")
    return full


class Tilt:
    def __init__(self):
        self.builds = []          # docker_build calls
        self.objects = []         # every k8s object given to k8s_yaml
        self.resources = []       # k8s_resource calls
        self.kinds = {}           # k8s_kind: kind -> image json paths
        self.local_resources = []
        self.contexts = []

    # --- the stubs: Tilt's names and parameters (https://docs.tilt.dev/api.html) ---

    def allow_k8s_contexts(self, contexts):
        self.contexts += [contexts] if isinstance(contexts, str) else list(contexts)

    def docker_build(self, ref, context, build_args=None, dockerfile="Dockerfile",
                     dockerfile_contents="", live_update=None, match_in_env_vars=False,
                     ignore=None, only=None, entrypoint=None, target="", ssh="", network="",
                     secret="", extra_tag="", container_args=None, cache_from=None,
                     pull=False, platform="", env_vars=None):
        path(context, "dir")
        if not dockerfile_contents:
            path(dockerfile)
        self.builds.append(dict(ref=ref, context=context, dockerfile=dockerfile,
                                target=target, only=list(only or [])))

    def k8s_yaml(self, yaml_, allow_duplicates=False):
        items = yaml_ if isinstance(yaml_, list) else [yaml_]
        for item in items:
            if isinstance(item, Blob):
                text, source = item.text, "blob"
            else:
                text, source = path(item).read_text(), item
            for doc in yaml.safe_load_all(text):
                if doc:
                    for field in ("apiVersion", "kind", "metadata"):
                        if field not in doc:
                            raise CheckError(f"k8s_yaml({source}): an object without {field}")
                    self.objects.append(doc)

    def k8s_resource(self, workload="", new_name="", port_forwards=None,
                     extra_pod_selectors=None, trigger_mode=None, resource_deps=None,
                     objects=None, auto_init=True, pod_readiness="", links=None,
                     labels=None, discovery_strategy=""):
        self.resources.append(dict(workload=workload, new_name=new_name,
                                   port_forwards=list(port_forwards or []),
                                   resource_deps=list(resource_deps or []),
                                   objects=list(objects or [])))

    def k8s_kind(self, kind, api_version="", image_json_path=None, image_object=None,
                 pod_readiness=""):
        paths = image_json_path or []
        self.kinds[kind] = [paths] if isinstance(paths, str) else list(paths)

    def local_resource(self, name, cmd="", deps=None, trigger_mode=None, resource_deps=None,
                       ignore=None, auto_init=True, serve_cmd="", cmd_bat="",
                       serve_cmd_bat="", allow_parallel=False, links=None, tags=None,
                       env=None, serve_env=None, readiness_probe=None, dir="",
                       serve_dir="", labels=None):
        for d in deps or []:
            path(d, "any")
        self.local_resources.append(dict(name=name, cmd=cmd, serve_cmd=serve_cmd,
                                         resource_deps=list(resource_deps or [])))

    def read_file(self, file_path, default=None):
        if default is not None and not (ROOT / file_path).is_file():
            return blob(default)
        return blob(path(file_path).read_text())

    def read_yaml(self, file_path, default=None):
        if default is not None and not (ROOT / file_path).is_file():
            return default
        return yaml.safe_load(path(file_path).read_text())

    def read_yaml_stream(self, file_path, default=None):
        if default is not None and not (ROOT / file_path).is_file():
            return default
        return [d for d in yaml.safe_load_all(path(file_path).read_text()) if d]

    def decode_yaml(self, yaml_):
        return yaml.safe_load(str(yaml_))

    def decode_yaml_stream(self, yaml_):
        return [d for d in yaml.safe_load_all(str(yaml_)) if d]

    def encode_yaml(self, obj):
        return blob(yaml.safe_dump(obj, sort_keys=False))

    def encode_yaml_stream(self, objs):
        return blob(yaml.safe_dump_all(objs, sort_keys=False))

    def blob(self, contents):
        return blob(contents)

    def watch_file(self, file_path):
        path(file_path, "any")

    def listdir(self, directory, recursive=False):
        base = path(directory, "dir")
        found = base.rglob("*") if recursive else base.iterdir()
        return sorted(str(p.relative_to(ROOT)) for p in found if p.is_file())

    def local(self, command, quiet=False, command_bat="", echo_off=False, env=None, dir="",
              stdin=None):
        # Not run here: its output is unknown, so nothing may depend on it.
        return blob("")

    def port_forward(self, local_port, container_port=None, name="", link_path="", host=""):
        return f"{local_port}:{container_port or local_port}"

    def include(self, file_path):
        path(file_path)
        raise CheckError(f"include({file_path}): not supported by this check; extend it")

    # ---------------------------------------------------------------------------

    def module(self):
        m = sl.Module()
        for name in dir(self):
            fn = getattr(self, name)
            if not name.startswith("_") and callable(fn) and name not in {"module", "check"}:
                m.add_callable(name, fn)
        return m


def stages(dockerfile):
    return {m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$",
                                            dockerfile.read_text(), re.M | re.I)}


def workspace_members():
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    out = []
    for m in members:
        out += [str(Path(p).relative_to(ROOT)) for p in glob.glob(str(ROOT / m))] or [m]
    return out


def jsonpath_get(obj, expr):
    """The `{.a.b.c}` form of JSONPath that k8s_kind's image_json_path uses."""
    m = re.fullmatch(r"\{\.([A-Za-z0-9_.\-]+)\}", expr)
    if not m:
        raise CheckError(f"image_json_path {expr!r}: only {{.a.b}} paths are checked")
    for part in m.group(1).split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def repo_of(image):
    # registry/name:tag -> registry/name (a port in the registry host is not a tag).
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def check(t, rendered_path):
    errors = []
    err = errors.append
    refs = {b["ref"] for b in t.builds}
    members = workspace_members()

    for b in t.builds:
        dockerfile = ROOT / b["dockerfile"]
        if b["target"] and b["target"] not in stages(dockerfile):
            err(f"docker_build({b['ref']}): target {b['target']!r} is not a stage of {b['dockerfile']}")
        ctx = ROOT / b["context"]
        for o in b["only"]:
            if not (ctx / o).exists():
                err(f"docker_build({b['ref']}): only entry {o!r} does not exist")
        if b["only"]:
            def covered(member):
                return any(member == o or member.startswith(o.rstrip("/") + "/")
                           or fnmatch.fnmatch(member, o) for o in b["only"])
            for member in members:
                if not covered(member):
                    err(f"docker_build({b['ref']}): workspace member {member!r} is left out by "
                        f"only={b['only']} (cargo cannot build the workspace without it)")
            for f in ("Cargo.toml", "Cargo.lock"):
                if f not in b["only"]:
                    err(f"docker_build({b['ref']}): only= leaves out {f}")

    # Objects, workloads and resources, named as Tilt names them.
    def key(o):
        return (o["kind"].lower(), o["metadata"]["name"], o["metadata"].get("namespace", ""))

    workloads = {}
    for o in t.objects:
        if o["kind"] in WORKLOAD_KINDS or o["kind"] in t.kinds:
            workloads.setdefault(o["metadata"]["name"], o)
    resources = set(workloads) | {r["name"] for r in t.local_resources}
    for r in t.resources:
        if r["workload"] not in workloads:
            err(f"k8s_resource({r['workload']!r}): no workload of that name "
                f"(workloads: {sorted(workloads)})")
        for sel in r["objects"]:
            parts = sel.split(":")
            name, kind, ns = (parts + ["", ""])[:3]
            hits = [o for o in t.objects if key(o)[1] == name and (not kind or key(o)[0] == kind.lower())
                    and (not ns or key(o)[2] == ns)]
            if len(hits) != 1:
                err(f"k8s_resource({r['workload']!r}): objects selector {sel!r} matches {len(hits)} objects")
        for dep in r["resource_deps"]:
            if dep not in resources:
                err(f"k8s_resource({r['workload']!r}): resource_deps {dep!r} is no resource")
        obj = workloads.get(r["workload"])
        if obj is not None and r["port_forwards"] and obj["kind"] in WORKLOAD_KINDS:
            ports = {p["containerPort"] for c in obj["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            for pf in r["port_forwards"]:
                remote = int(str(pf).split(":")[-1])
                if remote not in ports:
                    err(f"k8s_resource({r['workload']!r}): port forward {pf} to a port the "
                        f"pod does not expose ({sorted(ports)})")
    for lr in t.local_resources:
        for dep in lr["resource_deps"]:
            if dep not in resources:
                err(f"local_resource({lr['name']!r}): resource_deps {dep!r} is no resource")

    # Images: what the deployed objects use, and what Tilt substitutes.
    used = set()
    for o in t.objects:
        if o["kind"] in WORKLOAD_KINDS:
            for c in o["spec"]["template"]["spec"].get("containers", []):
                used.add(repo_of(c["image"]))
    custom = [o for o in t.objects if o["kind"] in t.kinds]
    for kind, paths in t.kinds.items():
        objs = [o for o in custom if o["kind"] == kind]
        if not objs:
            err(f"k8s_kind({kind!r}): no object of that kind is deployed")
        for o in objs:
            for p in paths:
                v = jsonpath_get(o, p)
                if not isinstance(v, str):
                    err(f"k8s_kind({kind!r}): {p} is not set in {o['metadata']['name']}")
                    continue
                used.add(repo_of(v))
                if repo_of(v) not in refs:
                    err(f"{kind} {o['metadata']['name']}: {p} = {v!r} is not an image the "
                        f"Tiltfile builds ({sorted(refs)})")
    for ref in sorted(refs - used):
        err(f"docker_build({ref}): no deployed object uses this image, Tilt will not build it")

    # The sample ChatCluster as Tilt deploys it, against the operator's render of the
    # unmodified sample: the same component images, so Tilt's builds replace them.
    rendered = [d for d in yaml.safe_load_all(Path(rendered_path).read_text()) if d]
    deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
                   for d in rendered if d["kind"] == "Deployment"}
    for o in [o for o in custom if o["kind"] == "ChatCluster"]:
        ns, cluster = o["metadata"].get("namespace", ""), o["metadata"]["name"]
        for p in t.kinds["ChatCluster"]:
            comp = p.strip("{}").split(".")[2]  # {.spec.<component>.image}
            dep = deployments.get((ns, f"{cluster}-{comp}"))
            if dep is None:
                err(f"{p}: the operator renders no Deployment {cluster}-{comp} in {ns}")
                continue
            want = repo_of(dep["spec"]["template"]["spec"]["containers"][0]["image"])
            got = repo_of(jsonpath_get(o, p) or "")
            if want != got:
                err(f"{p}: Tilt builds {got!r} but the operator runs {want!r} for the sample")

    services = {(d["metadata"]["namespace"], d["metadata"]["name"]):
                {p["port"] for p in d["spec"]["ports"]} for d in rendered if d["kind"] == "Service"}
    for lr in t.local_resources:
        argv = shlex.split(lr["serve_cmd"] or lr["cmd"] or "")
        if argv[:1] == ["kubectl"] and "port-forward" in argv:
            ns = argv[argv.index("-n") + 1] if "-n" in argv else "default"
            target = next((a for a in argv if a.startswith("svc/")), None)
            if target is None:
                err(f"local_resource({lr['name']!r}): port-forward without svc/<name>")
                continue
            remote = int(argv[-1].split(":")[-1])
            ports = services.get((ns, target[4:]))
            if ports is None:
                err(f"local_resource({lr['name']!r}): the operator renders no Service "
                    f"{target[4:]} in {ns}")
            elif remote not in ports:
                err(f"local_resource({lr['name']!r}): Service {target[4:]} has no port {remote}")
    return errors


def main():
    rendered = sys.argv[1] if len(sys.argv) > 1 else ROOT / "operator/tests/expected/sample-rendered.yaml"
    t = Tilt()
    dialect = sl.Dialect.extended()
    dialect.enable_load = False  # Tilt extensions (load('ext://...')) are not stubbed
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.Print, sl.LibraryExtension.Json,
                                       sl.LibraryExtension.StructType])
    try:
        ast = sl.parse("Tiltfile", TILTFILE.read_text(), dialect)
        sl.eval(t.module(), ast, globals_)
    except sl.StarlarkError as e:
        sys.exit(f"Tiltfile: evaluation failed:\n{e}")
    errors = check(t, rendered)
    for e in errors:
        print(f"Tiltfile: {e}", file=sys.stderr)
    if errors:
        sys.exit(f"Tiltfile: {len(errors)} problem(s)")
    print(f"Tiltfile: {len(t.builds)} images, {len(t.objects)} objects, "
          f"{len(t.resources)} k8s resources, {len(t.local_resources)} local resources checked")


if __name__ == "__main__":
    main()
