#!/usr/bin/env python3
"""Policy checks on rendered Kubernetes manifests (the output of `kubectl kustomize`).

Schema validation (kubernetes-validate) says each object is well-formed; this says it is what
we mean to ship, and catches the API server's own cross-field rules that no JSON schema
carries (a selector that does not match its template, allowPrivilegeEscalation=false next to
CAP_SYS_ADMIN, a probe naming a port the container does not have, ...), and what Pod Security
admission will enforce: every pod is checked against the level its namespace enforces
(`pod-security.kubernetes.io/enforce`), with the rules of the Pod Security Standards.

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
# Read-only is all any clovisor component needs from the API...
ALLOWED_VERBS = {"get", "list", "watch"}
# ... but for these writes, each allowed only as narrowly as written here:
# (apiGroup, resource, verb, needs resourceNames). TokenReview asks the API server whose a
# token is (the correlator's REST API, the Jaeger UI's proxy); serviceaccounts/token lets a user mint a token of one
# named ServiceAccount (clovisor-cli), never of any.
ALLOWED_WRITES = {
    ("authentication.k8s.io", "tokenreviews", "create", False),
    # SubjectAccessReview asks whether a reviewed identity may do something (the Jaeger UI's
    # authenticating proxy).
    ("authorization.k8s.io", "subjectaccessreviews", "create", False),
    ("", "serviceaccounts/token", "create", True),
}
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
            if extra_verbs and not write_allowed(rule):
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


def write_allowed(rule: dict[str, Any]) -> bool:
    """Whether every (group, resource, verb) beyond read-only in `rule` is an ALLOWED_WRITES
    entry, with the resourceNames it needs."""
    named = bool(rule.get("resourceNames"))
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in set(rule.get("verbs") or []) - ALLOWED_VERBS:
                entry = next((w for w in ALLOWED_WRITES if w[:3] == (group, resource, verb)), None)
                if entry is None or (entry[3] and not named):
                    return False
    return True


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


# --- Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
PSS_LEVELS = ("privileged", "baseline", "restricted")
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}


def all_containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container Pod Security looks at: init, regular and ephemeral."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield f"{key[:-1]} {c.get('name')!r}", c


def baseline_violations(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """What in pod spec `spec` the Pod Security `baseline` level forbids."""
    found = []
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"{key}: true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("windowsOptions.hostProcess: true")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            found.append(f"hostPath volume {v.get('name')!r}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor annotation {key}: {value}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    contexts = [("pod", pod_sc)] + [(name, c.get("securityContext") or {}) for name, c in all_containers(spec)]
    for where, sc in contexts:
        if ((sc.get("seccompProfile") or {}).get("type")) == "Unconfined":
            found.append(f"{where}: seccompProfile Unconfined")
        if ((sc.get("appArmorProfile") or {}).get("type")) == "Unconfined":
            found.append(f"{where}: appArmorProfile Unconfined")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            found.append(f"{where}: seLinuxOptions {se}")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: windowsOptions.hostProcess: true")
    for name, c in all_containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{name}: privileged: true")
        extra = sorted(capabilities_added(sc) - BASELINE_CAPABILITIES)
        if extra:
            found.append(f"{name}: adds capabilities {extra}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {sc.get('procMount')}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                found.append(f"{name}: hostPort {p.get('hostPort')}")
    return found


def restricted_violations(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """What in pod spec `spec` the Pod Security `restricted` level forbids (baseline's rules
    included)."""
    found = baseline_violations(spec, annotations)
    pod_sc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or []:
        kinds = sorted(set(v) - {"name"})
        if kinds and not set(kinds) <= RESTRICTED_VOLUMES:
            found.append(f"volume {v.get('name')!r} of type {kinds}")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for name, c in all_containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in [str(d).upper() for d in caps.get("drop") or []]:
            found.append(f"{name}: capabilities must drop ALL")
        extra = sorted(capabilities_added(sc) - {"NET_BIND_SERVICE"})
        if extra:
            found.append(f"{name}: adds capabilities {extra} (restricted: NET_BIND_SERVICE only)")
    return found


def check_pod_security(objs: list[dict[str, Any]], report: Report) -> None:
    """Every pod runs in a namespace of this rendering that enforces a Pod Security level, and
    meets it; a namespace enforcing less than `restricted` holds only pods that need it."""
    levels = {
        (o.get("metadata") or {}).get("name"): ((o.get("metadata") or {}).get("labels") or {}).get(
            "pod-security.kubernetes.io/enforce"
        )
        for o in objs
        if o.get("kind") == "Namespace"
    }
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        ns = (obj.get("metadata") or {}).get("namespace")
        if ns not in levels:
            report.add(obj, f"its namespace {ns!r} is not in this rendering (its Pod Security level is unknown)")
            continue
        level = levels[ns]
        if level not in PSS_LEVELS:
            report.add(obj, f"namespace {ns!r} enforces no Pod Security level (label pod-security.kubernetes.io/enforce: {level!r})")
            continue
        meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        restricted = restricted_violations(spec, annotations)
        if level == "restricted":
            for v in restricted:
                report.add(obj, f"Pod Security restricted (namespace {ns}): {v}")
        elif level == "baseline":
            for v in baseline_violations(spec, annotations):
                report.add(obj, f"Pod Security baseline (namespace {ns}): {v}")
        if level != "restricted" and not restricted:
            report.add(obj, f"meets Pod Security restricted, yet runs in namespace {ns!r} enforcing only {level}: move it to a restricted namespace")


def env_value(c: dict[str, Any], name: str) -> str | None:
    for e in c.get("env") or []:
        if e.get("name") == name:
            return str(e.get("value", ""))
    return None


# The collector's defaults for --probe-identity token (collector/src/server/admission.rs).
DEFAULT_PROBE_TOKEN_AUDIENCE = "clovisor-collector"
DEFAULT_PROBE_TOKEN_IDENTITIES = "system:serviceaccount:clovisor-probe:clovisor-probe"


def reviewed_identities(c: dict[str, Any]) -> str | None:
    """The identities whose Kubernetes tokens container `c` has the API server review: its HTTP
    side's (CLOVISOR_API_ALLOWED_IDENTITIES) and, with CLOVISOR_PROBE_IDENTITY=token, the
    probes' (CLOVISOR_PROBE_TOKEN_IDENTITIES); none when it reviews no token."""
    found = [v for v in [env_value(c, "CLOVISOR_API_ALLOWED_IDENTITIES")] if v]
    if env_value(c, "CLOVISOR_PROBE_IDENTITY") == "token":
        found.append(env_value(c, "CLOVISOR_PROBE_TOKEN_IDENTITIES") or DEFAULT_PROBE_TOKEN_IDENTITIES)
    return ",".join(found) or None


def check_probe_tokens(objs: list[dict[str, Any]], report: Report) -> None:
    """With a collector requiring probes' tokens (CLOVISOR_PROBE_IDENTITY=token), every container
    presenting one (CLOVISOR_COLLECTOR_TOKEN_FILE) reads it from a projected service account
    token minted for the collector's audience — never an empty audience or the API server's,
    which would let the collector replay the token against the API server — and every probe
    presents one."""
    audiences = {
        env_value(c, "CLOVISOR_PROBE_TOKEN_AUDIENCE") or DEFAULT_PROBE_TOKEN_AUDIENCE
        for obj in objs
        for _, c in containers(pod_spec(obj) or {})
        if env_value(c, "CLOVISOR_PROBE_IDENTITY") == "token"
    }
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for _, c in containers(spec):
            name = f"container {c.get('name')!r}"
            path = env_value(c, "CLOVISOR_COLLECTOR_TOKEN_FILE")
            image = str(c.get("image", "")).rsplit("/", 1)[-1].split(":")[0]
            if not path:
                if audiences and image == "probe":
                    report.add(obj, f"{name}: the collector requires probes' tokens (CLOVISOR_PROBE_IDENTITY=token) but this probe sets no CLOVISOR_COLLECTOR_TOKEN_FILE")
                continue
            directory, _, file = path.rpartition("/")
            mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath", "").rstrip("/") == directory), None)
            sources = ((volumes.get((mount or {}).get("name")) or {}).get("projected") or {}).get("sources") or []
            token = next((s["serviceAccountToken"] for s in sources if (s.get("serviceAccountToken") or {}).get("path") == file), None)
            if token is None:
                report.add(obj, f"{name}: CLOVISOR_COLLECTOR_TOKEN_FILE {path} is not a projected serviceAccountToken mounted there")
                continue
            audience = token.get("audience") or ""
            if not audience or audience.startswith("https://kubernetes.default"):
                report.add(obj, f"{name}: the token for the collector must be bound to the collector's audience, not {audience or 'the API server'}'s")
            elif audiences and audience not in audiences:
                report.add(obj, f"{name}: token audience {audience!r} is not the collector's ({sorted(audiences)})")


def check_token_review(objs: list[dict[str, Any]], report: Report) -> None:
    """A container that accepts Kubernetes tokens (CLOVISOR_API_ALLOWED_IDENTITIES, or probes'
    with CLOVISOR_PROBE_IDENTITY=token) has its service account's token mounted and that account
    may create tokenreviews; a service account it admits from a namespace of this rendering
    exists."""
    accounts = {
        ((o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")): o
        for o in objs if o.get("kind") == "ServiceAccount"
    }
    namespaces = {(o.get("metadata") or {}).get("name") for o in objs if o.get("kind") == "Namespace"}
    reviewers = {
        (o.get("metadata") or {}).get("name")
        for o in objs
        if o.get("kind") == "ClusterRole"
        and any(
            "authentication.k8s.io" in (r.get("apiGroups") or [])
            and "tokenreviews" in (r.get("resources") or [])
            and "create" in (r.get("verbs") or [])
            for r in o.get("rules") or []
        )
    }
    bound = set()
    for b in objs:
        if b.get("kind") == "ClusterRoleBinding" and (b.get("roleRef") or {}).get("name") in reviewers:
            for subj in b.get("subjects") or []:
                if subj.get("kind") == "ServiceAccount":
                    bound.add((subj.get("namespace"), subj.get("name")))
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        ns = (obj.get("metadata") or {}).get("namespace")
        sa = spec.get("serviceAccountName", "default")
        for _, c in containers(spec):
            value = reviewed_identities(c)
            if not value:
                continue
            name = f"container {c.get('name')!r}"
            account = accounts.get((ns, sa)) or {}
            mounted = spec.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True))
            if mounted is False:
                report.add(obj, f"{name}: TokenReview needs its service account token, but automountServiceAccountToken is false")
            if (ns, sa) not in bound:
                report.add(obj, f"{name}: TokenReview needs create on tokenreviews, and ServiceAccount {ns}/{sa} is bound to no ClusterRole granting it")
            for identity in (i.strip() for i in value.split(",")):
                parts = identity.split(":")
                if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] and parts[2] in namespaces:
                    if (parts[2], parts[3]) not in accounts:
                        report.add(obj, f"{name}: admits {identity}, a ServiceAccount this rendering does not create")


def check_redis_tls(objs: list[dict[str, Any]], report: Report) -> None:
    """Redis serves TLS only, and every component reaches it over TLS with a CA to verify it."""
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for _, c in containers(spec):
            name = f"container {c.get('name')!r}"
            image = str(c.get("image", "")).rsplit("/", 1)[-1]
            if image.split(":")[0] == "redis":
                args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
                flags = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
                if flags.get("--port") != "0":
                    report.add(obj, f"{name}: Redis must not listen in plaintext (--port 0)")
                for flag in ("--tls-port", "--tls-cert-file", "--tls-key-file"):
                    if not flags.get(flag):
                        report.add(obj, f"{name}: Redis without {flag}")
                check_redis_users(obj, name, args, bool(flags.get("--requirepass")), report)
            url = env_value(c, "CLOVISOR_REDIS")
            if url is None:
                continue
            if not url.startswith("rediss://"):
                report.add(obj, f"{name}: CLOVISOR_REDIS is not rediss:// (TLS)")
            elif not env_value(c, "CLOVISOR_REDIS_CA"):
                report.add(obj, f"{name}: rediss:// without CLOVISOR_REDIS_CA (the clovisor CA, not the system roots)")


def redis_users(args: list[str]) -> list[list[str]]:
    """The `--user NAME RULE...` directives of a redis-server command line."""
    users: list[list[str]] = []
    current: list[str] | None = None
    for a in args:
        if a.startswith("--"):
            current = [] if a == "--user" else None
            if current is not None:
                users.append(current)
        elif current is not None:
            current.append(a)
    return users


def check_redis_users(obj: dict[str, Any], name: str, args: list[str], requirepass: bool, report: Report) -> None:
    """Redis admits no one without a password: either --requirepass, or ACL users with the
    default user off, every user that is on holding a password (`>...` or `#hash`) and none
    `nopass`; at most one user may write (no component needs to)."""
    users = redis_users(args)
    if not users:
        if not requirepass:
            report.add(obj, f"{name}: Redis without --requirepass or ACL users (--user)")
        return
    default = next((u for u in users if u[:1] == ["default"]), None)
    if default is None or "off" not in default or "on" in default:
        report.add(obj, f"{name}: Redis ACL users, but the default user is not off (--user default off)")
    writers = []
    for u in users:
        user = u[0] if u else "?"
        if "nopass" in u:
            report.add(obj, f"{name}: Redis user {user} is nopass")
        if "on" in u and not any(r.startswith((">", "#")) for r in u[1:]):
            report.add(obj, f"{name}: Redis user {user} is on without a password")
        if "on" in u and any(r in ("+@all", "allcommands", "+@write") for r in u[1:]):
            writers.append(user)
    if len(writers) > 1:
        report.add(obj, f"{name}: Redis users {writers} may all write; only the operator's should")


def check_otlp_allow_list(obj: dict[str, Any], spec: dict[str, Any], report: Report) -> None:
    """A container exporting spans bounds where Redis may re-point them
    (CLOVISOR_ALLOWED_OTLP_ENDPOINTS), and its own endpoint is on that list."""
    for _, c in containers(spec):
        endpoint = env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint or not str(c.get("image", "")).startswith("clovisor/"):
            continue
        allowed = [e.strip() for e in (env_value(c, "CLOVISOR_ALLOWED_OTLP_ENDPOINTS") or "").split(",") if e.strip()]
        name = f"container {c.get('name')!r}"
        if not allowed:
            report.add(obj, f"{name}: exports spans but sets no CLOVISOR_ALLOWED_OTLP_ENDPOINTS (Redis could point them anywhere)")
        elif endpoint not in allowed:
            report.add(obj, f"{name}: its own OTLP endpoint {endpoint} is not in CLOVISOR_ALLOWED_OTLP_ENDPOINTS {allowed}")


# Jaeger's listeners that authenticate no one, with their default ports: each must listen on
# loopback only — the UI (query HTTP) is reached through an authenticating proxy beside it, the
# rest not at all. OTLP/HTTP may instead require client certificates.
JAEGER_OPEN_LISTENERS = {
    "--query.http-server.host-port": 16686,
    "--query.grpc-server.host-port": 16685,
    "--collector.otlp.http.host-port": 4318,
    "--collector.grpc-server.host-port": 14250,
    "--collector.http-server.host-port": 14268,
}
JAEGER_MTLS = {
    "--collector.otlp.http.host-port": "--collector.otlp.http.tls.client-ca",
}
JAEGER_UI_FLAG = "--query.http-server.host-port"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Flags of kube-rbac-proxy that would let requests through unauthenticated.
PROXY_BYPASS_FLAGS = ("--insecure-listen-address", "--ignore-paths")


def flag_values(c: dict[str, Any]) -> dict[str, str]:
    """A container's `--flag=value` and `--flag value` arguments (command and args)."""
    args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    found: dict[str, str] = {}
    for i, a in enumerate(args):
        if not a.startswith("--"):
            continue
        if "=" in a:
            k, _, v = a.partition("=")
            found[k] = v
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            found[a] = args[i + 1]
        else:
            found[a] = ""
    return found


def jaeger_setting(c: dict[str, Any], flag: str) -> str | None:
    """A Jaeger setting, from its flag or its environment variable (the flag upper-cased,
    punctuation as `_`)."""
    value = flag_values(c).get(flag)
    if value is not None:
        return value
    return env_value(c, re.sub(r"[^A-Z0-9]", "_", flag.lstrip("-").upper()))


def host_port(value: str) -> tuple[str, int | None]:
    host, _, port = value.rpartition(":")
    return host, int(port) if port.isdigit() else None


def check_jaeger_ui(objs: list[dict[str, Any]], report: Report) -> None:
    """Jaeger's UI is reachable only through an authenticating proxy: Jaeger's unauthenticated
    listeners (query UI and API, OTLP/HTTP, legacy receivers) are bound to loopback, declared
    nowhere as container ports, and targeted by no Service; a kube-rbac-proxy in the same pod
    forwards to the UI, serving TLS only, with token audiences and an authorization config, and
    without bypasses; every Service port of the pod leads to that proxy or to a receiver that
    requires client certificates."""
    services = [o for o in objs if o.get("kind") == "Service"]
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        all_c = [c for _, c in containers(spec)]
        jaegers = [c for c in all_c if "jaegertracing/" in str(c.get("image", ""))]
        if not jaegers:
            continue
        open_ports: set[int] = set()
        ui_port: int | None = None
        mtls_ports: set[int] = set()
        for c in jaegers:
            name = f"container {c.get('name')!r}"
            if jaeger_setting(c, "--collector.otlp.grpc.tls.client-ca"):
                mtls_ports.add(host_port(jaeger_setting(c, "--collector.otlp.grpc.host-port") or ":4317")[1] or 4317)
            for flag, default in JAEGER_OPEN_LISTENERS.items():
                value = jaeger_setting(c, flag)
                host, port = host_port(value) if value else ("", default)
                port = port or default
                if flag == JAEGER_UI_FLAG:
                    ui_port = port
                if flag in JAEGER_MTLS and jaeger_setting(c, JAEGER_MTLS[flag]):
                    mtls_ports.add(port)
                    continue
                open_ports.add(port)
                if host not in LOOPBACK_HOSTS:
                    report.add(obj, f"{name}: Jaeger's {flag} listens on {value or 'all addresses (default)'}, unauthenticated: bind it to 127.0.0.1")
        # No container port or Service may lead to an unauthenticated listener.
        declared: dict[str, int] = {}
        proxy_ports: set[int] = set()
        proxies = []
        for c in all_c:
            is_proxy = str(c.get("image", "")).rsplit("/", 1)[-1].split(":")[0].split("@")[0] == "kube-rbac-proxy"
            for p in c.get("ports") or []:
                number = p.get("containerPort")
                if p.get("name"):
                    declared[p["name"]] = number
                if number in open_ports:
                    report.add(obj, f"container {c.get('name')!r}: declares port {number}, where Jaeger listens unauthenticated")
                if is_proxy:
                    proxy_ports.add(number)
            if is_proxy:
                proxies.append(c)
        good_proxy = False
        for c in proxies:
            name = f"container {c.get('name')!r}"
            flags = flag_values(c)
            upstream = flags.get("--upstream", "")
            up_host, up_port = host_port(upstream.removeprefix("http://").removeprefix("https://").rstrip("/"))
            problems = []
            if up_host not in LOOPBACK_HOSTS or up_port != ui_port:
                problems.append(f"--upstream {upstream!r} is not Jaeger's UI on loopback (port {ui_port})")
            for f in ("--secure-listen-address", "--tls-cert-file", "--tls-private-key-file", "--config-file", "--auth-token-audiences"):
                if not flags.get(f):
                    problems.append(f"no {f}")
            problems += [f"{f} lets requests through unauthenticated" for f in PROXY_BYPASS_FLAGS if f in flags]
            for problem in problems:
                report.add(obj, f"{name}: the Jaeger UI's proxy: {problem}")
            good_proxy = good_proxy or not problems
        if not good_proxy:
            report.add(obj, "the Jaeger UI has no authenticating proxy (kube-rbac-proxy to its loopback port) in its pod")
        labels = template_labels(obj)
        ns = (obj.get("metadata") or {}).get("namespace")
        for svc in services:
            sel = (svc.get("spec") or {}).get("selector") or {}
            if not sel or (svc.get("metadata") or {}).get("namespace") != ns or not selects({"matchLabels": sel}, labels):
                continue
            for p in (svc.get("spec") or {}).get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                number = declared.get(target) if isinstance(target, str) else target
                if number not in proxy_ports and number not in mtls_ports:
                    report.add(svc, f"port {p.get('name')!r} leads to the Jaeger pod's port {target!r}, which is neither the UI's authenticating proxy nor a receiver requiring client certificates")


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


def check_cross_namespace(objs: list[dict[str, Any]], report: Report) -> None:
    """References that silently break when an object moves namespace: a pod's service account,
    a binding's ServiceAccount subject (in a namespace of this rendering), and a NetworkPolicy
    peer given by pod selector alone — which selects pods of the policy's own namespace only."""
    def ns(o: dict[str, Any]) -> str | None:
        return (o.get("metadata") or {}).get("namespace")

    accounts = {(ns(o), (o.get("metadata") or {}).get("name")) for o in objs if o.get("kind") == "ServiceAccount"}
    namespaces = {(o.get("metadata") or {}).get("name") for o in objs if o.get("kind") == "Namespace"}
    workloads = [o for o in objs if o.get("kind") in WORKLOAD_KINDS]
    for w in workloads:
        sa = (pod_spec(w) or {}).get("serviceAccountName")
        if sa and sa != "default" and (ns(w), sa) not in accounts:
            report.add(w, f"runs as ServiceAccount {sa!r}, which namespace {ns(w)!r} does not have in this rendering")
    for b in objs:
        if b.get("kind") not in RBAC_BINDING_KINDS:
            continue
        for subj in b.get("subjects") or []:
            subj_ns = subj.get("namespace") or ns(b)
            if subj.get("kind") == "ServiceAccount" and subj_ns in namespaces and (subj_ns, subj.get("name")) not in accounts:
                report.add(b, f"binds ServiceAccount {subj_ns}/{subj.get('name')}, which this rendering does not create")
    for p in objs:
        if p.get("kind") != "NetworkPolicy":
            continue
        spec = p.get("spec") or {}
        rules = [("ingress", r.get("from") or []) for r in spec.get("ingress") or []]
        rules += [("egress", r.get("to") or []) for r in spec.get("egress") or []]
        for direction, peers in rules:
            for peer in peers:
                selector = peer.get("podSelector")
                if selector is None or "namespaceSelector" in peer:
                    continue
                if not any(ns(w) == ns(p) and selects(selector, template_labels(w)) for w in workloads):
                    report.add(p, f"{direction} peer {selector} selects no pod of namespace {ns(p)!r} (a pod elsewhere needs a namespaceSelector)")


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
            check_otlp_allow_list(obj, spec, report)
            if config_doc is not None:
                check_env_documented(obj, spec, config_doc, report)
    check_selectors(objs, report)
    check_network_policies(objs, report)
    check_pod_security(objs, report)
    check_cross_namespace(objs, report)
    check_token_review(objs, report)
    check_probe_tokens(objs, report)
    check_redis_tls(objs, report)
    check_jaeger_ui(objs, report)
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
