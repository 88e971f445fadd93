"""`probmf evaluate` and the bench script: the measurement interface."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from probmf.cli import main
from probmf.data.io import write_ratings
from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_preset, synthetic_ratings
from probmf.evaluate import evaluate_fold, mean_row
from probmf.fitters.run import fit_model, resolve_options
from probmf.metrics import cold_mask, interval_scores

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "dataset", "split", "model", "rank", "rmse", "mae", "n_train", "n_test", "n_cold",
    "fit_seconds", "predict_seconds", "probmf_version",
}  # fmt: skip


def _json_rows(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.parametrize("model", ["baseline", "svd", "als"])
def test_evaluate_files_json(tmp_path, capsys, model):
    ratings, _ = synthetic_preset("tiny", seed=1)
    n = len(ratings)
    write_ratings(ratings.take(np.arange(n) % 5 != 0), tmp_path / "train.csv")
    write_ratings(ratings.take(np.arange(n) % 5 == 0), tmp_path / "test.csv")
    args = ["evaluate", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv")]
    args += ["--model", model, "--json"] + (["--rank", "2"] if model != "baseline" else [])
    assert main(args) == 0
    (row,) = _json_rows(capsys)
    assert FIELDS <= set(row)
    assert row["model"] == model and row["n_test"] == n // 5 and row["n_train"] == n - n // 5
    assert 0 < row["rmse"] < 2 and row["mae"] <= row["rmse"]


def test_split_all_adds_a_mean_row(capsys):
    assert main(["evaluate", "--data", "synthetic:tiny", "--split", "all", "--model", "baseline", "--json"]) == 0
    rows = _json_rows(capsys)
    assert [r["split"] for r in rows] == ["u1", "u2", "u3", "u4", "u5", "mean"]
    np.testing.assert_allclose(rows[-1]["rmse"], np.mean([r["rmse"] for r in rows[:-1]]))
    assert sum(r["n_test"] for r in rows[:-1]) == 800  # the five folds partition the data


def test_option_that_does_not_apply_is_an_error(capsys):
    assert main(["evaluate", "--data", "synthetic:tiny", "--model", "svd", "--lambda", "1"]) == 2
    assert "does not apply" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown model"):
        resolve_options("nope", {})


def test_bad_file_is_reported_with_its_line(tmp_path, capsys):
    bad = tmp_path / "train.csv"
    bad.write_text("userId,movieId,rating\n1,2,4\n1,3,four\n")
    assert main(["evaluate", "--train", str(bad), "--test", str(bad), "--model", "baseline"]) == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and "3" in err and "four" in err


def test_missing_movielens_falls_back_to_synthetic_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROBMF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("probmf.data.movielens._fetch", _offline)
    assert main(["evaluate", "--data", "ml-100k", "--model", "baseline", "--json"]) == 0
    out = capsys.readouterr()
    assert "SYNTHETIC" in out.err
    assert json.loads(out.out)["dataset"] == "synthetic:ml100k"
    assert main(["evaluate", "--data", "ml-100k", "--model", "baseline", "--no-fallback"]) == 2


def _offline(url, dest):
    raise OSError("network unreachable")


def test_cold_pairs_are_counted_and_predicted():
    ratings, _ = synthetic_preset("tiny", seed=2)
    # Hold out every rating of user 0: it is cold at test time.
    test_mask = ratings.users == 0
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    row = evaluate_fold("als", train, test, options={"rank": 2, "num_sweeps": 3})
    assert row["n_cold"] == len(test) == int(np.sum(cold_mask(test, train)))
    assert np.isfinite(row["rmse"])


def test_ml100k_u1_als_beats_the_baseline(ml100k_dir, monkeypatch):
    from probmf.data.movielens import load_split

    monkeypatch.setenv("PROBMF_DATA_DIR", str(ml100k_dir.parent))
    train, test = load_split("ml-100k", "u1")
    als = evaluate_fold("als", train, test, options={})
    base = evaluate_fold("baseline", train, test, options={})
    assert als["n_cold"] > 0
    assert als["rmse"] < base["rmse"] - 0.01


def test_bench_smoke_prints_its_fields(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bench.py"), "--smoke", "--iters", "2", "--json", "--out", ""]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    row = json.loads(out.stdout.splitlines()[-1])
    for key in (
        "model",
        "rank",
        "n_ratings",
        "seconds_per_iter",
        "compile_seconds",
        "peak_rss_mb",
        "devices",
    ):
        assert key in row
    assert row["seconds_per_iter"] > 0 and row["n_ratings"] == 800


# ---- calibration scores ----------------------------------------------------------------------


def test_interval_scores_are_the_gaussian_nll_and_central_interval_coverage():
    """NLL = -mean log N(r; mean, sd^2) and coverage = the share of ratings inside the central
    50% / 90% intervals, i.e. with predictive CDF in [0.25, 0.75] / [0.05, 0.95]."""
    rng = np.random.default_rng(4)
    n = 5000
    mean = rng.uniform(1, 5, n)
    sd = rng.uniform(0.2, 2.0, n)
    truth = mean + sd * rng.standard_t(3, n)  # heavier tails than the predictive: coverage < nominal
    got = interval_scores(mean.astype(np.float32), sd.astype(np.float32), truth.astype(np.float32))
    q = stats.norm.cdf(truth, mean, sd)
    np.testing.assert_allclose(got["nll"], -np.mean(stats.norm.logpdf(truth, mean, sd)), rtol=1e-5)
    # float32 inputs may move a rating sitting on an interval's end: allow one of n to flip
    assert abs(got["coverage_50"] - np.mean((q >= 0.25) & (q <= 0.75))) <= 1 / n
    assert abs(got["coverage_90"] - np.mean((q >= 0.05) & (q <= 0.95))) <= 1 / n
    assert 0.3 < got["coverage_50"] < 0.5 and 0.8 < got["coverage_90"] < 0.9  # not trivially 0 or 1


@pytest.mark.parametrize("model, options", [("baseline", {}), ("als", {"rank": 3, "num_sweeps": 8, "lam": 0.1})])
def test_point_models_are_scored_with_the_plug_in_gaussian(model, options):
    """A point estimate is scored as N(clipped mean, sd^2) with sd the RMS training residual
    of its clipped predictions, everything recomputed here from the fitted parameters."""
    ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, rank=3, noise=0.4, seed=21)
    ratings = dataclasses.replace(ratings, values=np.clip(np.round(ratings.values), 1, 5).astype(np.float32))
    train, test = random_split(ratings, 0.2, seed=1)
    row = evaluate_fold(model, train, test, options=options)
    fitted, _, _ = fit_model(model, train, options=options)  # the same seed: the same fit
    W, U, b, c, mu = (np.asarray(a, np.float64) for a in fitted.params)
    lo, hi = float(train.values.min()), float(train.values.max())

    def by_hand(r):
        ku, ki = r.users >= 0, r.items >= 0
        u, i = np.maximum(r.users, 0), np.maximum(r.items, 0)
        pred = np.where(ku & ki, np.sum(W[u] * U[i], 1), 0) + np.where(ku, b[u], 0) + np.where(ki, c[i], 0) + mu
        return np.clip(pred, lo, hi)

    train_pred, mean, truth = by_hand(train), by_hand(test), test.values.astype(np.float64)
    sd = np.sqrt(np.mean((train_pred - train.values) ** 2))
    q = stats.norm.cdf(truth, mean, sd)
    assert row["num_samples"] == 1
    np.testing.assert_allclose(row["rmse"], np.sqrt(np.mean((mean - truth) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(row["nll"], -np.mean(stats.norm.logpdf(truth, mean, sd)), rtol=1e-5)
    assert abs(row["coverage_50"] - np.mean((q >= 0.25) & (q <= 0.75))) <= 1 / len(test)
    assert abs(row["coverage_90"] - np.mean((q >= 0.05) & (q <= 0.95))) <= 1 / len(test)


# ---- the mean row over folds ---------------------------------------------------------------------


def _fold_row(split, **fields):
    row = {"dataset": "ml-100k", "split": split, "model": "gibbs", "rank": 10, "rmse": 0.9, "mae": 0.7,
           "n_test": 100, "n_cold": 2, "coverage_50": 0.5, "coverage_90": 0.9, "nll": 1.2, "rmse_cold": None,
           "coverage_50_cold": None, "coverage_90_cold": None, "num_samples": 200, "r_hat_max": 1.01,
           "ess_min": 150.0, "n_train": 900, "predict_seconds": 0.1, "fit_seconds": 2.0, "probmf_version": "0.1.0",
           "seed": 0, "options": {"num_samples": 200, "thin": 1}}  # fmt: skip
    return {**row, **fields}


def test_mean_row_averages_metrics_and_summarises_diagnostics():
    rows = [
        _fold_row("u1", rmse=0.90, nll=1.0, n_cold=0, rmse_cold=None, r_hat_max=1.02, ess_min=None, ess_tail_min=None,
                  fit_seconds=1.0),
        _fold_row("u2", rmse=0.93, nll=1.3, n_cold=3, rmse_cold=1.1, coverage_50_cold=0.4, coverage_90_cold=0.8,
                  r_hat_max=1.30, ess_min=40.0, ess_tail_min=70.0, fit_seconds=2.0),
        _fold_row("u3", rmse=0.96, nll=1.6, n_cold=6, rmse_cold=1.3, coverage_50_cold=0.6, coverage_90_cold=1.0,
                  r_hat_max=None, ess_min=90.0, ess_tail_min=30.0, fit_seconds=4.0),
    ]  # fmt: skip
    for row, precision in zip(rows, (0.5, 0.5, 0.2), strict=True):
        row["precision_at_10"] = precision
    mean = mean_row(rows)
    assert mean["split"] == "mean" and mean["folds"] == ["u1", "u2", "u3"]
    for key, want in [("rmse", 0.93), ("nll", 1.3), ("n_cold", 3.0), ("fit_seconds", 7 / 3), ("mae", 0.7),
                      ("precision_at_10", 0.4)]:  # fmt: skip
        assert mean[key] == pytest.approx(want), key
    # cold metrics: over the folds that have cold pairs only
    assert mean["rmse_cold"] == pytest.approx(1.2)
    assert mean["coverage_50_cold"] == pytest.approx(0.5) and mean["coverage_90_cold"] == pytest.approx(0.9)
    # diagnostics: the worst fold, not the first
    assert mean["r_hat_max"] == pytest.approx(1.30) and mean["ess_min"] == pytest.approx(40.0)
    assert mean["ess_tail_min"] == pytest.approx(30.0)
    # fields every fold shares are kept
    assert (mean["dataset"], mean["model"], mean["rank"], mean["num_samples"], mean["seed"]) == (
        "ml-100k", "gibbs", 10, 200, 0)  # fmt: skip
    assert mean["options"] == {"num_samples": 200, "thin": 1}
    assert set(mean) == set(rows[0]) | {"folds"}


def test_mean_row_copies_nothing_fold_specific():
    rows = [_fold_row("u1", num_samples=200, seed=0, options={"a": 1}, extra="x"), _fold_row("u2", num_samples=100,
            seed=1, options={"a": 2}, extra="y", rmse_cold=None, r_hat_max=None, ess_min=None)]  # fmt: skip
    rows[0].update(rmse_cold=None, r_hat_max=None, ess_min=None)
    mean = mean_row(rows)
    for key in ("num_samples", "seed", "options", "extra", "rmse_cold", "coverage_50_cold", "r_hat_max", "ess_min"):
        assert mean[key] is None, key
    assert mean["rmse"] == pytest.approx(0.9) and mean["model"] == "gibbs"
