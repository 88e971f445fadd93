"""`probmf evaluate` and the bench script: the measurement interface."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probmf.cli import main
from probmf.data.io import write_ratings
from probmf.data.synthetic import synthetic_preset
from probmf.evaluate import evaluate_fold, resolve_options
from probmf.metrics import cold_mask

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
