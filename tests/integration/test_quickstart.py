"""The README's first command, in its bounded mode: it must end with a trace spanning both apps."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_demo_prints_a_trace_from_orders_to_billing(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "scripts/demo", "--duration", "12", "--workdir", str(tmp_path / "demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert re.search(r"Jaeger UI:\s+http://127\.0\.0\.1:\d+", output)
    traces = int(re.search(r"traces with orders -> billing: (\d+)", output).group(1))
    assert traces >= 10
    assert re.search(r"dependencies: .*orders -> billing", output)
    tree = output.split("one trace (", 1)[1].splitlines()[1:]
    assert re.match(r"\s+orders: send orders\s+[\d.]+ ms", tree[0])
    assert re.match(r"\s{4,}billing: receive orders\s+[\d.]+ ms", tree[1])
    assert "Traceback" not in output + result.stderr


def test_ctrl_c_stops_the_demo_cleanly_with_a_report(tmp_path: Path) -> None:
    import signal
    import time

    import psutil

    process = subprocess.Popen(
        [".venv/bin/python", "-m", "demo.quickstart", "--workdir", str(tmp_path / "demo")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in process.stdout:
        lines.append(line)
        # Interrupt once an order has gone through both apps: before the billing consumer has
        # joined its group there is no trace to report, and the demo rightly says so with exit 1.
        billed = re.search(r"orders sent, (\d+) billed", line)
        if billed and int(billed.group(1)) > 0:
            break
        assert time.monotonic() < deadline, "".join(lines)
    children = psutil.Process(process.pid).children(recursive=True)
    assert children, "the demo should be running Kafka, Jaeger, proxies and apps"
    process.send_signal(signal.SIGINT)
    try:
        rest, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        # Say what is still running (and stop it) rather than hang the rest of the suite.
        still = [p for p in children if p.is_running()] + [psutil.Process(process.pid)]
        stack = []
        for leftover in still:
            with contextlib.suppress(psutil.Error):
                stack.append(f"{leftover.pid} {' '.join(leftover.cmdline())[:160]}")
                leftover.kill()
        rest, _ = process.communicate()
        pytest.fail(
            "the demo did not stop within 120 s of Ctrl-C; still running:\n"
            + "\n".join(stack)
            + "\n"
            + "".join(lines)
            + rest
        )
    output = "".join(lines) + rest
    assert process.wait(60) == 0, output
    assert "traces with orders -> billing:" in output
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def test_a_demo_stopped_before_anything_was_billed_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from demo.quickstart import report

    # No Jaeger is needed: with nothing billed there is no trace to wait for.
    assert report(None, tmp_path, billed=0) == 1  # type: ignore[arg-type]
    assert "nothing was billed" in capsys.readouterr().err
