#!/usr/bin/env python3
"""Policy checks on rendered Kubernetes manifests (the output of `kubectl kustomize`).

Schema validation (kubernetes-validate) says each object is well-formed; this says it is what
we mean to ship, and catches the API server's own cross-field rules that no JSON schema
carries (a selector that does not match its template, allowPrivilegeEscalation=false next to
CAP_SYS_ADMIN, a probe naming a port the container does not have, ...).

Usage: policy.py [--forbid-privileged] [--config-doc docs/configuration.md] RENDERED.yaml
Prints one line per violation and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
RBAC_ROLE_KINDS = {"Role", "ClusterRole"}
RBAC_BINDING_KINDS = {"RoleBinding", "ClusterRoleBinding"}
# Read-only is all any clovisor component needs from the API.
ALLOWED_VERBS = {"get", "list", "watch"}
# Reading these hands out credentials or a shell on any pod.
FORBIDDEN_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "nodes/proxy"}
FORBIDDEN_ROLE_REFS = {"cluster-admin", "admin", "edit"}
# Environment variables of ours that must be documented in docs/configuration.md.
DOCUMENTED_ENV = re.compile(r"^(CLOVISOR_[A-Z0-9_]+|OTEL_[A-Z0-9_]+|NODE_NAME)$")
IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass
class Report:
    """Violations found so far, each as `Kind/name: what is wrong`."""

    violations: list[str] = field(default_factory=list)

    def add(self, obj: dict[str, Any], message: str) -> None:
        self.violations.append(f"{ident(obj)}: {message}")


def ident(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<unnamed>")
    return f"{obj.get('kind', '<no kind>')}/{ns + '/' if ns else ''}{name}"


def load(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML stream."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise ValueError(f"a document is a {type(d).__name__}, not a mapping")
    return docs


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") == "Pod":
        return obj.get("spec") or {}
    if obj.get("kind") in WORKLOAD_KINDS:
        return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    if obj.get("kind") == "CronJob":
        job = ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
        return (job.get("template") or {}).get("spec") or {}
    return None


def template_labels(obj: dict[str, Any]) -> dict[str, str]:
    return (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            yield key, c


def check_rbac(obj: dict[str, Any], report: Report) -> None:
    kind = obj.get("kind")
    if kind in RBAC_ROLE_KINDS:
        if obj.get("aggregationRule"):
            report.add(obj, "aggregated roles grant whatever other roles say: not allowed")
        for i, rule in enumerate(obj.get("rules") or []):
            where = f"rule {i}"
            for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                values = rule.get(key) or []
                if any("*" in str(v) for v in values):
                    report.add(obj, f"{where}: wildcard in {key}: {values}")
            extra_verbs = sorted(set(rule.get("verbs") or []) - ALLOWED_VERBS - {"*"})
            if extra_verbs:
                report.add(obj, f"{where}: verbs beyond get/list/watch: {extra_verbs}")
            bad = sorted(set(rule.get("resources") or []) & FORBIDDEN_RESOURCES)
            if bad:
                report.add(obj, f"{where}: forbidden resources {bad}")
            if rule.get("nonResourceURLs"):
                report.add(obj, f"{where}: nonResourceURLs are not needed")
    elif kind in RBAC_BINDING_KINDS:
        ref = (obj.get("roleRef") or {}).get("name")
        if ref in FORBIDDEN_ROLE_REFS:
            report.add(obj, f"binds the built-in role {ref!r}")


def capabilities_added(sc: dict[str, Any]) -> set[str]:
    added = ((sc.get("capabilities") or {}).get("add")) or []
    return {str(c).upper().removeprefix("CAP_") for c in added}


def check_pod(obj: dict[str, Any], spec: dict[str, Any], forbid_privileged: bool, report: Report) -> None:
    pod_sc = spec.get("securityContext") or {}
    host_network = bool(spec.get("hostNetwork"))
    for key in ("hostPID", "hostIPC"):
        if spec.get(key):
            report.add(obj, f"{key}: true is not needed by any component")
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    for key, c in containers(spec):
        name = f"{key[:-1]} {c.get('name')!r}"
        sc = c.get("securityContext") or {}
        privileged = bool(sc.get("privileged"))

        if privileged and forbid_privileged:
            report.add(obj, f"{name}: privileged: true (capabilities instead; overlays/privileged for old kernels)")
        # API server rules (pkg/apis/core/validation) that the OpenAPI schema does not carry.
        if sc.get("allowPrivilegeEscalation") is False:
            if privileged:
                report.add(obj, f"{name}: allowPrivilegeEscalation: false with privileged: true is rejected by the API server")
            if "SYS_ADMIN" in capabilities_added(sc):
                report.add(obj, f"{name}: allowPrivilegeEscalation: false with CAP_SYS_ADMIN is rejected by the API server")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                report.add(obj, f"{name}: mounts volume {m.get('name')!r}, which the pod does not declare")
            if m.get("mountPropagation") == "Bidirectional" and not privileged:
                report.add(obj, f"{name}: Bidirectional mount propagation needs a privileged container")

        # Hardening every container of ours has.
        if sc.get("readOnlyRootFilesystem") is not True:
            report.add(obj, f"{name}: readOnlyRootFilesystem must be true")
        if not privileged and "ALL" not in [str(d).upper() for d in ((sc.get("capabilities") or {}).get("drop") or [])]:
            report.add(obj, f"{name}: capabilities must drop ALL")
        if not host_network:
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True or uid == 0:
                report.add(obj, f"{name}: must run as non-root (runAsNonRoot: true, non-zero runAsUser)")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.add(obj, f"{name}: allowPrivilegeEscalation must be false")

        # Resources and probes.
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
            if missing:
                report.add(obj, f"{name}: resources.{kind} lacks {missing}")
        ports = c.get("ports") or []
        port_names = [p.get("name") for p in ports if p.get("name")]
        for pn in port_names:
            if not IANA_SVC_NAME.match(pn):
                report.add(obj, f"{name}: port name {pn!r} is not an IANA service name (<= 15 chars, a-z0-9-)")
        if len(port_names) != len(set(port_names)):
            report.add(obj, f"{name}: duplicate port names {port_names}")
        if key == "containers":
            for probe in ("livenessProbe", "readinessProbe"):
                p = c.get(probe)
                if not p:
                    report.add(obj, f"{name}: no {probe}")
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (p.get(handler) or {}).get("port")
                    if isinstance(port, str) and port not in port_names:
                        report.add(obj, f"{name}: {probe} uses port {port!r}, not one of {port_names}")

        # Images: pinned by tag or digest.
        image = str(c.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        if "@" not in image and (":" not in last or last.endswith(":latest")):
            report.add(obj, f"{name}: image {image!r} has no explicit tag (or is :latest)")


def check_env_documented(obj: dict[str, Any], spec: dict[str, Any], doc: str, report: Report) -> None:
    for _, c in containers(spec):
        if not str(c.get("image", "")).startswith("clovisor/"):
            continue
        for e in c.get("env") or []:
            n = e.get("name", "")
            if DOCUMENTED_ENV.match(n) and f"`{n}`" not in doc:
                report.add(obj, f"container {c.get('name')!r}: env {n} is not in docs/configuration.md (typo?)")


def check_selectors(objs: list[dict[str, Any]], report: Report) -> None:
    workloads = [o for o in objs if o.get("kind") in WORKLOAD_KINDS]
    for w in workloads:
        sel = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        labels = template_labels(w)
        if not sel:
            report.add(w, "spec.selector.matchLabels is empty")
        elif any(labels.get(k) != v for k, v in sel.items()):
            report.add(w, f"selector {sel} does not match template labels {labels} (the API server rejects it)")
    for svc in (o for o in objs if o.get("kind") == "Service"):
        spec = svc.get("spec") or {}
        sel = spec.get("selector") or {}
        if not sel:
            continue
        ns = (svc.get("metadata") or {}).get("namespace")
        backends = [
            w for w in workloads
            if (w.get("metadata") or {}).get("namespace") == ns
            and all(template_labels(w).get(k) == v for k, v in sel.items())
        ]
        if not backends:
            report.add(svc, f"selector {sel} matches no workload in this rendering")
            continue
        names = set()
        for w in backends:
            for _, c in containers(pod_spec(w) or {}):
                names |= {p.get("name") for p in c.get("ports") or []}
        for p in spec.get("ports") or []:
            target = p.get("targetPort")
            if isinstance(target, str) and target not in names:
                report.add(svc, f"port {p.get('name')!r} targets {target!r}, which no selected container has")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_network_policies(objs: list[dict[str, Any]], report: Report) -> None:
    """Every namespace with pods (host-network ones aside: no policy selects them) denies all
    traffic by default, and every such pod has a policy of its own saying what it may receive."""
    workloads = [
        o for o in objs
        if o.get("kind") in WORKLOAD_KINDS and not (pod_spec(o) or {}).get("hostNetwork")
    ]
    policies = [o for o in objs if o.get("kind") == "NetworkPolicy"]

    def ns(o: dict[str, Any]) -> str | None:
        return (o.get("metadata") or {}).get("namespace")

    def types(p: dict[str, Any]) -> set[str]:
        return set((p.get("spec") or {}).get("policyTypes") or [])

    def selector(p: dict[str, Any]) -> dict[str, Any]:
        return (p.get("spec") or {}).get("podSelector") or {}

    for w in workloads:
        mine = [p for p in policies if ns(p) == ns(w)]
        if not any(not selector(p) and {"Ingress", "Egress"} <= types(p) for p in mine):
            report.add(w, "its namespace has no default-deny NetworkPolicy (podSelector {}, Ingress and Egress)")
        if not any(selector(p) and "Ingress" in types(p) and selects(selector(p), template_labels(w)) for p in mine):
            report.add(w, "no NetworkPolicy of its own says what its pods may receive")


def check(objs: list[dict[str, Any]], forbid_privileged: bool, config_doc: str | None) -> list[str]:
    """All violations in the rendered objects `objs`."""
    report = Report()
    seen: set[tuple[str, str | None, str | None]] = set()
    for obj in objs:
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), meta.get("namespace"), meta.get("name"))
        if key in seen:
            report.add(obj, "defined twice")
        seen.add(key)
        check_rbac(obj, report)
        spec = pod_spec(obj)
        if spec is not None:
            check_pod(obj, spec, forbid_privileged, report)
            if config_doc is not None:
                check_env_documented(obj, spec, config_doc, report)
    check_selectors(objs, report)
    check_network_policies(objs, report)
    return report.violations


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", type=Path, help="output of kubectl kustomize")
    ap.add_argument("--forbid-privileged", action="store_true", help="fail on any privileged: true")
    ap.add_argument("--config-doc", type=Path, help="docs/configuration.md, to check env names against")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        objs = load(args.rendered.read_text())
        doc = args.config_doc.read_text() if args.config_doc else None
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"policy: cannot read input: {e}", file=sys.stderr)
        return 2
    if not objs:
        print(f"policy: {args.rendered} holds no objects", file=sys.stderr)
        return 1
    violations = check(objs, args.forbid_privileged, doc)
    for v in violations:
        print(f"policy: {v}")
    print(f"policy: {len(objs)} objects, {len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
