"""Running the proxy under test on a Python interpreter other than the benchmark's own.

The image runs the proxy on the CPython of `python:3.11-slim`, built with profile-guided and
link-time optimisation. A pyenv-built CPython (this machine's `python3`, and so the project venv)
has neither, and its interpreter loop costs the proxy 15-20% more CPU. `--proxy-python` measures
the proxy on an interpreter built like the image's (Debian's `/usr/bin/python3.11` is one) while
the harness and the Python loads stay on the venv's.

The proxy's code still comes from the checkout (the proxy is started with PYTHONPATH at the
repository), so the other interpreter only needs the runtime dependencies, kept in a venv of its
own under the cache directory, and the same ABI as the one that built the compiled extension.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from testbed.kafka import cache_dir
from testbed.proxy import REPO_ROOT

_PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({"
    "'version': platform.python_version(), 'soabi': sysconfig.get_config_var('SOABI'), "
    "'executable': sys.executable, 'config_args': sysconfig.get_config_var('CONFIG_ARGS') or ''}))"
)


@dataclass(frozen=True)
class Interpreter:
    """The python that runs the proxy, and what the report says about it."""

    python: str
    description: str


class InterpreterError(RuntimeError):
    """The requested interpreter cannot run the proxy under test."""


def running_interpreter() -> Interpreter:
    """The benchmark's own interpreter (the default)."""
    return Interpreter(sys.executable, describe(sys.executable, _probe(sys.executable)))


def proxy_interpreter(requested: str) -> Interpreter:
    """A venv on `requested` holding the proxy's runtime dependencies, created once and cached."""
    facts = _probe(requested)
    own_soabi = sysconfig.get_config_var("SOABI")
    if facts["soabi"] != own_soabi:
        raise InterpreterError(
            f"--proxy-python {requested} is {facts['soabi']}, but the compiled extension in the "
            f"checkout was built for {own_soabi}; choose a CPython of the same version"
        )
    requirements = runtime_requirements()
    key = hashlib.sha256(
        json.dumps([os.path.realpath(facts["executable"]), facts["version"], requirements]).encode()
    ).hexdigest()[:12]
    venv = cache_dir() / f"bench-venv-{key}"
    python = venv / "bin" / "python"
    marker = venv / ".ktp-deps-installed"
    if not marker.exists():
        print(f"==> creating {venv} on {requested} for the proxy (once)", flush=True)
        _run([requested, "-m", "venv", "--clear", str(venv)], "create a venv")
        _run([str(python), "-m", "pip", "install", "--quiet", *requirements], "install")
    marker.touch()  # in use: scripts/setup removes venvs whose stamp is two weeks old
    _check_compiled(python)
    return Interpreter(str(python), describe(requested, facts))


def runtime_requirements() -> list[str]:
    """The project's dependencies plus its `fast` extra (uvloop), pinned to the versions this
    venv runs, so that the two interpreters differ in nothing else."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pinned = []
    for requirement in (*project["dependencies"], *project["optional-dependencies"]["fast"]):
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None, requirement
        try:
            pinned.append(f"{name.group()}=={version(name.group())}")
        except PackageNotFoundError:
            raise InterpreterError(
                f"{name.group()} is not installed in this venv; run scripts/setup first"
            ) from None
    return pinned


def describe(python: str, facts: dict[str, str]) -> str:
    """`/usr/bin/python3.11 (CPython 3.11.2)`, noting the build options the interpreter reports."""
    flags = [
        name
        for option, name in (("--enable-optimizations", "PGO"), ("--with-lto", "LTO"))
        if option in facts["config_args"]
    ]
    built = f", configured with {' + '.join(flags)}" if flags else ""
    return f"{python} (CPython {facts['version']}{built})"


def _probe(python: str) -> dict[str, str]:
    out = _output([python, "-c", _PROBE], f"--proxy-python {python} does not run", timeout=30)
    try:
        facts: dict[str, str] = json.loads(out.splitlines()[-1])
        return {key: str(facts[key]) for key in ("version", "soabi", "executable", "config_args")}
    except (IndexError, ValueError, KeyError, TypeError):
        raise InterpreterError(
            f"--proxy-python {python} is not a CPython that reports its build: {out[-300:]!r}"
        ) from None


def _check_compiled(python: Path) -> None:
    """The proxy must run its compiled loops there too, or the comparison means nothing."""
    out = _output(
        [str(python), "-c", "import proxy.codec.native as n; print(n.describe())"],
        f"the proxy does not start under {python}",
        timeout=60,
    )
    if out.strip() != "compiled":
        raise InterpreterError(
            f"the proxy does not load its compiled extension under {python}: {out.strip()[-300:]}"
        )


def _run(cmd: list[str], what: str) -> None:
    _output(cmd, f"could not {what} for --proxy-python ({' '.join(cmd[:3])} ...)", timeout=900)


def _output(cmd: list[str], failure: str, *, timeout: float) -> str:
    """The command's standard output; InterpreterError (with its output's tail) if it fails."""
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise InterpreterError(f"{failure}: {exc}") from None
    if done.returncode != 0:
        raise InterpreterError(f"{failure}: {(done.stdout + done.stderr).strip()[-500:]}")
    return done.stdout
