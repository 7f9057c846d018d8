"""A bounded coverage-guided fuzz session per target, each in its own process (atheris needs one).

Each target of atheris_targets.py starts from the captured frames and runs for $KTP_FUZZ_RUNS
executions (default 20000) or $KTP_FUZZ_SECONDS seconds (default 20), whichever comes first; the
session must end with zero crashes (an exception that is not the codec's own, a wrong result, or
a process abort). Known bugs are counted, not crashes (KNOWN_BUGS in atheris_targets.py). Without
atheris installed (requirements-fuzz.txt) the same targets run on random mutations instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .atheris_targets import TARGETS, write_seeds

REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("KTP_FUZZ_RUNS", "20000"))
SECONDS = int(os.environ.get("KTP_FUZZ_SECONDS", "20"))


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_session_ends_with_zero_crashes(name: str, tmp_path: Path) -> None:
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    write_seeds(name, seeds)
    corpus.mkdir()
    stats = tmp_path / "stats.json"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_targets",
        name,
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        "-seed=1",
        str(corpus),
        str(seeds),
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "KTP_FUZZ_STATS": str(stats), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=SECONDS + 180,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-")))
    assert result.returncode == 0 and not crashes, (
        f"fuzz target {name!r} crashed (exit {result.returncode}, artifacts {crashes} in "
        f"{tmp_path}); reproduce with: python -m tests.fuzz.atheris_targets {name} ARTIFACT\n"
        + output[-4000:]
    )
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done, output[-2000:]
    runs = int(done.group(1))
    assert runs > 0
    seen = json.loads(stats.read_text()) if stats.exists() else {}
    known = {k: v for k, v in seen.items() if k.startswith("known_bug:")}
    print(f"{name}: {runs} executions in {done.group(2)} s, 0 crashes, known bugs hit: {known}")
