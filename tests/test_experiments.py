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


@pytest.mark.slow
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
    if importlib.util.find_spec("arviz") is not None:
        posterior = {r["method"] for r in rows if r["num_samples"] > 1}
        assert {"gibbs"} <= posterior
        for r in rows:
            assert np.isfinite(r["elpd"]) and r["elpd_per_rating"] == pytest.approx(r["elpd"] / r["n_test"])
            if r["method"] in posterior:
                # PSIS-LOO of the training ratings: below their in-sample fit by p_loo > 0, per rating
                assert r["p_loo"] > 0 and 0 <= r["loo_bad_k"] <= 1, r["method"]
                assert r["elpd_loo_per_rating"] == pytest.approx(r["elpd_loo"] / r["n_train"])
                assert r["loo_rank"] in range(len(posterior)) and 0 <= r["loo_weight"] <= 1
            else:  # a point fit: one draw, nothing to reweight
                assert r["elpd_loo"] is None and r["loo_rank"] is None, r["method"]
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


def _triples(ratings) -> list:
    return sorted(zip(ratings.users.tolist(), ratings.items.tolist(), ratings.values.tolist(), strict=True))


def _recording(monkeypatch, tune, name: str) -> list:
    """Record the positional arguments (and result) of every call of tune.<name>."""
    calls, real = [], getattr(tune, name)

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(tune, name, record)
    return calls


def test_tune_smoke_fold_u1_scores_a_cut_grid_by_inner_cv(tmp_path, capsys):
    out_file = tmp_path / "tune.jsonl"
    assert _load_experiment("tune").main(["--smoke", "--fold", "u1", "--out", str(out_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("data: synthetic:tiny, folds u1: 2 configurations chosen by 2-fold CV")
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["model"] == "als" and r["kind"] == "inner" and r["fold"] == "u1" and r["inner_folds"] == 2
        assert r["rank"] == 2 and r["num_sweeps"] == 3
        assert len(r["val_rmse_folds"]) == 2 and 0 < r["val_rmse"] < 2
    best = json.loads(next(line for line in lines if line.startswith("best: ")).removeprefix("best: "))
    assert best == min(rows, key=lambda r: r["val_rmse"])
    assert lines[-1] == f"appended 2 rows to {out_file}"


def test_tune_fold_selection_reads_only_that_folds_base(tmp_path, monkeypatch):
    from probmf.evaluate import folds

    tune = _load_experiment("tune")
    splits = _recording(monkeypatch, tune, "inner_splits")
    fits = _recording(monkeypatch, tune, "evaluate_fold")
    tune.main(["--smoke", "--fold", "u3", "--inner-folds", "3", "--out", str(tmp_path / "t.jsonl")])
    _, _, base, test = next(f for f in folds("synthetic:tiny", "all") if f[1] == "u3")
    [((given, n), parts)] = splits
    assert _triples(given) == _triples(base) and n == 3
    validation = [v for _, v in parts]  # disjoint parts that together are the base file
    assert sorted(t for v in validation for t in _triples(v)) == _triples(base)
    for train, v in parts:
        assert sorted(_triples(train) + _triples(v)) == _triples(base)
    held_out = set(_triples(test))
    assert len(fits) == 2 * 3
    for (_, train, scored), _ in fits:
        assert not held_out & set(_triples(train) + _triples(scored))
    ((train, v),) = tune.inner_splits(base, 1, seed=3)  # --inner-folds 1: one 80/20 split
    assert len(v) == round(0.2 * len(base)) and sorted(_triples(train) + _triples(v)) == _triples(base)


def test_tune_smoke_nested_selects_on_each_base_and_scores_on_its_test(tmp_path, capsys, monkeypatch):
    from probmf.evaluate import folds

    tune = _load_experiment("tune")
    fits = _recording(monkeypatch, tune, "evaluate_fold")
    out_file = tmp_path / "tune.jsonl"
    assert tune.main(["--smoke", "--nested", "--out", str(out_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("data: synthetic:tiny, folds u1, u2: ")
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["kind"], r.get("fold")) for r in rows] == [
        (k, f) for f in ("u1", "u2") for k in ("inner", "inner", "nested", "shipped")
    ] + [("summary", None)]
    summary = rows[-1]
    assert lines[-2] == "nested: " + json.dumps(summary)
    for fold in ("u1", "u2"):
        inner = [r for r in rows if r.get("fold") == fold and r["kind"] == "inner"]
        nested = next(r for r in rows if r.get("fold") == fold and r["kind"] == "nested")
        best = min(inner, key=lambda r: r["val_rmse"])
        assert summary["configs"][fold] == nested["config"] and all(best[k] == v for k, v in nested["config"].items())
        assert summary["nested"]["rmse_folds"][fold] == round(nested["rmse"], 4)
    for kind in ("nested", "shipped"):
        test_rows = [r for r in rows if r["kind"] == kind]
        for m in ("rmse", "mae", "coverage_50", "coverage_90", "nll"):
            assert summary[kind][m] == pytest.approx(np.mean([r[m] for r in test_rows]), abs=1e-5)
    assert summary["shipped"]["config"] == {"num_sweeps": 3}
    diff = summary["shipped_minus_nested"]
    assert diff["rmse"] == pytest.approx(summary["shipped"]["rmse"] - summary["nested"]["rmse"], abs=1e-5)
    # Only the last fits of each fold (chosen, shipped) see its test file, and they are fitted on all of its base.
    data = {split: (train, test) for _, split, train, test in folds("synthetic:tiny", "all")}
    assert len(fits) == 2 * (2 * 2 + 2)
    for k, fold in enumerate(("u1", "u2")):
        base, test = (set(_triples(r)) for r in data[fold])
        for j, ((_, train, scored), _) in enumerate(fits[6 * k : 6 * k + 6]):
            seen = set(_triples(train)) | set(_triples(scored))
            if j < 4:
                assert seen <= base
            else:
                assert set(_triples(train)) == base and set(_triples(scored)) == test


def test_tune_grid_rows_by_index_and_where():
    tune = _load_experiment("tune")
    implicit = tune.grid("gibbs", None, {"implicit": True}, smoke=False)
    plain = tune.grid("gibbs", None, {"implicit": False}, smoke=False)  # a missing field is the default
    assert len(implicit) == len(plain) == 3 and all(r["implicit"] for r in implicit)
    assert all("implicit" not in r for r in plain)
    assert tune.grid("gibbs", [3, 0], {"implicit": True}, smoke=False) == [tune.GRIDS["gibbs"][3]]
    assert tune.parse_where(["implicit=true", "likelihood=rounded", "lam=1.5"]) == {
        "implicit": True, "likelihood": "rounded", "lam": 1.5
    }  # fmt: skip
    assert len(tune.GRIDS["autorec-i"]) <= 4 and len(tune.GRIDS["optax"]) <= 12


@pytest.mark.slow
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


@pytest.mark.slow
def test_ml100k_features_smoke_writes_a_row_per_variant_and_fold(tmp_path):
    """The ablation runs each variant through `evaluate_fold` with its ingredients as options
    (the attribute tables named in the rows), and its table's mean is the rows' mean."""
    out_file = tmp_path / "ablation.jsonl"
    variants = ("implicit", "both", "rounded")
    lines = _run("ml100k_features.py", "--smoke", "--splits", "u1", "u2", "--variants", *variants,
                 "--out", str(out_file)).stdout.splitlines()  # fmt: skip
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["variant"], r["split"]) for r in rows] == [(v, s) for v in variants for s in ("u1", "u2")]
    both = [r for r in rows if r["variant"] == "both"]
    assert both[0]["options"]["user_features"].startswith("smoke users") and both[0]["options"]["implicit"]
    assert rows[0]["options"]["user_features"] is None and rows[-1]["options"]["likelihood"] == "rounded"
    table = next(line for line in lines if line.startswith("| both |"))
    assert f"| {(both[0]['rmse'] + both[1]['rmse']) / 2:.4f} |" in table
    # --inner scores on a split of the base file alone: one column, named for it.
    inner = _run("ml100k_features.py", "--smoke", "--inner", "u1", "--variants", "implicit").stdout
    assert "| variant | u1.base 80/20 | mean |" in inner


@pytest.mark.slow
def test_attribute_effects_smoke_reports_each_column_from_the_draws(tmp_path):
    """Every attribute column gets its average effect inside its 90% interval and a positive
    spread, user columns their movies; the Markdown and JSON agree."""
    _run("attribute_effects.py", "--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "effects.json").read_text())
    assert {r["column"] for r in report["items"]} == {"kind=k0", "kind=k1", "kind=k2"}
    for r in report["items"] + report["users"]:
        assert r["lo"] <= r["mean"] <= r["hi"] and r["spread"] > 0, r
    assert all(len(r["raises_most"]) == 3 for r in report["users"])
    md = (tmp_path / "effects.md").read_text()
    assert all(f"| {r['column']} | {r['mean']:+.3f} |" in md for r in report["items"])


def test_attribute_effects_are_rotation_invariant_per_draw():
    """e = v . a + bias is the same after rotating a draw's factors and attribute vectors
    (V -> V R^-T, a -> a R): the reported effects are identified."""
    spec = importlib.util.spec_from_file_location("attribute_effects", ROOT / "experiments" / "attribute_effects.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    S, R, G, k = 3, 7, 4, 2
    V, A = rng.normal(size=(S, R, k)), rng.normal(size=(S, G, k + 1))
    rot = rng.normal(size=(S, k, k)) + 2 * np.eye(k)
    A2 = A.copy()
    A2[:, :, :k] = A[:, :, :k] @ rot
    V2 = V @ np.linalg.inv(rot).transpose(0, 2, 1)
    names, groups = [f"c{g}" for g in range(G)], ["c"] * G
    one, two = mod.effects(V, A, names, groups), mod.effects(V2, A2, names, groups)
    for a, b in zip(one, two, strict=True):
        assert a["mean"] == pytest.approx(b["mean"]) and a["spread"] == pytest.approx(b["spread"])
    # The average effect of one draw is mean_r (v_r . a_g) + bias_g.
    assert one[1]["mean"] == pytest.approx(float(np.mean(np.einsum("srk,sk->sr", V, A[:, 1, :k]) + A[:, 1, k:])))


def test_cg_iterations_smoke_reports_both_preconditioners_per_side_and_c(tmp_path):
    """A row per side and c, each solve converged (within the iteration cap) with both
    preconditioners, the rows appended to --out as printed."""
    out_file = tmp_path / "cg.jsonl"
    lines = _run("cg_iterations.py", "--smoke", "--c", "0.5", "2", "--out", str(out_file)).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["side"], r["c"]) for r in rows] == [("users", 0.5), ("users", 2.0), ("items", 0.5), ("items", 2.0)]
    from probmf.fitters.gibbs.implicit import CG_MAX_ITERATIONS

    for r in rows:
        assert 0 < r["iterations_deflated"] < CG_MAX_ITERATIONS and 0 < r["iterations_jacobi"] < CG_MAX_ITERATIONS
        assert len(r["ritz"]) == 2 and r["num_cols"] == (40 if r["side"] == "users" else 60)
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == rows
