"""Tests that the checks can fail: each bad manifest must be caught, with a message naming it.

Run: python -m unittest discover -s manifests/validate
"""

from __future__ import annotations

import copy
import unittest
from pathlib import Path
from typing import Any

import kubernetes_validate

import policy

K8S_VERSION = "1.37.0"


def good_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "clovisor"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "web",
                            "image": "clovisor/collector:0.1.0",
                            "env": [{"name": "CLOVISOR_GRPC_LISTEN", "value": "0.0.0.0:1"}],
                            "ports": [{"name": "metrics", "containerPort": 9801}],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"cpu": "1", "memory": "64Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def good_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "clovisor"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "m", "port": 9801, "targetPort": "metrics"}]},
    }


def network_policy(name: str, selector: dict[str, Any], types: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "clovisor"},
        "spec": {"podSelector": selector, "policyTypes": types},
    }


def good_policies() -> list[dict[str, Any]]:
    return [
        network_policy("default-deny", {}, ["Ingress", "Egress"]),
        network_policy("web", {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}, ["Ingress"]),
    ]


def namespace(name: str, level: str | None) -> dict[str, Any]:
    labels = {"pod-security.kubernetes.io/enforce": level} if level else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def restricted_ns() -> dict[str, Any]:
    return namespace("clovisor", "restricted")


def service_account(ns: str, name: str, automount: bool | None = None) -> dict[str, Any]:
    sa: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}
    if automount is not None:
        sa["automountServiceAccountToken"] = automount
    return sa


def binding(role_name: str, ns: str, sa: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{sa}-{role_name}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }


def role(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}, "rules": rules}


DOC = "`CLOVISOR_GRPC_LISTEN`"


def container(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]["containers"][0]


class PolicyTest(unittest.TestCase):
    def assert_caught(self, objs: list[dict[str, Any]], fragment: str, forbid_privileged: bool = True) -> None:
        found = policy.check(objs, forbid_privileged, DOC)
        self.assertTrue(
            any(fragment in v for v in found),
            f"expected a violation mentioning {fragment!r}, saw {found}",
        )

    def test_good_objects_pass(self) -> None:
        found = policy.check([restricted_ns(), good_deployment(), good_service(), role([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]), *good_policies()], True, DOC)
        self.assertEqual(found, [], f"expected no violation, saw {found}")

    def test_missing_network_policies_are_caught(self) -> None:
        self.assert_caught([good_deployment()], "no default-deny NetworkPolicy")
        deny_only = [good_deployment(), good_policies()[0]]
        self.assert_caught(deny_only, "no NetworkPolicy of its own")
        other = network_policy("other", {"matchLabels": {"app": "other"}}, ["Ingress"])
        self.assert_caught([good_deployment(), good_policies()[0], other], "no NetworkPolicy of its own")
        host = good_deployment()
        host["spec"]["template"]["spec"]["hostNetwork"] = True
        found = policy.check([host], True, DOC)
        self.assertFalse(any("NetworkPolicy" in v for v in found), f"host-network pods need none, saw {found}")

    def test_privileged_is_caught_only_where_forbidden(self) -> None:
        d = good_deployment()
        container(d)["securityContext"]["privileged"] = True
        container(d)["securityContext"].pop("allowPrivilegeEscalation")
        self.assert_caught([d], "privileged: true")
        allowed = policy.check([d], False, DOC)
        self.assertFalse(any("privileged: true (" in v for v in allowed), f"privileged allowed, saw {allowed}")

    def test_rbac_wildcards_secrets_exec_and_writes_are_caught(self) -> None:
        cases = [
            ({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}, "wildcard in resources"),
            ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, "wildcard in verbs"),
            ({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}, "wildcard in apiGroups"),
            ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}, "forbidden resources ['secrets']"),
            ({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}, "forbidden resources ['pods/exec']"),
            ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}, "verbs beyond get/list/watch: ['delete']"),
        ]
        for rule, fragment in cases:
            with self.subTest(rule=rule):
                self.assert_caught([role([rule])], fragment)
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        }
        self.assert_caught([binding], "cluster-admin")

    def test_missing_resources_and_probes_are_caught(self) -> None:
        for field, fragment in [
            ("resources", "resources.requests lacks ['cpu', 'memory']"),
            ("livenessProbe", "no livenessProbe"),
            ("readinessProbe", "no readinessProbe"),
        ]:
            with self.subTest(field=field):
                d = good_deployment()
                del container(d)[field]
                self.assert_caught([d], fragment)
        d = good_deployment()
        del container(d)["resources"]["limits"]["memory"]
        self.assert_caught([d], "resources.limits lacks ['memory']")

    def test_api_server_cross_field_rules_are_caught(self) -> None:
        d = good_deployment()
        container(d)["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
        self.assert_caught([d], "CAP_SYS_ADMIN is rejected")
        d = good_deployment()
        d["spec"]["selector"]["matchLabels"] = {"app": "other"}
        self.assert_caught([d], "does not match template labels")
        d = good_deployment()
        container(d)["readinessProbe"]["httpGet"]["port"] = "metric"
        self.assert_caught([d], "uses port 'metric'")
        s = good_service()
        s["spec"]["ports"][0]["targetPort"] = "api"
        self.assert_caught([good_deployment(), s], "targets 'api'")
        s = good_service()
        s["spec"]["selector"] = {"app": "nothing"}
        self.assert_caught([good_deployment(), s], "matches no workload")

    def test_hardening_gaps_are_caught(self) -> None:
        cases = [
            (lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
            (lambda c, p: c["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
            (lambda c, p: p["securityContext"].update(runAsNonRoot=False), "non-root"),
            (lambda c, p: c["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation must be false"),
            (lambda c, p: p.update(hostPID=True), "hostPID"),
            (lambda c, p: c.update(image="clovisor/collector"), "no explicit tag"),
            (lambda c, p: c.update(image="redis:latest"), "no explicit tag"),
            (lambda c, p: c["env"].append({"name": "CLOVISOR_COLLETOR", "value": "x"}), "CLOVISOR_COLLETOR is not in docs"),
        ]
        for mutate, fragment in cases:
            with self.subTest(fragment=fragment):
                d = good_deployment()
                mutate(container(d), d["spec"]["template"]["spec"])
                self.assert_caught([d], fragment)


class PodSecurityTest(unittest.TestCase):
    """Every pod is held to the Pod Security level its namespace enforces."""

    def violations(self, objs: list[dict[str, Any]]) -> list[str]:
        return [v for v in policy.check([*objs, *good_policies()], False, DOC) if "Pod Security" in v or "namespace" in v]

    def assert_caught(self, objs: list[dict[str, Any]], fragment: str) -> None:
        found = self.violations(objs)
        self.assertTrue(any(fragment in v for v in found), f"expected a violation mentioning {fragment!r}, saw {found}")

    def test_a_restricted_pod_in_a_restricted_namespace_passes(self) -> None:
        self.assertEqual(self.violations([restricted_ns(), good_deployment()]), [])

    def test_every_restricted_rule_can_fail(self) -> None:
        cases = [
            (lambda c, p: p["securityContext"].pop("seccompProfile"), "seccompProfile must be RuntimeDefault"),
            (lambda c, p: c["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile Unconfined"),
            (lambda c, p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot must be true"),
            (lambda c, p: c["securityContext"].update(runAsUser=0), "runAsUser 0"),
            (lambda c, p: c["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation must be false"),
            (lambda c, p: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "capabilities must drop ALL"),
            (lambda c, p: c["securityContext"]["capabilities"].update(add=["CHOWN"]), "restricted: NET_BIND_SERVICE only"),
            (lambda c, p: c["securityContext"]["capabilities"].update(add=["BPF"]), "adds capabilities ['BPF']"),
            (lambda c, p: c["securityContext"].update(privileged=True), "privileged: true"),
            (lambda c, p: p.update(hostNetwork=True), "hostNetwork: true"),
            (lambda c, p: p.update(hostPID=True), "hostPID: true"),
            (lambda c, p: p.update(volumes=[{"name": "n", "hostPath": {"path": "/run/netns"}}]), "hostPath volume 'n'"),
            (lambda c, p: p.update(volumes=[{"name": "n", "nfs": {"server": "s", "path": "/"}}]), "of type ['nfs']"),
            (lambda c, p: c["ports"][0].update(hostPort=9801), "hostPort 9801"),
            (lambda c, p: c["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
            (lambda c, p: c["securityContext"].update(procMount="Unmasked"), "procMount Unmasked"),
            (lambda c, p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctl 'kernel.msgmax'"),
            (lambda c, p: p.update(initContainers=[{"name": "init", "image": "busybox:1"}]), "initContainer 'init': allowPrivilegeEscalation"),
        ]
        for mutate, fragment in cases:
            with self.subTest(fragment=fragment):
                d = good_deployment()
                mutate(container(d), d["spec"]["template"]["spec"])
                self.assert_caught([restricted_ns(), d], fragment)

    def test_the_namespace_must_be_rendered_and_enforce_a_level(self) -> None:
        self.assert_caught([good_deployment()], "is not in this rendering")
        self.assert_caught([namespace("clovisor", None), good_deployment()], "enforces no Pod Security level")

    def test_a_pod_that_needs_no_privilege_may_not_sit_in_a_privileged_namespace(self) -> None:
        self.assert_caught([namespace("clovisor", "privileged"), good_deployment()], "move it to a restricted namespace")
        host = good_deployment()
        host["spec"]["template"]["spec"]["hostNetwork"] = True
        self.assertEqual(self.violations([namespace("clovisor", "privileged"), host]), [], "a host-network pod needs privileged")
        self.assert_caught([namespace("clovisor", "baseline"), host], "Pod Security baseline (namespace clovisor): hostNetwork")

    def test_the_manifests_probe_would_be_refused_where_the_others_run(self) -> None:
        """The probe's real spec, moved into the restricted namespace, is refused rule by rule."""
        root = Path(__file__).resolve().parents[1]
        probe = next(d for d in policy.load((root / "base/probe.yaml").read_text()) if d.get("kind") == "DaemonSet")
        probe["metadata"]["namespace"] = "clovisor"
        found = self.violations([restricted_ns(), probe])
        for fragment in ("hostNetwork: true", "hostPath volume 'netns'", "adds capabilities", "runAsNonRoot must be true"):
            self.assertTrue(any(fragment in v for v in found), f"expected {fragment!r} in {found}")


class CrossNamespaceTest(unittest.TestCase):
    """What breaks silently when an object moves to another namespace is caught."""

    def found(self, objs: list[dict[str, Any]]) -> list[str]:
        return policy.check([restricted_ns(), namespace("other", "restricted"), *objs, *good_policies()], True, DOC)

    def test_a_service_account_in_another_namespace_is_caught(self) -> None:
        d = good_deployment()
        d["spec"]["template"]["spec"]["serviceAccountName"] = "web"
        self.assertFalse(any("ServiceAccount" in v for v in self.found([d, service_account("clovisor", "web")])))
        found = self.found([d, service_account("other", "web")])
        self.assertTrue(any("runs as ServiceAccount 'web'" in v for v in found), found)
        found = self.found([service_account("other", "web"), binding("r", "clovisor", "web")])
        self.assertTrue(any("binds ServiceAccount clovisor/web" in v for v in found), found)
        outside = self.found([binding("r", "monitoring", "prometheus")])
        self.assertFalse(any("binds ServiceAccount" in v for v in outside), f"namespaces not rendered are not ours: {outside}")

    def test_a_pod_selector_peer_naming_a_pod_of_another_namespace_is_caught(self) -> None:
        policy_obj = network_policy("to-web", {"matchLabels": {"app": "web"}}, ["Ingress"])
        policy_obj["spec"]["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": "probe"}}}]}]
        found = self.found([good_deployment(), policy_obj])
        self.assertTrue(any("selects no pod of namespace 'clovisor'" in v for v in found), found)
        policy_obj["spec"]["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]
        self.assertFalse(any("selects no pod" in v for v in self.found([good_deployment(), policy_obj])))
        policy_obj["spec"]["ingress"] = [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "probe"}}}]}]
        self.assertFalse(any("selects no pod" in v for v in self.found([good_deployment(), policy_obj])), "a namespaceSelector reaches elsewhere")


class RbacWritesTest(unittest.TestCase):
    def test_only_the_listed_writes_pass_and_only_as_narrow_as_listed(self) -> None:
        ok = [
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["clovisor-cli"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ]
        for rule in ok:
            with self.subTest(rule=rule):
                self.assertEqual(policy.check([role([rule])], True, DOC), [])
        bad = [
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews", "subjectaccessreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
        ]
        for rule in bad:
            with self.subTest(rule=rule):
                found = policy.check([role([rule])], True, DOC)
                self.assertTrue(any("verbs beyond get/list/watch" in v for v in found), f"{rule}: {found}")


def token_review_objects(identities: str, automount: bool = True, bound: bool = True) -> list[dict[str, Any]]:
    d = good_deployment()
    d["spec"]["template"]["spec"]["serviceAccountName"] = "web"
    d["spec"]["template"]["spec"]["automountServiceAccountToken"] = automount
    container(d)["env"].append({"name": "CLOVISOR_API_ALLOWED_IDENTITIES", "value": identities})
    reviewer = role([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
    objs = [restricted_ns(), d, service_account("clovisor", "web", False), service_account("clovisor", "cli"), reviewer]
    if bound:
        objs.append(binding("r", "clovisor", "web"))
    return objs


class TokenReviewTest(unittest.TestCase):
    DOC = DOC + "`CLOVISOR_API_ALLOWED_IDENTITIES`"

    def found(self, objs: list[dict[str, Any]]) -> list[str]:
        return [v for v in policy.check(objs, True, self.DOC) if "TokenReview" in v or "admits" in v]

    def test_a_reviewer_with_its_token_and_its_role_passes(self) -> None:
        ids = "system:serviceaccount:clovisor:cli,system:serviceaccount:monitoring:grafana,group:ops"
        self.assertEqual(self.found(token_review_objects(ids)), [])

    def test_each_missing_piece_is_caught(self) -> None:
        ids = "system:serviceaccount:clovisor:cli"
        cases = [
            (token_review_objects(ids, automount=False), "automountServiceAccountToken is false"),
            (token_review_objects(ids, bound=False), "bound to no ClusterRole"),
            (token_review_objects("system:serviceaccount:clovisor:clii"), "admits system:serviceaccount:clovisor:clii"),
        ]
        for objs, fragment in cases:
            with self.subTest(fragment=fragment):
                found = self.found(objs)
                self.assertTrue(any(fragment in v for v in found), f"expected {fragment!r}, saw {found}")


def probe_token_objects(audience: str | None, path: str = "token", with_file: bool = True) -> list[dict[str, Any]]:
    """A collector requiring probes' tokens, and a probe presenting one from a projected
    token volume with `audience` (none: no audience) at `path`."""
    objs = token_review_objects("system:serviceaccount:clovisor:cli")
    collector = objs[1]
    container(collector)["env"].append({"name": "CLOVISOR_PROBE_IDENTITY", "value": "token"})
    objs.append(service_account("clovisor-probe", "clovisor-probe"))
    probe = good_deployment()
    spec = probe["spec"]["template"]["spec"]
    container(probe)["image"] = "clovisor/probe"
    if with_file:
        container(probe)["env"].append({"name": "CLOVISOR_COLLECTOR_TOKEN_FILE", "value": "/var/run/secrets/c/token"})
    container(probe).setdefault("volumeMounts", []).append({"name": "ct", "mountPath": "/var/run/secrets/c", "readOnly": True})
    source: dict[str, Any] = {"path": path, "expirationSeconds": 3600}
    if audience is not None:
        source["audience"] = audience
    spec.setdefault("volumes", []).append({"name": "ct", "projected": {"sources": [{"serviceAccountToken": source}]}})
    return objs + [probe]


class ProbeTokenTest(unittest.TestCase):
    DOC = TokenReviewTest.DOC + "`CLOVISOR_PROBE_IDENTITY` `CLOVISOR_COLLECTOR_TOKEN_FILE`"

    def found(self, objs: list[dict[str, Any]]) -> list[str]:
        return [v for v in policy.check(objs, True, self.DOC) if "token" in v.lower() or "TokenReview" in v]

    def test_a_probe_token_for_the_collectors_audience_passes(self) -> None:
        self.assertEqual(self.found(probe_token_objects("clovisor-collector")), [])

    def test_each_wrong_token_is_caught(self) -> None:
        cases = [
            (probe_token_objects(None), "not the API server's"),
            (probe_token_objects("https://kubernetes.default.svc.cluster.local"), "bound to the collector's audience"),
            (probe_token_objects("someone-else"), "is not the collector's"),
            (probe_token_objects("clovisor-collector", path="other"), "is not a projected serviceAccountToken"),
            (probe_token_objects("clovisor-collector", with_file=False), "sets no CLOVISOR_COLLECTOR_TOKEN_FILE"),
        ]
        for objs, fragment in cases:
            with self.subTest(fragment=fragment):
                found = self.found(objs)
                self.assertTrue(any(fragment in v for v in found), f"expected {fragment!r}, saw {found}")

    def test_the_collectors_review_needs_its_role(self) -> None:
        objs = probe_token_objects("clovisor-collector")
        container(objs[1])["env"] = [e for e in container(objs[1])["env"] if e["name"] != "CLOVISOR_API_ALLOWED_IDENTITIES"]
        objs = [o for o in objs if o.get("kind") != "ClusterRoleBinding"]
        self.assertTrue(any("bound to no ClusterRole" in v for v in self.found(objs)), self.found(objs))


class RedisTlsTest(unittest.TestCase):
    DOC = DOC + "`CLOVISOR_REDIS` `CLOVISOR_REDIS_CA`"

    def found(self, d: dict[str, Any]) -> list[str]:
        return [v for v in policy.check([restricted_ns(), d], True, self.DOC) if "Redis" in v or "rediss" in v]

    def client(self, env: dict[str, str]) -> dict[str, Any]:
        d = good_deployment()
        container(d)["env"].extend({"name": k, "value": v} for k, v in env.items())
        return d

    def server(self, args: list[str]) -> dict[str, Any]:
        d = good_deployment()
        container(d)["image"] = "redis:7.2.5-alpine"
        container(d)["args"] = ["redis-server", *args]
        return d

    TLS_ARGS = ["--port", "0", "--tls-port", "6379", "--tls-cert-file", "c", "--tls-key-file", "k", "--requirepass", "p"]

    DEFAULT_OFF = ["--user", "default", "off", "-@all"]

    def test_acl_users_with_passwords_and_the_default_off_pass(self) -> None:
        users = ["--user", "reader", "on", ">r", "%R~k*", "-@all", "+get", "--user", "admin", "on", ">a", "~k*", "+@all"]
        self.assertEqual(self.found(self.server(self.TLS_ARGS[:-2] + self.DEFAULT_OFF + users)), [])

    def test_tls_on_both_ends_passes(self) -> None:
        self.assertEqual(self.found(self.client({"CLOVISOR_REDIS": "rediss://:p@redis:6379", "CLOVISOR_REDIS_CA": "/ca"})), [])
        self.assertEqual(self.found(self.server(self.TLS_ARGS)), [])

    def test_plaintext_or_unverified_is_caught(self) -> None:
        cases = [
            (self.client({"CLOVISOR_REDIS": "redis://:p@redis:6379"}), "is not rediss://"),
            (self.client({"CLOVISOR_REDIS": "rediss://:p@redis:6379"}), "without CLOVISOR_REDIS_CA"),
            (self.server(["--tls-port", "6379", "--tls-cert-file", "c", "--tls-key-file", "k", "--requirepass", "p"]), "--port 0"),
            (self.server(["--port", "0", "--tls-cert-file", "c", "--tls-key-file", "k", "--requirepass", "p"]), "without --tls-port"),
            (self.server(self.TLS_ARGS[:-2]), "without --requirepass or ACL users"),
            (self.server(self.TLS_ARGS[:-2] + ["--user", "r", "on", ">pw", "+get"]), "default user is not off"),
            (self.server(self.TLS_ARGS[:-2] + self.DEFAULT_OFF + ["--user", "r", "on", "nopass", "+get"]), "is nopass"),
            (self.server(self.TLS_ARGS[:-2] + self.DEFAULT_OFF + ["--user", "r", "on", "+get"]), "is on without a password"),
            (self.server(self.TLS_ARGS[:-2] + self.DEFAULT_OFF + ["--user", "a", "on", ">x", "+@all", "--user", "b", "on", ">y", "+@write"]), "may all write"),
        ]
        for d, fragment in cases:
            with self.subTest(fragment=fragment):
                found = self.found(d)
                self.assertTrue(any(fragment in v for v in found), f"expected {fragment!r}, saw {found}")


class OtlpAllowListTest(unittest.TestCase):
    DOC = DOC + "`OTEL_EXPORTER_OTLP_ENDPOINT` `CLOVISOR_ALLOWED_OTLP_ENDPOINTS`"

    def found(self, env: dict[str, str]) -> list[str]:
        d = good_deployment()
        container(d)["env"].extend({"name": k, "value": v} for k, v in env.items())
        return [v for v in policy.check([restricted_ns(), d, *good_policies()], True, self.DOC) if "OTLP" in v]

    def test_the_exporters_own_endpoint_must_be_the_allowed_one(self) -> None:
        url = "https://jaeger.clovisor.svc:4317"
        self.assertEqual(self.found({"OTEL_EXPORTER_OTLP_ENDPOINT": url, "CLOVISOR_ALLOWED_OTLP_ENDPOINTS": f"http://x:1, {url}"}), [])
        self.assertTrue(any("sets no CLOVISOR_ALLOWED_OTLP_ENDPOINTS" in v for v in self.found({"OTEL_EXPORTER_OTLP_ENDPOINT": url})))
        found = self.found({"OTEL_EXPORTER_OTLP_ENDPOINT": url, "CLOVISOR_ALLOWED_OTLP_ENDPOINTS": "http://jaeger-collector.istio-system.svc:4317"})
        self.assertTrue(any("is not in CLOVISOR_ALLOWED_OTLP_ENDPOINTS" in v for v in found), found)


JAEGER_YAML = Path(__file__).resolve().parent.parent / "base" / "jaeger.yaml"


class JaegerUiTest(unittest.TestCase):
    """The shipped Jaeger (manifests/base/jaeger.yaml) passes; each way of exposing its UI or
    another unauthenticated listener is caught."""

    def objects(self) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
        objs = policy.load(JAEGER_YAML.read_text())
        deployment = next(o for o in objs if o["kind"] == "Deployment")
        cs = deployment["spec"]["template"]["spec"]["containers"]
        jaeger = next(c for c in cs if "jaegertracing/" in c["image"])
        proxy = next(c for c in cs if "kube-rbac-proxy" in c["image"])
        return objs, deployment, jaeger, proxy

    def found(self, objs: list[dict[str, Any]]) -> list[str]:
        return [v for v in policy.check(objs, True, DOC) if "Jaeger" in v]

    def test_the_shipped_jaeger_passes(self) -> None:
        self.assertEqual(self.found(self.objects()[0]), [])

    def test_each_exposure_is_caught(self) -> None:
        def ui_on_all_addresses(objs, d, jaeger, proxy):
            jaeger["args"] = [a for a in jaeger["args"] if not a.startswith("--query.http-server.host-port")]

        def ui_on_pod_address_by_env(objs, d, jaeger, proxy):
            ui_on_all_addresses(objs, d, jaeger, proxy)
            jaeger["env"].append({"name": "QUERY_HTTP_SERVER_HOST_PORT", "value": ":16686"})

        def otlp_http_open(objs, d, jaeger, proxy):
            jaeger["args"] = [a.replace("127.0.0.1:4318", "0.0.0.0:4318") for a in jaeger["args"]]

        def ui_port_declared(objs, d, jaeger, proxy):
            jaeger["ports"].append({"name": "ui", "containerPort": 16686})

        def service_to_ui(objs, d, jaeger, proxy):
            svc = next(o for o in objs if o["kind"] == "Service")
            svc["spec"]["ports"].append({"name": "http-ui", "port": 16686, "targetPort": 16686})

        def service_to_admin(objs, d, jaeger, proxy):
            svc = next(o for o in objs if o["kind"] == "Service")
            svc["spec"]["ports"].append({"name": "http-admin", "port": 14269, "targetPort": "admin"})

        def no_proxy(objs, d, jaeger, proxy):
            d["spec"]["template"]["spec"]["containers"].remove(proxy)

        def proxy_plaintext(objs, d, jaeger, proxy):
            proxy["args"].append("--insecure-listen-address=0.0.0.0:8080")

        def proxy_ignores_paths(objs, d, jaeger, proxy):
            proxy["args"].append("--ignore-paths=/*")

        def proxy_elsewhere(objs, d, jaeger, proxy):
            proxy["args"] = [a if not a.startswith("--upstream") else "--upstream=http://10.0.0.1:16686/" for a in proxy["args"]]

        def proxy_without_audience(objs, d, jaeger, proxy):
            proxy["args"] = [a for a in proxy["args"] if not a.startswith("--auth-token-audiences")]

        cases = [
            (ui_on_all_addresses, "--query.http-server.host-port listens on all addresses"),
            (ui_on_pod_address_by_env, "--query.http-server.host-port listens on :16686"),
            (otlp_http_open, "--collector.otlp.http.host-port listens on 0.0.0.0:4318"),
            (ui_port_declared, "declares port 16686"),
            (service_to_ui, "port 'http-ui' leads to the Jaeger pod's port 16686"),
            (service_to_admin, "port 'http-admin' leads to the Jaeger pod's port 'admin'"),
            (no_proxy, "has no authenticating proxy"),
            (proxy_plaintext, "--insecure-listen-address lets requests through"),
            (proxy_ignores_paths, "--ignore-paths lets requests through"),
            (proxy_elsewhere, "is not Jaeger's UI on loopback"),
            (proxy_without_audience, "no --auth-token-audiences"),
        ]
        for mutate, fragment in cases:
            with self.subTest(case=mutate.__name__):
                objs, d, jaeger, proxy = self.objects()
                mutate(objs, d, jaeger, proxy)
                found = self.found(objs)
                self.assertTrue(any(fragment in v for v in found), f"expected {fragment!r}, saw {found}")

    def test_otlp_http_with_client_certificates_may_listen(self) -> None:
        objs, d, jaeger, proxy = self.objects()
        jaeger["args"] = [a.replace("127.0.0.1:4318", "0.0.0.0:4318") for a in jaeger["args"]]
        jaeger["args"].append("--collector.otlp.http.tls.client-ca=/etc/clovisor/tls/ca.crt")
        jaeger["ports"].append({"name": "otlp-http", "containerPort": 4318})
        svc = next(o for o in objs if o["kind"] == "Service")
        svc["spec"]["ports"].append({"name": "http-otlp", "port": 4318, "targetPort": "otlp-http"})
        self.assertEqual(self.found(objs), [])


class SchemaTest(unittest.TestCase):
    """kubernetes-validate must really be strict, or a passing run proves little."""

    def test_good_deployment_validates(self) -> None:
        kubernetes_validate.validate(good_deployment(), K8S_VERSION, strict=True)

    def test_unknown_field_is_rejected_in_strict_mode(self) -> None:
        d = good_deployment()
        container(d)["securityContxt"] = {}
        with self.assertRaises(kubernetes_validate.ValidationError, msg="a misspelt field must fail strict validation"):
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)

    def test_wrong_type_is_rejected(self) -> None:
        d = copy.deepcopy(good_deployment())
        d["spec"]["replicas"] = "two"
        with self.assertRaises(kubernetes_validate.ValidationError, msg="replicas must be an integer"):
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


if __name__ == "__main__":
    unittest.main()
