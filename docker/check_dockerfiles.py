#!/usr/bin/env python3
"""Checks docker/*.Dockerfile without a Docker engine: each parses (dockerfile-parse), builds
its workspace packages in a builder stage with what their build scripts need, and ships them
in a small runtime image as the right user. hadolint lints them separately.

Usage: check_dockerfiles.py REPO_ROOT [RENDERED_MANIFESTS.yaml ...]
With rendered manifests, every `clovisor/<name>` image they use must have docker/<name>.Dockerfile.
Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import DockerfileParser

# Which images must not run as root (they need no privilege), which must (BPF, tc, setns).
NON_ROOT = {"collector", "correlator"}
ROOT = {"probe", "all-in-one"}
RUNTIME_BASES = re.compile(r"^(debian:[^:]*-slim|gcr\.io/distroless/cc[^:]*)(:.*)?$")
# Packages any build needs; the BPF packages for anything that compiles clovisor-probe.
PROTO_PACKAGES = {"protobuf-compiler"}
BPF_PACKAGES = {"clang", "libbpf-dev", "libclang-dev"}


@dataclass
class Crate:
    deps: set[str]
    bins: set[str]


def workspace(root: Path) -> dict[str, Crate]:
    """Workspace packages by name, with their in-workspace dependencies and binaries."""
    top = tomllib.loads((root / "Cargo.toml").read_text())
    crates: dict[str, Crate] = {}
    for member in top["workspace"]["members"]:
        manifest = tomllib.loads((root / member / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        deps = {d for d in manifest.get("dependencies", {}) if d.startswith("clovisor")}
        bins = {b["name"] for b in manifest.get("bin", [])}
        crates[name] = Crate(deps, bins)
    return crates


def closure(crates: dict[str, Crate], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        n = todo.pop()
        if n in seen or n not in crates:
            continue
        seen.add(n)
        todo.extend(crates[n].deps)
    return seen


def check_file(path: Path, crates: dict[str, Crate]) -> list[str]:
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(f"{path.name}: {msg}")

    parser = DockerfileParser(path=str(path), cache_content=True)
    instructions = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    if not instructions:
        return [f"{path.name}: no instructions"]
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    if len(froms) < 2:
        bad(f"expected a multi-stage build (builder + runtime), found {len(froms)} FROM")
        return problems
    if not re.search(r"\bAS\s+builder$", froms[0]["value"], re.IGNORECASE):
        bad(f"first stage must be `AS builder`, is {froms[0]['value']!r}")
    final_start = froms[-1]["startline"]
    builder = [i for i in instructions if i["startline"] < final_start]
    final = [i for i in instructions if i["startline"] >= final_start]

    runtime_base = parser.parent_images[-1] if parser.parent_images else ""
    if not RUNTIME_BASES.match(runtime_base):
        bad(f"runtime image {runtime_base!r} is not debian:*-slim or distroless cc")

    run_text = " ".join(i["value"] for i in builder if i["instruction"] == "RUN")
    build = re.search(r"cargo build ([^&;]*)", run_text)
    if not build:
        bad("builder never runs `cargo build`")
        return problems
    args = shlex.split(build.group(1))
    for flag in ("--release", "--locked"):
        if flag not in args:
            bad(f"`cargo build` lacks {flag}")
    packages = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "-p"}
    if not packages:
        bad("`cargo build` names no package (-p)")
    for p in sorted(packages - crates.keys()):
        bad(f"`cargo build -p {p}`: no such workspace package (have {sorted(crates)})")
    installed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", run_text.split("apt-get install", 1)[-1].split("&&", 1)[0]))
    needed = set(PROTO_PACKAGES)
    if "clovisor-probe" in closure(crates, packages):
        needed |= BPF_PACKAGES
    for p in sorted(needed - installed):
        bad(f"builder does not install {p}, which building {sorted(packages)} needs")

    bins = set().union(*(crates[p].bins for p in packages if p in crates))
    entry = [i for i in final if i["instruction"] == "ENTRYPOINT"]
    if not entry:
        bad("runtime stage has no ENTRYPOINT")
    else:
        try:
            argv = json.loads(entry[-1]["value"])
        except json.JSONDecodeError:
            argv = None
        if not isinstance(argv, list) or not argv:
            bad("ENTRYPOINT must be exec form (a JSON list), so signals reach the binary")
        elif Path(argv[0]).name not in bins:
            bad(f"ENTRYPOINT runs {argv[0]!r}, not one of the built binaries {sorted(bins)}")
    if not any(i["instruction"] == "COPY" and "--from=builder" in i["value"] for i in final):
        bad("runtime stage copies nothing from the builder")

    users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
    component = path.name.removesuffix(".Dockerfile")
    user = users[-1] if users else None
    if component in NON_ROOT and (user is None or user in {"0", "root"}):
        bad(f"must run as a non-root USER, runs as {user or 'root (no USER)'}")
    if component in ROOT and user not in {"0", "root"}:
        bad(f"the manifests run it as uid 0 for its capabilities; state USER 0 explicitly, found {user}")

    ignore = path.with_name(path.name + ".dockerignore")
    if not ignore.is_file() or "/target" not in ignore.read_text().split():
        bad(f"{ignore.name} must exist and exclude /target (the build context is the repository)")
    return problems


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    crates = workspace(root)
    files = sorted((root / "docker").glob("*.Dockerfile"))
    if not files:
        print("dockerfiles: no docker/*.Dockerfile found")
        return 1
    problems: list[str] = []
    for f in files:
        problems += check_file(f, crates)
    for rendered in argv[1:]:
        images = set(re.findall(r"image:\s*clovisor/([a-z0-9-]+)", Path(rendered).read_text()))
        for name in sorted(images):
            if not (root / "docker" / f"{name}.Dockerfile").is_file():
                problems.append(f"{rendered}: image clovisor/{name} has no docker/{name}.Dockerfile")
    for p in problems:
        print(f"dockerfiles: {p}")
    print(f"dockerfiles: {len(files)} Dockerfile(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
