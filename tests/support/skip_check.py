"""A pytest plugin: the session fails when a test is skipped for any reason but missing hardware.

A skip that CI always takes hides a missing test, so every skip must be one this machine
cannot help: a CUDA test on a machine without a CUDA device, or a test of vLLM's int4 CPU
kernel on a CPU without AVX-512 (vLLM builds that kernel for AVX-512 only). Everything else a test needs
(a model package, an artifact, vLLM) is installed by `make test` or prepared by a fixture;
when it is not there, the session lists which tests skipped and why, and fails.

tests/conftest.py registers it as ``tierlm-skip-check``; ``-p no:tierlm-skip-check`` turns it off.
"""

from __future__ import annotations

import pytest

# The reason every CUDA-only test gives (tests/kernels/test_cuda*.py); a narrower one
# ("needs a CUDA device with ...") starts with it.
NEEDS_CUDA = "needs a CUDA device"
NEEDS_AVX512 = "needs a CPU with AVX-512"
HARDWARE = (NEEDS_CUDA, NEEDS_AVX512)
NAME = "tierlm-skip-check"


class SkipCheck:
    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        # A skip's longrepr is (file, line, "Skipped: <reason>").
        longrepr = report.longrepr
        reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
        if not reason.startswith(HARDWARE):
            self.skips.append((report.nodeid, reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # Whole modules skipped while importing (pytest.importorskip, a module-level skip).
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # "No tests collected" too: a module skipped at import may have been the only one.
        if self.skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skips:
            return
        terminalreporter.section(f"{len(self.skips)} skipped for a reason other than missing hardware {HARDWARE}: failing", red=True)
        for nodeid, reason in self.skips:
            terminalreporter.line(f"{nodeid}: {reason}")


def has_avx512() -> bool:
    """Whether this CPU runs AVX-512 code (as torch sees it)."""
    import torch

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
