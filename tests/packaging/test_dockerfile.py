"""The sidecar image's Dockerfile: hadolint clean, multi-stage, non-root, health-checked."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.config import SETTINGS

from . import REPO_ROOT, needs_packaging_tools, tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
BUILD_TOOLS = {"gcc", "g++", "cc", "clang", "make", "build-essential", "libc6-dev", "python3-dev"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile: (KEYWORD, arguments) with continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends in a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


def admin_port_default() -> int:
    default = next(s.default for s in SETTINGS if s.name == "KTP_ADMIN_ADDRESS")
    assert default
    return int(default.rsplit(":", 1)[1])


@needs_packaging_tools
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@needs_packaging_tools
def test_hadolint_reports_problems(tmp_path: Path) -> None:
    """The linter really lints: an unpinned base image and pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_multi_stage_slim_pinned_bases(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    for stage in stages:
        if stage.base in {s.name for s in stages if s.name}:
            continue
        _image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest", f"base image {stage.base} is not pinned to a tag"
    final = stages[-1]
    assert final.base.startswith("python:") and "-slim" in final.base, final.base


def test_runs_as_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    # Numeric, so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}"
    # Nothing after USER switches back to root.
    last = max(i for i, (kw, _) in enumerate(stages[-1].instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in stages[-1].instructions[last + 1 :])


def test_healthcheck_hits_healthz_on_admin_port(stages: list[Stage]) -> None:
    checks = stages[-1].all("HEALTHCHECK")
    assert len(checks) == 1, checks
    assert re.search(rf"127\.0\.0\.1:{admin_port_default()}/healthz\b", checks[0]), checks[0]
    assert "CMD" in checks[0] and "NONE" not in checks[0].upper().split()


def test_final_stage_has_no_build_tools_or_caches(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", run))
        assert not (words & BUILD_TOOLS), f"build tools in the final stage: {run}"
        if re.search(r"\bpip3? install\b", run):
            assert "--no-cache-dir" in run, f"pip cache left in the image: {run}"
            assert "--no-index" in run, f"the final stage installs from an index: {run}"
        if "apt-get install" in run:
            assert "rm -rf /var/lib/apt/lists" in run, run
    # Wheels from the build stage are bind-mounted (or copied and removed in the same layer),
    # never left in a layer of their own.
    for copy in final.all("COPY"):
        assert "/wheels" not in copy, f"wheels copied into a layer of the final stage: {copy}"
    assert not final.all("ADD"), "ADD in the final stage"


def test_entrypoint_runs_proxy_with_env_file(stages: list[Stage]) -> None:
    final = stages[-1]
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    cmd = json.loads(final.all("CMD")[-1])
    argv = entrypoint + cmd
    assert argv[0] == "kafka-trace-proxy", argv
    env_file = argv[argv.index("--env-file") + 1]
    copies = [c.split() for c in final.all("COPY")]
    assert ["config/kafka-trace-proxy.env", env_file] in copies, copies


def test_copied_sources_exist_and_are_in_the_context(stages: list[Stage]) -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _dest = [w for w in copy.split() if not w.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file"
                hits = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p.rstrip("/"))]
                assert not hits, f"COPY {source} is excluded by .dockerignore ({hits})"


BAD_DOCKERFILE = """\
FROM python:3.11 AS build
RUN pip wheel --wheel-dir /wheels x
FROM python:latest
RUN apt-get update && apt-get install -y gcc && pip install x
COPY --from=build /wheels /wheels
USER root
HEALTHCHECK CMD curl -f http://127.0.0.1:8080/ || exit 1
ENTRYPOINT ["python"]
CMD ["-m", "proxy"]
"""


@pytest.mark.parametrize(
    "check",
    [
        test_multi_stage_slim_pinned_bases,
        test_runs_as_numeric_non_root_user,
        test_healthcheck_hits_healthz_on_admin_port,
        test_final_stage_has_no_build_tools_or_caches,
        test_entrypoint_runs_proxy_with_env_file,
    ],
)
def test_checks_reject_a_bad_dockerfile(check) -> None:  # type: ignore[no-untyped-def]
    """Each structural check fails on a Dockerfile with the mistake it is for."""
    with pytest.raises(AssertionError):
        check(parse(BAD_DOCKERFILE))


def test_the_build_stage_compiles_the_c_extension(stages: list[Stage]) -> None:
    # Without a compiler the wheel still builds (the extension is optional), silently without
    # the compiled hot loops: the image would trace at a higher CPU cost than benchmarked.
    build = stages[0]
    assert any(re.search(r"apt-get install .*\bgcc\b", run) for run in build.all("RUN"))
    copied = [word for copy in build.all("COPY") for word in copy.split()]
    assert "setup.py" in copied, copied
    # ...and a wheel that came out without it fails the build instead of shipping.
    assert any("_speedups" in run and "sys.exit" in run for run in build.all("RUN"))
