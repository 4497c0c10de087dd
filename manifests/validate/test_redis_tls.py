"""The manifests' Redis, run for real: the exact command line of manifests/base/redis.yaml
(its certificate paths pointed at certificates from scripts/make-certs.sh) serves TLS only, and
its own liveness command answers over TLS with the password, and a renewed certificate is
taken up with the CONFIG SET that docs/security.md gives.

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
PASSWORD = "manifest-test-pw"


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
            a = a.replace("$(REDIS_PASSWORD)", PASSWORD).replace(mount, str(self.dir / "certs/redis"))
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

    def cli(self, command: list[str], password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        if password is not None:
            env["REDISCLI_AUTH"] = password
        certs = str(self.dir / "certs/redis")
        mount = next(m["mountPath"] for m in self.container["volumeMounts"] if m["name"] == "tls")
        command = [a.replace(mount, certs) for a in command]
        # The port the test moved Redis to, before the command (redis-cli takes what follows
        # the command as its arguments).
        command = [command[0], "-p", str(self.port), *command[1:]]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)

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
        out = self.cli(["redis-cli", "--tls", "--cacert", str(certs / "ca.crt"), "CONFIG", "SET",
                        "tls-cert-file", str(certs / "tls.crt"), "tls-key-file", str(certs / "tls.key")])
        self.assertEqual(out.stdout.strip(), "OK", out.stderr)
        self.assertNotEqual(self.served_serial(), before, "the renewed certificate is served")


if __name__ == "__main__":
    unittest.main()
