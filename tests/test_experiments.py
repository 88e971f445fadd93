"""Experiment scripts run end to end with --smoke (tiny synthetic data)."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bayes_mf_smoke_writes_its_table_plots_and_report(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bayes_mf.py"), "--smoke", "--ranks", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.splitlines()[0].startswith("data: synthetic:tiny")
    for name in ("results.csv", "results.jsonl", "report.md", "rmse_vs_rank.png", "calibration.png", "sd_vs_error.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in rows}
    assert {"mle-als", "mle-optax", "map-als", "map-optax", "gibbs"} <= methods
    assert {r["rank"] for r in rows} == {2}
    for r in rows:
        assert r["rmse"] > 0 and r["train_rmse"] > 0 and 0 <= r["coverage_90"] <= 1
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run experiments/<script> with this checkout's probmf first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(ROOT / "experiments" / script), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=600, env={**os.environ, "PYTHONPATH": path}
    )


def _load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_smoke_scores_a_cut_grid_on_synthetic_folds(tmp_path):
    out_file = tmp_path / "tune.jsonl"
    lines = _run("tune.py", "--smoke", "--out", str(out_file)).stdout.splitlines()
    assert lines[0].startswith("data: synthetic:tiny")
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["model"] == "als" and r["rank"] == 2 and r["num_sweeps"] == 3
        assert len(r["val_rmse_folds"]) == 2 and 0 < r["val_rmse"] < 2
    best = json.loads(next(line for line in lines if line.startswith("best: ")).removeprefix("best: "))
    assert best == min(rows, key=lambda r: r["val_rmse"])
    assert lines[-1] == f"appended 2 rows to {out_file}"


def test_ml100k_table_smoke_writes_fold_and_mean_rows(tmp_path):
    out_file = tmp_path / "table.jsonl"
    lines = _run("ml100k_table.py", "--smoke", "--out", str(out_file)).stdout.splitlines()
    assert lines[0] == "data: synthetic:tiny, folds u1, u2"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["model"], r["split"]) for r in rows] == [
        (m, s) for m in ("baseline", "als") for s in ("u1", "u2", "mean")
    ]
    for model in ("baseline", "als"):
        u1, u2, mean = (r for r in rows if r["model"] == model)
        assert mean["rmse"] == pytest.approx((u1["rmse"] + u2["rmse"]) / 2)
        assert mean["folds"] == ["u1", "u2"] and u1["dataset"] == "synthetic:tiny" and 0 < u1["rmse"] < 2
    table = [line for line in lines if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == ["baseline", "als"]
    assert table[1].startswith("| `als` | 2 | ")
    als_u1 = next(r for r in rows if r["model"] == "als" and r["split"] == "u1")
    assert table[1].endswith(f"| {als_u1['rmse']:.4f} |")  # the first fold's RMSE, last column


def test_factors_smoke_writes_its_json_and_markdown(tmp_path):
    lines = _run("factors.py", "--smoke", "--out", str(tmp_path)).stdout.splitlines()
    assert lines[0].startswith("data: synthetic:tiny") and "SYNTHETIC" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["factors.json", "factors.md"]  # no temporary files left
    report = json.loads((tmp_path / "factors.json").read_text())
    assert report["dataset"] == "synthetic:tiny" and report["rank"] == 3 and report["min_ratings"] == 5
    factors = report["factors"]
    assert [f["factor"] for f in factors] == [1, 2, 3]
    shares = [f["variance_share"] for f in factors]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1, abs=1e-3)
    for f in factors:
        assert len(f["high"]) == len(f["low"]) == 5
        high, low = [m["loading"] for m in f["high"]], [m["loading"] for m in f["low"]]
        assert high == sorted(high, reverse=True) and low == sorted(low) and high[-1] >= low[-1]
        for m in f["high"] + f["low"]:
            assert m["title"] == f"item {m['movieId']}" and m["n_ratings"] >= 5
    markdown = (tmp_path / "factors.md").read_text()
    assert markdown.startswith("# What the 3 ALS factors mean")
    assert sum(line.startswith(("| 1 |", "| 2 |", "| 3 |")) for line in markdown.splitlines()) == 3
    assert markdown in "\n".join(lines) + "\n"  # the table is also printed


def test_factor_rotation_keeps_predictions_and_orders_by_variance():
    principal_axes = _load_experiment("factors").principal_axes
    rng = np.random.default_rng(0)
    W = rng.normal(size=(30, 4)) @ np.diag([3.0, 0.2, 1.0, 0.5])
    U = rng.normal(size=(20, 4)) + 0.5
    w_rot, u_rot, s = principal_axes(W, U)
    np.testing.assert_allclose(w_rot @ u_rot.T, W @ U.T, atol=1e-10)  # predictions unchanged
    assert np.all(np.diff(s) < 0)  # ordered by decreasing variance
    np.testing.assert_allclose(np.linalg.svd(W @ U.T, compute_uv=False)[:4], s, rtol=1e-10)
    # orthogonal factors, each carrying s_f on both sides: ||U'_f||^2 = ||W'_f||^2 = s_f
    np.testing.assert_allclose(u_rot.T @ u_rot, np.diag(s), atol=1e-10)
    np.testing.assert_allclose(w_rot.T @ w_rot, np.diag(s), atol=1e-10)
    assert np.all(np.sum(u_rot**3, axis=0) > 0)  # the sign convention
    # ALS's factors are defined only up to an invertible R: (W R, U R^-T) gives the same answer
    R = rng.normal(size=(4, 4)) + 2 * np.eye(4)
    w2, u2, s2 = principal_axes(W @ R, U @ np.linalg.inv(R).T)
    np.testing.assert_allclose(s2, s, rtol=1e-8)
    np.testing.assert_allclose(u2, u_rot, atol=1e-8)
    np.testing.assert_allclose(w2, w_rot, atol=1e-8)
