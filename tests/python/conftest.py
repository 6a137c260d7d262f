"""A skipped test fails the run, unless it is on ALLOWED_SKIPS with its reason.

Several tests here need the services `scripts/test` starts and skip without them (so a person
can run the rest with plain `pytest`). Under `scripts/test` everything they need is there, so a
skip there means a check silently did not run: `scripts/test` sets FOLDLINE_NO_SKIPS=1 and this
hook turns any skip not listed below into a failed session."""

import os

# nodeid -> why skipping it is fine even under scripts/test. Keep it short.
ALLOWED_SKIPS: dict[str, str] = {}

_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and report.nodeid not in ALLOWED_SKIPS:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("FOLDLINE_NO_SKIPS") == "1" and _skipped:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("FOLDLINE_NO_SKIPS") == "1" and _skipped:
        terminalreporter.section("skipped tests fail this run (FOLDLINE_NO_SKIPS=1)")
        for nodeid, reason in _skipped:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(f"{len(_skipped)} failed (skipped)")
