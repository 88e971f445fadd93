"""Experiment scripts run end to end with --smoke (tiny synthetic data)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bayes_mf_smoke_writes_its_table_plots_and_report(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bayes_mf.py"), "--smoke", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.splitlines()[0].startswith("data: synthetic:tiny")
    for name in ("results.csv", "results.jsonl", "report.md", "rmse_vs_rank.png", "calibration.png", "sd_vs_error.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in rows}
    assert {"mle-als", "mle-optax", "map-als", "map-optax", "gibbs"} <= methods
    assert {r["rank"] for r in rows} == {1, 2}
    for r in rows:
        assert r["rmse"] > 0 and r["train_rmse"] > 0 and 0 <= r["coverage_90"] <= 1
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
