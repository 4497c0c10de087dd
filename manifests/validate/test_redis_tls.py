"""The manifests' Redis, run for real: the exact command line of manifests/base/redis.yaml
(its certificate paths pointed at certificates from scripts/make-certs.sh) serves TLS only, and
its own liveness command answers over TLS with the password, and a renewed certificate is
taken up with the CONFIG SET that docs/security.md gives. Its ACL users: each component's user
can read the configuration keys and follow the plugin channel and nothing else (no write, no
other key); the operator's user writes the configuration but runs no dangerous command; the
default user and wrong passwords get nowhere.

Needs redis-server, redis-cli and openssl (scripts/install-deps.sh installs them).
Run: python -m unittest discover -s manifests/validate
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

import policy

ROOT = Path(__file__).resolve().parents[2]
# Each ACL user's password, by the environment variable the manifest expands.
PASSWORDS = {
    "REDIS_PROBE_PASSWORD": "probe-pw",
    "REDIS_COLLECTOR_PASSWORD": "collector-pw",
    "REDIS_CORRELATOR_PASSWORD": "correlator-pw",
    "REDIS_ADMIN_PASSWORD": "admin-pw",
}
PASSWORD = PASSWORDS["REDIS_ADMIN_PASSWORD"]
COMPONENTS = {
    "clovisor-probe": PASSWORDS["REDIS_PROBE_PASSWORD"],
    "clovisor-collector": PASSWORDS["REDIS_COLLECTOR_PASSWORD"],
    "clovisor-correlator": PASSWORDS["REDIS_CORRELATOR_PASSWORD"],
}


def redis_container() -> dict[str, Any]:
    docs = policy.load((ROOT / "manifests/base/redis.yaml").read_text())
    deployment = next(d for d in docs if d.get("kind") == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManifestRedisTest(unittest.TestCase):
    def setUp(self) -> None:
        for tool in ("redis-server", "redis-cli", "openssl"):
            self.assertIsNotNone(shutil.which(tool), f"{tool} is missing: run scripts/install-deps.sh")
        self.dir = Path(tempfile.mkdtemp(prefix="clovisor-redis-manifest-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        subprocess.run(["bash", str(ROOT / "scripts/make-certs.sh"), str(self.dir / "certs")], check=True, capture_output=True)
        self.port = free_port()
        c = redis_container()
        self.container = c
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "tls")
        data = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
        (self.dir / "data").mkdir()
        args = []
        for a in c["args"]:
            for var, pw in PASSWORDS.items():
                a = a.replace(f"$({var})", pw)
            self.assertNotIn("$(", a, f"an argument the test does not expand: {a}")
            a = a.replace(mount, str(self.dir / "certs/redis"))
            args.append(str(self.dir / "data") if a == data else a)
        # The manifest's port, moved to a free one; loopback only.
        i = args.index("--tls-port")
        self.assertEqual(args[i + 1], "6379")
        args[i + 1] = str(self.port)
        args += ["--bind", "127.0.0.1"]
        self.log = open(self.dir / "redis.log", "w")
        self.addCleanup(self.log.close)
        self.server = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.addCleanup(self.stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                self.fail(f"redis-server exited: {(self.dir / 'redis.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.fail("redis-server did not listen in 10 s")

    def stop(self) -> None:
        self.server.terminate()
        try:
            self.server.wait(5)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    def cli(self, command: list[str], password: str | None = PASSWORD, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        if password is not None:
            env["REDISCLI_AUTH"] = password
        certs = str(self.dir / "certs/redis")
        mount = next(m["mountPath"] for m in self.container["volumeMounts"] if m["name"] == "tls")
        command = [a.replace(mount, certs) for a in command]
        # The port the test moved Redis to, before the command (redis-cli takes what follows
        # the command as its arguments).
        command = [command[0], "-p", str(self.port), *command[1:]]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)

    def as_user(self, user: str, password: str, *command: str) -> str:
        """`command` as `user`, over TLS; redis-cli's output (replies and errors)."""
        certs = self.dir / "certs/redis"
        out = self.cli(["redis-cli", "--tls", "--cacert", str(certs / "ca.crt"), "--user", user, *command], password=password)
        return (out.stdout + out.stderr).strip()

    def subscribed(self, user: str, password: str) -> str:
        """What SUBSCRIBE to the plugin channel answers `user` within a second."""
        certs = self.dir / "certs/redis"
        try:
            out = self.cli(["redis-cli", "--tls", "--cacert", str(certs / "ca.crt"), "--user", user,
                            "SUBSCRIBE", "clovisor_proto_plugin_cfg_chan"], password=password, timeout=1.5)
            return out.stdout + out.stderr
        except subprocess.TimeoutExpired as e:
            return (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")

    def test_each_component_reads_the_configuration_and_nothing_else(self) -> None:
        admin = ("clovisor-admin", PASSWORDS["REDIS_ADMIN_PASSWORD"])
        self.assertEqual(self.as_user(*admin, "RPUSH", "clovisor_labels", "shop"), "1")
        self.assertEqual(self.as_user(*admin, "SET", "clovisor_otlp_endpoint", "https://jaeger.clovisor.svc:4317"), "OK")
        self.assertEqual(self.as_user(*admin, "HSET", "clovisor_proto_cfg", "kafka", "builtin"), "1")
        self.assertEqual(self.as_user(*admin, "RPUSH", "clovior_egress_match", "10.0.0.1:80"), "1")
        for user, password in COMPONENTS.items():
            with self.subTest(user=user):
                allowed = [
                    (["TYPE", "clovisor_labels"], "list"),
                    (["LRANGE", "clovisor_labels", "0", "-1"], "shop"),
                    (["LRANGE", "clovior_egress_match", "0", "-1"], "10.0.0.1:80"),
                    (["GET", "clovisor_otlp_endpoint"], "https://jaeger.clovisor.svc:4317"),
                    (["HGETALL", "clovisor_proto_cfg"], "kafka\nbuiltin"),
                    (["PING"], "PONG"),
                ]
                for command, want in allowed:
                    self.assertEqual(self.as_user(user, password, *command), want.replace("\\n", "\n"), command)
                self.assertIn("clovisor_proto_plugin_cfg_chan", self.subscribed(user, password))
                refused = [
                    ["SET", "clovisor_otlp_endpoint", "https://evil.example:4317"],
                    ["RPUSH", "clovisor_labels", "kube-system"],
                    ["DEL", "clovisor_labels"],
                    ["HSET", "clovisor_proto_cfg", "http", "/tmp/evil.wasm"],
                    ["PUBLISH", "clovisor_proto_plugin_cfg_chan", "http"],
                    ["GET", "not_clovisor"],
                    ["KEYS", "*"],
                    ["CONFIG", "SET", "protected-mode", "no"],
                    ["FLUSHALL"],
                    ["ACL", "LIST"],
                ]
                for command in refused:
                    self.assertIn("NOPERM", self.as_user(user, password, *command), command)
                self.assertIn("WRONGPASS", self.as_user(user, "wrong", "PING"))
                self.assertIn("WRONGPASS", self.as_user(user, PASSWORDS["REDIS_ADMIN_PASSWORD"], "PING"),
                              "one component's password is no other user's")
        self.assertEqual(self.as_user(*admin, "GET", "clovisor_otlp_endpoint"), "https://jaeger.clovisor.svc:4317",
                         "no component changed the span endpoint")
        for command in (["FLUSHALL"], ["ACL", "SETUSER", "clovisor-probe", "+@all"], ["GET", "not_clovisor"], ["CLIENT", "KILL", "TYPE", "normal"], ["KEYS", "*"]):
            self.assertIn("NOPERM", self.as_user(*admin, *command), command)
        # The default user is off: a password alone (the old single-password setup) gets nothing.
        self.assertIn("WRONGPASS", self.as_user("default", PASSWORD, "PING"))

    def test_the_liveness_command_answers_over_tls(self) -> None:
        probe = self.container["livenessProbe"]["exec"]["command"]
        out = self.cli(probe)
        self.assertEqual(out.stdout.strip(), "PONG", f"{probe}: {out.stdout} {out.stderr}")

    def test_no_plaintext_and_no_entry_without_the_password(self) -> None:
        plain = self.cli(["redis-cli", "ping"])
        self.assertNotEqual(plain.stdout.strip(), "PONG", "a plaintext client must not be answered")
        probe = self.container["readinessProbe"]["exec"]["command"]
        anonymous = self.cli(probe, password=None)
        self.assertIn("NOAUTH", anonymous.stdout + anonymous.stderr, "without the password Redis refuses")
        wrong_ca = self.cli(["redis-cli", "--tls", "--cacert", "/etc/ssl/certs/ca-certificates.crt", "ping"])
        self.assertNotEqual(wrong_ca.stdout.strip(), "PONG", "a server not signed by the trusted CA is refused")

    def served_serial(self) -> str:
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}"],
            input="", capture_output=True, text=True, timeout=10,
        )
        serial = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=out.stdout, capture_output=True, text=True)
        self.assertEqual(serial.returncode, 0, f"no certificate served: {out.stderr}")
        return serial.stdout.strip()

    def test_a_renewed_certificate_is_served_after_config_set(self) -> None:
        before = self.served_serial()
        subprocess.run(["bash", str(ROOT / "scripts/make-certs.sh"), str(self.dir / "certs")], check=True, capture_output=True)
        self.assertEqual(self.served_serial(), before, "Redis keeps its certificate until told")
        certs = self.dir / "certs/redis"
        out = self.cli(["redis-cli", "--tls", "--cacert", str(certs / "ca.crt"), "--user", "clovisor-admin", "CONFIG", "SET",
                        "tls-cert-file", str(certs / "tls.crt"), "tls-key-file", str(certs / "tls.key")])
        self.assertEqual(out.stdout.strip(), "OK", out.stderr)
        self.assertNotEqual(self.served_serial(), before, "the renewed certificate is served")


if __name__ == "__main__":
    unittest.main()
