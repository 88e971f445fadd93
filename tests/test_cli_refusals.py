"""Option combinations the command line refuses up front, before reading data or fitting."""

import subprocess
import sys
import time

import pytest

import probmf.evaluate
from probmf import cli


def _never(*args, **kwargs):
    raise AssertionError("the refusal must come before any data is read or model fitted")


@pytest.mark.parametrize("ranking", [[], ["5"]])
def test_summary_only_with_ranking_is_refused_before_fitting(capsys, monkeypatch, ranking):
    """Ranking needs predictions at every item of each user; a summary holds the test pairs only."""
    monkeypatch.setattr(probmf.evaluate, "folds", _never)  # the command imports them when it runs
    monkeypatch.setattr(probmf.evaluate, "evaluate_fold", _never)
    argv = ["evaluate", "--model", "gibbs", "--summary-only", "--ranking", *ranking, "--samples", "5",
            "--warmup", "2", "--data", "synthetic:tiny"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("probmf: error: --summary-only cannot be combined with --ranking")
    assert "drop --summary-only" in err


def test_summary_only_with_ranking_exits_non_zero_quickly():
    """The real command: a non-zero exit and the message, in about the time of the imports."""
    cmd = [sys.executable, "-m", "probmf.cli", "evaluate", "--model", "gibbs", "--summary-only", "--ranking",
           "--samples", "5", "--warmup", "2", "--data", "synthetic:tiny"]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert out.returncode == 2
    assert "--summary-only cannot be combined with --ranking" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    # Fitting and scoring this run took over 20 s of CPU on 2 cores; the refusal is imports only.
    assert seconds < 60, seconds
