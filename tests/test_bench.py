"""experiments/bench.py end to end on tiny data (--smoke): every model prints its JSON fields."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.program import RunOptions

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "experiments" / "bench.py"
FIELDS = (
    "model",
    "rank",
    "preset",
    "n_ratings",
    "num_users",
    "num_items",
    "setup_seconds",
    "compile_seconds",
    "seconds_per_iter",
    "seconds_per_iter_all",
    "ratings_per_second",
    "peak_rss_mb",
    "devices",
    "device_count",
    "backend",
    "probmf_version",
)


def _bench(*args, devices_flag=None, check=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    if devices_flag:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_flag}"
    cmd = [sys.executable, str(BENCH), "--smoke", "--iters", "1", "--json", "--out", "", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "model",
    [
        "als",
        "optax",
        pytest.param("gibbs", marks=pytest.mark.slow),
        pytest.param("svi", marks=pytest.mark.slow),
        "autorec-i",
    ],
)
def test_bench_smoke_prints_every_field_on_two_devices(model):
    # LAPACK-free solvers: LAPACK calls on forced host devices can hang XLA-CPU.
    out = _bench("--model", model, "--rank", "4", "--devices", "2", "--solver", "cg", "--linalg", "jax", devices_flag=2)
    row = json.loads(out.stdout.splitlines()[-1])
    for key in FIELDS:
        assert key in row, key
    assert row["model"] == model and row["rank"] == 4 and row["preset"] == "tiny" and row["n_ratings"] == 800
    assert row["seconds_per_iter"] > 0 and len(row["seconds_per_iter_all"]) == 1
    assert row["devices"] == 2 and row["device_count"] == 2 and row["state_devices"] == 2
    if model in ("optax", "svi", "autorec-i"):
        assert row["batch_size"] % 2 == 0


def test_bench_refuses_more_devices_than_it_sees():
    out = _bench("--model", "als", "--devices", "4", check=False)
    assert out.returncode == 2 and "xla_force_host_platform_device_count=4" in out.stderr


def _load_bench():
    spec = importlib.util.spec_from_file_location("probmf_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_autorec_setup_refuses_what_does_not_fit_in_memory(monkeypatch):
    bench = _load_bench()
    train, _ = synthetic_preset("tiny")
    args = argparse.Namespace(rank=500, batch_size=None, seed=0, devices=1)
    monkeypatch.setattr(bench, "_available_memory_bytes", lambda: 100_000)
    with pytest.raises(SystemExit, match="GiB is available"):
        bench.PROGRAMS["autorec-i"](jax.random.PRNGKey(0), train, args, RunOptions())
    # ML-20M's shape (138,493 users wide) at AutoRec's 500 hidden units: about 2.1 GiB of weights
    # and Adam moments, plus the dense batch.
    assert 2.0 * 2**30 < bench.autorec_memory_bytes(138_493, 500, 64, 10_000) < 2.5 * 2**30
