"""Packaging tests: the Dockerfile (hadolint), the Helm chart (helm and the Kubernetes schemas) and
the docker-compose demo.

helm, hadolint and kubernetes-validate (with PyYAML) are installed by scripts/setup (helm linked
into the venv's bin). With KTP_SKIP_PACKAGING=1 scripts/setup skips them, and the tests that need
them are skipped; otherwise a missing tool fails its tests.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_PACKAGING = os.environ.get("KTP_SKIP_PACKAGING") == "1"
SKIP_REASON = (
    "KTP_SKIP_PACKAGING=1: scripts/setup did not install helm, hadolint, kubernetes-validate"
)

#: For tests that run helm or hadolint or validate against the Kubernetes schemas.
needs_packaging_tools = pytest.mark.skipif(SKIP_PACKAGING, reason=SKIP_REASON)


def tool(name: str) -> str:
    """Path of a command installed by scripts/setup: the venv's bin dir first, then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    if SKIP_PACKAGING:
        pytest.skip(SKIP_REASON)
    pytest.fail(f"{name} not found in {candidate.parent} or on PATH: run scripts/setup")


def module(name: str) -> ModuleType:
    """Import a Python package from requirements-packaging.txt (missing: fail, or skip)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if SKIP_PACKAGING:
            pytest.skip(SKIP_REASON)
        pytest.fail(
            f"python package {name} missing: run scripts/setup (requirements-packaging.txt)"
        )


def setup_variable(name: str) -> str:
    """A NAME=value assignment of scripts/setup (versions the packaging must agree with)."""
    for line in (REPO_ROOT / "scripts" / "setup").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].split("#", 1)[0].strip().strip("\"'")
    raise AssertionError(f"{name}= not found in scripts/setup")
