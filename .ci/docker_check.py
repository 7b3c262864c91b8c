#!/usr/bin/env python3
"""Static checks of the Dockerfile and docker-compose.yml (no Docker engine here).

    python3 .ci/docker_check.py

  * the Dockerfile downloads nothing by URL (ADD <url>, curl, wget): only crates and
    Debian packages;
  * every `FROM`/`COPY --from` names a stage defined before it (or an image);
  * every binary a stage copies from the builder (`/out/<name>`) is a binary target of
    the workspace (`cargo metadata`), so `cargo build --workspace --bins` produces it;
  * compose: each built service's target is a stage, its build args are declared ARGs,
    its health check runs a program its image has, and depends_on names services that
    exist (with a health check where it waits for `service_healthy`).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Binaries whose crate another change is adding; a warning, not a failure, until it lands.
PENDING: dict = {}

errors = []


def err(msg):
    errors.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def parse_dockerfile(text):
    # Join continuation lines, drop comments.
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    global_args, stages, order = {}, {}, []
    current = None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and current is None:
            name, _, default = rest.strip().partition("=")
            global_args[name] = default
        elif word == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", rest.strip(), re.I)
            image, name = m.group(1), m.group(2)
            current = {"from": image, "lines": [], "args": set()}
            stages[name or f"#{len(order)}"] = current
            order.append(name)
        elif current is not None:
            current["lines"].append((word, rest))
            if word == "ARG":
                current["args"].add(rest.split("=")[0].strip())
    return global_args, stages, order


def workspace_bins():
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                             cwd=ROOT, capture_output=True, text=True, check=True)
    meta = json.loads(out.stdout)
    return {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}


def main():
    text = (ROOT / "Dockerfile").read_text()
    global_args, stages, order = parse_dockerfile(text)

    for m in re.finditer(r"^\s*ADD\s+(?:--\S+\s+)*(https?://\S+)", text, re.M | re.I):
        err(f"Dockerfile: ADD downloads {m.group(1)}")
    for m in re.finditer(r"\b(curl|wget)\b[^\n]*https?://", text):
        err(f"Dockerfile: {m.group(1)} downloads from a URL")

    def expand(ref, values):
        return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), ref)

    tool_values = {global_args.get("HEALTHCHECK_TOOL", "")}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        if isinstance(svc.get("build"), dict):
            tool_values.add((svc["build"].get("args") or {}).get("HEALTHCHECK_TOOL",
                                                             global_args.get("HEALTHCHECK_TOOL", "")))

    seen = set()
    for name in order:
        stage = stages[name] if name else None
        if stage is None:
            continue
        refs = [stage["from"]] + [re.search(r"--from=(\S+)", rest).group(1)
                                   for word, rest in stage["lines"]
                                   if word == "COPY" and "--from=" in rest]
        for ref in refs:
            if "${" in ref and not ref.startswith("${"):  # a stage chosen by a build arg
                for v in tool_values:
                    if expand(ref, {"HEALTHCHECK_TOOL": v}) not in seen:
                        err(f"Dockerfile: stage {name}: {ref} with HEALTHCHECK_TOOL={v} "
                            f"is no stage defined before it")
            elif ref.startswith("${"):
                var = ref[2:].split("}")[0]
                if var not in global_args:
                    err(f"Dockerfile: stage {name}: {ref} uses an undeclared ARG")
            elif "/" not in ref and ":" not in ref and ref != "scratch" and ref not in seen:
                err(f"Dockerfile: stage {name}: {ref} is no stage defined before it")
        seen.add(name)

    bins = workspace_bins()
    copied = set(re.findall(r"COPY\s+--from=builder\s+(?:--\S+\s+)*/out/([\w.-]+)", text))
    for b in sorted(copied):
        if b not in bins:
            if b in PENDING:
                print(f"WARNING: Dockerfile copies {b}, not yet a workspace binary: "
                      f"{PENDING[b]} is being added", file=sys.stderr)
            else:
                err(f"Dockerfile copies /out/{b}, but no workspace crate has a binary {b}")
    missing = {"auth-service", "chat-service", "notification-service", "saga-orchestrator",
               "chat", "chat-operator", "chat-server"} - copied
    if missing:
        err(f"Dockerfile: no target for {sorted(missing)}")

    # What a service image has under /usr/local/bin for each HEALTHCHECK_TOOL.
    def health_tools(tool):
        stage = stages.get(f"healthcheck-{tool}")
        if stage is None:
            return set()
        has = set()
        for word, rest in stage["lines"]:
            has |= set(re.findall(r"/healthcheck/([\w.-]+)", rest))
        return {f"/usr/local/bin/{h}" for h in has}

    names = set(compose["services"])
    for sname, svc in compose["services"].items():
        build = svc.get("build")
        health = (svc.get("healthcheck") or {}).get("test")
        if isinstance(build, dict):
            target = build.get("target")
            if target not in stages:
                err(f"compose {sname}: target {target!r} is not a Dockerfile stage")
            for arg in build.get("args") or {}:
                if arg not in global_args and not any(arg in s["args"] for s in stages.values()):
                    err(f"compose {sname}: build arg {arg} is not declared in the Dockerfile")
            if health and health[0] == "CMD":
                program = health[1]
                tool = (build.get("args") or {}).get("HEALTHCHECK_TOOL",
                                                     global_args.get("HEALTHCHECK_TOOL"))
                if program.startswith("/usr/local/bin/") and program not in health_tools(tool):
                    err(f"compose {sname}: health check runs {program}, which the image "
                        f"(HEALTHCHECK_TOOL={tool}) does not have")
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else [(d, {}) for d in deps]):
            if dep not in names:
                err(f"compose {sname}: depends_on {dep}, which is no service")
            elif (cond or {}).get("condition") == "service_healthy" \
                    and not compose["services"][dep].get("healthcheck"):
                err(f"compose {sname}: waits for {dep} to be healthy, which has no health check")

    if errors:
        sys.exit(f"{len(errors)} Dockerfile/compose problem(s)")
    print(f"Dockerfile: {len([n for n in order if n])} stages, {len(copied)} binaries; "
          f"compose: {len(names)} services checked")


if __name__ == "__main__":
    main()
