"""Fixtures of the reliability tests: real proxy processes that are always stopped, and a summary
of the figures each test measured (printed at the end of the run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.proxy import ProxyProcess

_FIGURES: list[str] = []


class Proxies:
    """Starts proxy processes for one test and stops every one of them afterwards."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self.started: list[ProxyProcess] = []

    def start(self, upstream: str, name: str = "proxy", **env: str) -> ProxyProcess:
        proxy = ProxyProcess(upstream, self._factory.mktemp(name), env=env, name=name)
        self.started.append(proxy)
        return proxy.start()

    def stop_all(self) -> None:
        for proxy in self.started:
            proxy.stop()


@pytest.fixture
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    running = Proxies(tmp_path_factory)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines a test appends to report what it measured (shown in the terminal summary)."""
    lines: list[str] = []
    yield lines
    for line in lines:
        _FIGURES.append(f"{request.node.name}: {line}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the end of each proxy log of a failed test to its report."""
    report = yield
    running = getattr(item, "funcargs", {}).get("proxies")
    if report.failed and isinstance(running, Proxies):
        for proxy in running.started:
            tail = "\n".join(proxy.log().splitlines()[-120:])
            report.sections.append((f"proxy log ({proxy.name}, {proxy.log_path})", tail))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("reliability figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
