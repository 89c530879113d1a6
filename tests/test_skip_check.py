"""The skip check (tests/support/skip_check.py) on small pytest sessions of its own."""

from __future__ import annotations

import pytest

from tests.support.skip_check import HARDWARE, NEEDS_CUDA, SkipCheck

HEADER = f"1 skipped for a reason other than missing hardware {HARDWARE}: failing"


def test_a_skip_for_another_reason_fails_the_session_and_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_models="""
        import pytest

        def test_runs():
            pass

        def test_needs_a_model():
            pytest.skip("no model package")

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_on_cuda():
            pass
    """)
    result = pytester.runpytest(plugins=[SkipCheck()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*{HEADER}*", "test_models.py::test_needs_a_model: no model package"])
    result.stdout.no_fnmatch_line("test_models.py::test_on_cuda:*")


def test_a_module_skipped_at_import_counts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vllm="""
        import pytest

        pytest.importorskip("tierlm_no_such_module", reason="needs vLLM")

        def test_never_collected():
            pass
    """)
    result = pytester.runpytest(plugins=[SkipCheck()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*{HEADER}*", "test_vllm.py: needs vLLM"])


def test_only_cuda_skips_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cuda=f"""
        import pytest

        pytestmark = pytest.mark.skipif(True, reason={NEEDS_CUDA!r})

        def test_kernel():
            pass

        def test_sparse():
            pytest.skip({NEEDS_CUDA!r} + " with 2:4 sparse tensor cores (sm80+)")
    """)
    result = pytester.runpytest(plugins=[SkipCheck()])
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=2)


def test_a_failing_session_keeps_its_exit_status(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken="""
        import pytest

        def test_fails():
            assert False

        def test_skips():
            pytest.skip("later")
    """)
    result = pytester.runpytest(plugins=[SkipCheck()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_broken.py::test_skips: later"])
