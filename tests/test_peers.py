"""experiments/peers.py: probmf beside LensKit and myFM on bench.py's data (--smoke), with the
peers skipped where they are not installed (CI does not install them); and
experiments/gpu_check.sh, the GPU machine's script, in its CPU form (--dry-run)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "experiments" / "peers.py"
BENCH_FIELDS = ("model", "rank", "preset", "n_ratings", "seconds_per_iter", "seconds_per_iter_all", "compile_seconds")


def _load_peers():
    spec = importlib.util.spec_from_file_location("experiments_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _peers(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "peers.jsonl"
    cmd = [sys.executable, str(PEERS), "--smoke", "--out", str(out_file), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines(), [json.loads(line) for line in out_file.read_text().splitlines()]


def _check_rows(rows, lines, *, ranks, fitters, iters):
    by = {(r["system"], r["algorithm"], r.get("rank")): r for r in rows}
    for model in fitters:
        peer = {"als": "lenskit", "gibbs": "myfm"}[model]
        for rank in ranks[model]:
            mine = by[("probmf", model, rank)]
            for key in BENCH_FIELDS:  # bench.py's own row, on the same tiny data
                assert key in mine, key
            assert mine["model"] == model and mine["preset"] == "tiny" and mine["n_ratings"] == 800
            assert len(mine["seconds_per_iter_all"]) == iters and mine["seconds_per_iter"] > 0
            if _installed(peer):
                theirs = by[(peer, model, rank)]
                assert theirs["n_ratings"] == 800 and len(theirs["seconds_per_iter_all"]) == iters
                assert theirs["ratio_to_probmf"] == round(theirs["seconds_per_iter"] / mine["seconds_per_iter"], 3)
                assert theirs["version"] and "skipped" not in theirs
            else:
                assert by[(peer, model, None)]["skipped"].startswith(f"{peer} is not installed")
                assert f"skipping {peer}: {peer} is not installed (pip install -e '.[peers]')" in lines
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| system | " + " | ".join(f"rank {k}, s / iteration" for k in ranks["als"]) + " |"
    assert sum(line.startswith("| probmf ") for line in table) == len(fitters)
    return by, table


@pytest.mark.slow
def test_peers_smoke_als_beside_lenskit_prints_a_table_and_json(tmp_path):
    lines, rows = _peers(tmp_path, "--rank", "2", "--iters", "1", "--fitters", "als", "--peers", "lenskit", "--json")
    by, table = _check_rows(rows, lines, ranks={"als": [2]}, fitters=["als"], iters=1)
    assert [json.loads(line) for line in lines if line.startswith("{")] == rows  # --json prints the rows saved
    row2 = next(line for line in table if line.startswith("| probmf "))
    assert row2.endswith(f"| {by[('probmf', 'als', 2)]['seconds_per_iter']:.3g} |")


@pytest.mark.slow
def test_peers_smoke_every_fitter_and_peer(tmp_path):
    lines, rows = _peers(tmp_path, "--rank", "2", "--rank", "3", "--gibbs-ranks", "2", "--iters", "2")
    _check_rows(rows, lines, ranks={"als": [2, 3], "gibbs": [2]}, fitters=["als", "gibbs"], iters=2)
    assert not any(r["algorithm"] == "gibbs" and r.get("rank") == 3 for r in rows)  # Gibbs only at --gibbs-ranks


def test_peers_skips_a_missing_peer_and_keeps_the_rest(monkeypatch, capsys, tmp_path):
    peers = _load_peers()
    monkeypatch.setattr(peers, "_pin_threads", lambda threads: None)
    monkeypatch.setattr(peers, "missing_peer", lambda name: f"{name} is not installed (pip install -e '.[peers]')")

    def fake(model, rank, args):
        return {"system": "probmf", "algorithm": model, "version": "0", "rank": rank, "seconds_per_iter": 0.5}

    monkeypatch.setattr(peers, "probmf_row", fake)
    assert peers.main(["--smoke", "--rank", "4", "--gibbs-ranks", "4", "--out", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "skipping lenskit: lenskit is not installed (pip install -e '.[peers]')" in out
    assert "skipping myfm: myfm is not installed (pip install -e '.[peers]')" in out
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(r["system"], r.get("skipped") is not None) for r in rows] == [
        ("lenskit", True), ("myfm", True), ("probmf", False), ("probmf", False)
    ]  # fmt: skip
    assert [line for line in out if line.startswith("| ")] == [
        "| system | rank 4, s / iteration |", "| probmf 0 `als` | 0.5 |", "| probmf 0 `gibbs` | 0.5 |"
    ]  # fmt: skip


def test_peers_table_puts_each_peer_beside_probmf_with_its_ratio():
    peers = _load_peers()

    def row(system, algorithm, version, rank, seconds, **extra):
        return {"system": system, "algorithm": algorithm, "version": version, "rank": rank,
                "seconds_per_iter": seconds, **extra}  # fmt: skip

    rows = [
        row("probmf", "als", "1", 10, 1.25, solver="cholesky"),
        row("lenskit", "als", "2", 10, 1.0, ratio_to_probmf=0.8),
        row("probmf", "als", "1", 64, 14.0, solver="cg"),
        row("lenskit", "als", "2", 64, 7.0, ratio_to_probmf=0.5),
        row("myfm", "gibbs", "3", 10, 18.0, ratio_to_probmf=12.0),
        row("probmf", "gibbs", "1", 10, 1.5),
    ]
    assert peers.table(rows, [10, 64]).splitlines() == [
        "| system | rank 10, s / iteration | rank 64, s / iteration |",
        "|---|---|---|",
        "| probmf 1 `als` (cholesky at 10, cg at 64) | 1.25 | 14 |",
        "| LensKit 2 `BiasedMFScorer` (Cholesky) | 1 (0.80x probmf) | 7 (0.50x probmf) |",
        "| probmf 1 `gibbs` | 1.5 | - |",
        "| myFM 3 Gibbs (Bayesian MF, 1 thread) | 18 (12.00x probmf) | - |",
    ]


def test_lenskit_ridge_matches_ours_on_the_median_row():
    """LensKit's ridge is reg n_i, ours lam n_i^alpha: equal at the median count, and on
    either side of it the ordering of the two ridges follows alpha < 1."""
    peers = _load_peers()
    counts = np.array([0, 1, 4, 9, 16, 25, 400])  # rated rows' median: 12.5
    reg = peers.matched_ridge(counts, 1.5, 0.5)
    m = 12.5
    assert reg * m == pytest.approx(1.5 * m**0.5)
    assert reg * 400 > 1.5 * 400**0.5 and reg * 4 < 1.5 * 4**0.5
    assert peers.matched_ridge(counts, 2.0, 1.0) == pytest.approx(2.0)  # ALS-WR: the same reg


def test_peers_refuses_bad_flags(capsys):
    peers = _load_peers()
    refusals = (
        (["--peers", "spark"], "unknown name(s) spark"),
        (["--rank", "0"], "ranks must be"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--rank", "ten"], "expected integers"),
    )
    for argv, message in refusals:
        with pytest.raises(SystemExit) as err:
            peers.main(argv)
        assert err.value.code == 2 and message in capsys.readouterr().err


GPU_CHECK = ROOT / "experiments" / "gpu_check.sh"


def _gpu_check(out_dir, *args):
    env = {**os.environ, "OUT": str(out_dir), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_files_and_installs_nothing(tmp_path):
    import jax

    out = _gpu_check(tmp_path, "--dry-run", "--bench", "")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commands.log", "devices.txt", "summary.txt", "tests.log"]
    assert (tmp_path / "summary.txt").read_text().splitlines() == [
        "pip jax[cuda12]: dry-run", "devices: ok", "pip probmf[test]: dry-run", "tests (collected): ok",
        f"gpu_check: done; results in {tmp_path}",
    ]  # fmt: skip
    commands = (tmp_path / "commands.log").read_text().splitlines()
    assert commands[0].endswith(f"-m pip install jax\\[cuda12\\]=={jax.__version__}  # dry-run: not run")
    assert commands[2].endswith("-m pip install .\\[test\\]  # dry-run: not run")
    assert commands[3].endswith("tests/test_fitters_contract.py") and "--collect-only" in commands[3]
    assert (tmp_path / "devices.txt").read_text().startswith(f"jax {jax.__version__} backend cpu")
    assert "test_fitter_contract[nuts]" in (tmp_path / "tests.log").read_text()  # slow fitters too
    bad = _gpu_check(tmp_path, "--dryrun")
    assert bad.returncode == 2 and "unknown argument --dryrun" in bad.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_smokes_every_bench_run(tmp_path):
    out = _gpu_check(tmp_path, "--dry-run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    runs = [("als", 10), ("als", 64), ("gibbs", 10), ("optax", 32), ("svi", 10)]
    assert [(r["model"], r["rank"]) for r in rows] == runs and {r["preset"] for r in rows} == {"tiny"}
    commands = (tmp_path / "commands.log").read_text()
    for model, rank in runs:
        assert f"bench.py --preset ml20m --model {model} --rank {rank} --iters 3 --json --out" in commands
        assert (tmp_path / f"bench-{model}-{rank}.log").stat().st_size > 0
