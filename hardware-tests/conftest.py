"""pytest set-up for the hardware-in-the-loop suite.

* hardware-tests/ goes on the import path (for `smarter_hil`, which the
  environment files import by name);
* `gateway` is a booted gateway's shell, reached once per session through
  SmarterStrategy (off -> flashed -> booted -> shell) and shared by the
  tests, so one boot serves every check that does not need its own;
* `figure(name, value, unit)` records a measured figure: it goes into the
  JUnit XML as a property and into the run's summary;
* at the end of a run against a board (`--lg-env`), a readable table is
  printed (board, image version, each test with its figures and outcome) and
  written to `--hil-summary FILE` when given.
"""

import datetime
import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

_RESULTS = []  # (nodeid, outcome, figures, reason)
_RUN = {"board": "?", "image": "?", "started": None}


def pytest_addoption(parser):
    parser.addoption("--hil-summary", default=None,
                     help="also write the readable summary of the run to this file")


def pytest_sessionstart(session):
    _RUN["started"] = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="session")
def board(target):
    """The board under test (its SmarterBoard resource)."""
    from smarter_hil.board import SmarterBoard
    found = [r for r in target.resources if isinstance(r, SmarterBoard)]
    if not found:
        pytest.fail("the environment declares no SmarterBoard resource")
    _RUN["board"] = found[0].name
    return found[0]


@pytest.fixture(scope="session")
def boot_time(strategy):
    """Seconds from power-on (after flashing) to a logged-in shell, measured
    once by the session's boot."""
    strategy.transition("flashed")
    start = time.monotonic()
    strategy.transition("shell")
    return time.monotonic() - start


@pytest.fixture(scope="session")
def gateway(target, strategy, board, boot_time):
    """The booted gateway's shell (ShellDriver)."""
    shell = target.get_driver("ShellDriver")
    out = shell.run_check(
        "cat /etc/smarter-release 2>/dev/null || sed -n 's/^PRETTY_NAME=//p' /etc/os-release")
    if out:
        # /etc/smarter-release names the image's version (VERSION=...); else the OS's name.
        _RUN["image"] = next((line.split("=", 1)[1] for line in out if line.startswith("VERSION=")), out[-1])
    return shell


@pytest.fixture
def figure(request, record_property):
    """Record a measured figure of this test: figure("boot", 24.3, "s")."""
    figures = []
    request.node._hil_figures = figures

    def record(name, value, unit=""):
        figures.append((name, value, unit))
        record_property(f"figure:{name}", f"{value:.3f} {unit}".strip())

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        elif report.failed:
            reason = str(report.longrepr).strip().splitlines()[-1][:160]
        _RESULTS.append((item.nodeid, report.outcome,
                         getattr(item, "_hil_figures", []), reason))


def pytest_sessionfinish(session, exitstatus):
    if not _RESULTS or not session.config.getoption("--lg-env", default=None):
        return
    lines = [
        f"# HIL run: {_RUN['board']}",
        "",
        f"- image: {_RUN['image']}",
        f"- started: {_RUN['started']:%Y-%m-%d %H:%M:%S} UTC",
        f"- result: {'PASS' if exitstatus == 0 else 'FAIL'}",
        "",
        "| test | outcome | figures | note |",
        "|---|---|---|---|",
    ]
    for nodeid, outcome, figures, reason in _RESULTS:
        figs = ", ".join(f"{n} {v:.2f} {u}".strip() for n, v, u in figures)
        lines.append(f"| {nodeid.split('::')[-1]} | {outcome} | {figs} | {reason} |")
    text = "\n".join(lines) + "\n"
    if session.config.getoption("--hil-summary"):
        path = pathlib.Path(session.config.getoption("--hil-summary"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print("\n" + text)
