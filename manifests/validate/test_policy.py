"""Tests that the checks can fail: each bad manifest must be caught, with a message naming it.

Run: python -m unittest discover -s manifests/validate
"""

from __future__ import annotations

import copy
import unittest
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
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
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
        found = policy.check([good_deployment(), good_service(), role([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]), *good_policies()], True, DOC)
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
