"""Two JAX processes (``jax.distributed`` over a loopback coordinator, gloo CPU collectives)
fit what one process fits.

Each process has one CPU device and ``devices=2`` spans both, so every all-gather of new
rows and every all-reduce goes between the processes. The reference is one process with two
forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, as in
tests/test_sharding.py) that fits with ``devices=1`` and ``devices=2``. The runs use the
no-LAPACK solvers (ALS: CG; Gibbs: linalg="jax"): batched LAPACK calls under several devices
can hang XLA-CPU. Every process has a deadline and all are killed when one fails or the
deadline passes, so a hang fails the test instead of blocking the suite.
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from probmf.cli import main

ROOT = Path(__file__).parents[1]
# The fits below take about a minute on 2 busy cores, mostly compilation; the bound is ~4x that.
TIMEOUT = 240

# argv: coordinator num_processes process_id out device_counts seed; writes out (.npz) with
# every leaf of every fit as "<fitter><path>@<devices>".
FITS = r"""
import sys

import jax
import numpy as np

coordinator, num_processes, process_id, out, device_counts, seed = sys.argv[1:]
if int(num_processes) > 1:
    jax.distributed.initialize(coordinator, int(num_processes), int(process_id))

from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs
from probmf.fitters.optax_mf import fit_optax
from probmf.sharding import to_host

train, _ = synthetic_preset("tiny")
key = jax.random.PRNGKey(int(seed))
fits = {
    "als": lambda d: fit_als(key, train, rank=3, num_sweeps=4, solver="cg", devices=d).params,
    "gibbs": lambda d: fit_gibbs(key, train, rank=3, num_warmup=3, num_samples=4, linalg="jax", devices=d).posterior,
    "optax": lambda d: fit_optax(key, train, rank=3, num_epochs=2, batch_size=256, devices=d).params,
}
arrays = {"process_count": jax.process_count(), "device_count": jax.device_count()}
for d in map(int, device_counts.split(",")):
    for name, fit in fits.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(to_host(fit(d))):
            arrays[f"{name}{jax.tree_util.keystr(path)}@{d}"] = np.asarray(leaf)
np.savez(out, **arrays)
"""

# A sum over a mesh spanning both processes: what the fits need of the CPU collectives.
PSUM = r"""
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

jax.distributed.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
mesh = Mesh(np.asarray(jax.devices()), ("d",))
x = jax.make_array_from_callback((2,), NamedSharding(mesh, P("d")), lambda i: np.arange(2.0)[i])
total = jax.jit(lambda v: v.sum(), out_shardings=NamedSharding(mesh, P()))(x)
assert float(total.addressable_data(0)) == 1.0, total
"""


def _env(device_count: int) -> dict:
    """The environment of a JAX process on the CPU with ``device_count`` host devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={device_count}"])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_together(commands: list[list[str]], env: dict, logs: Path, timeout: float = TIMEOUT) -> list[str]:
    """Start every command at once and wait for all; returns the output (stdout and stderr)
    of each. When one fails or the deadline passes, every one still running is killed and a
    RuntimeError gives the end of each output."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"{i}.log" for i in range(len(commands))]
    files = [path.open("w") for path in paths]
    procs = [
        subprocess.Popen(c, env=env, stdout=f, stderr=subprocess.STDOUT) for c, f in zip(commands, files, strict=True)
    ]
    deadline, why = time.monotonic() + timeout, None
    try:
        while why is None and any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                why = "a process failed"  # the others would wait for it in a collective
            elif time.monotonic() > deadline:
                why = f"timed out after {timeout} s"
            else:
                time.sleep(0.2)
        if why is None and any(p.returncode for p in procs):
            why = "a process failed"
    finally:
        for p, f in zip(procs, files, strict=True):
            if p.poll() is None:
                p.kill()
            p.wait()
            f.close()
    outputs = [path.read_text() for path in paths]
    if why is not None:
        tails = "\n".join(
            f"--- process {i} (exit {p.returncode}):\n{out[-3000:]}"
            for i, (p, out) in enumerate(zip(procs, outputs, strict=True))
        )
        raise RuntimeError(f"{why}\n{tails}")
    return outputs


def _two_processes(command: Callable[[str, int], list[str]], logs: Path) -> list[str]:
    """``command(coordinator, process_id)`` as processes 0 and 1 of a loopback cluster, each
    with one CPU device; their outputs (`_run_together`)."""
    coordinator = f"127.0.0.1:{_free_port()}"
    return _run_together([command(coordinator, i) for i in range(2)], _env(1), logs)


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """Skip where two processes cannot sum over a shared mesh with gloo CPU collectives."""
    try:
        _two_processes(lambda c, i: [sys.executable, "-c", PSUM, c, "2", str(i)], tmp_path_factory.mktemp("psum"))
    except RuntimeError as err:
        pytest.skip(f"gloo CPU collectives across two processes are unavailable here: {err}")


def _max_abs_diff(a: dict, b: dict, fitter: str, devices: int) -> float:
    keys = sorted(k for k in a if k.startswith(fitter) and k.endswith(f"@{devices}"))
    assert keys and keys == sorted(k for k in b if k.startswith(fitter) and k.endswith(f"@{devices}"))
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - b[k]), initial=0.0)) for k in keys)


@pytest.mark.slow
def test_two_processes_fit_what_one_process_fits(gloo, tmp_path):
    procs = [tmp_path / f"p{i}.npz" for i in range(2)]
    _two_processes(
        lambda c, i: [sys.executable, "-c", FITS, c, "2", str(i), str(procs[i]), "2", "0"], tmp_path / "logs2"
    )
    one = tmp_path / "one.npz"
    _run_together([[sys.executable, "-c", FITS, "-", "1", "0", str(one), "1,2", "0"]], _env(2), tmp_path / "logs1")

    p0, p1, ref = (dict(np.load(f)) for f in (*procs, one))
    assert (int(p0["process_count"]), int(p0["device_count"])) == (2, 2)
    assert (int(ref["process_count"]), int(ref["device_count"])) == (1, 2)
    p0 = {k: v for k, v in p0.items() if "@" in k}
    for k, v in p0.items():  # every process holds the whole result
        np.testing.assert_array_equal(v, p1[k], err_msg=k)
    for fitter in ("als", "gibbs", "optax"):
        # Two processes run the program one process runs on two devices, rows split alike; the
        # only sums across devices have two terms, whose float sum does not depend on order.
        assert _max_abs_diff(p0, ref, fitter, 2) == 0.0, fitter
    one_device = {k.replace("@1", "@2"): v for k, v in ref.items() if k.endswith("@1")}
    # Against one device: ALS's per-row CG solves see the same rows, so they agree bit for bit.
    # Gibbs's draws read sums over all rows (the noise precision's SSE, the hyperpriors' moments)
    # that are all-reduced in another order: measured 9.8e-7 after 7 sweeps. optax's gradient is
    # a sum over each batch all-reduced from its two halves: measured 3.0e-8 after 2 epochs.
    # The bounds are ~10x those.
    assert _max_abs_diff(p0, one_device, "als", 2) == 0.0
    assert _max_abs_diff(p0, one_device, "gibbs", 2) < 1e-5
    assert _max_abs_diff(p0, one_device, "optax", 2) < 3e-7


@pytest.mark.slow
def test_cli_fit_across_two_processes_saves_the_one_process_model(gloo, tmp_path):
    args = ["fit", "--data", "synthetic:tiny", "--model", "als", "--rank", "3", "--num-sweeps", "3", "--solver", "cg"]
    out = tmp_path / "two"
    logs = _two_processes(
        lambda c, i: [sys.executable, "-m", "probmf.cli", "--distributed", "--coordinator", c, "--num-processes", "2",
                      "--process-id", str(i), *args, "--devices", "2", "--out", str(out), "--json"],
        tmp_path / "logs",
    )  # fmt: skip
    assert '"saved"' in logs[0] and '"saved"' not in logs[1]  # process 0 alone writes the model
    assert main([*args, "--devices", "1", "--out", str(tmp_path / "one"), "--json"]) == 0
    two, one = np.load(out / "arrays.npz"), np.load(tmp_path / "one" / "arrays.npz")
    assert sorted(two) == sorted(one)
    for k in one:
        np.testing.assert_array_equal(two[k], one[k], err_msg=k)


# argv: coordinator num_processes process_id folder out; fits ALS and Gibbs on the partitioned
# folder, logging every range of rows ALS reads in each process, and writes out (.npz).
PARTITIONED = r"""
import json
import sys

import jax
import numpy as np

coordinator, num_processes, process_id, folder, out = sys.argv[1:]
jax.distributed.initialize(coordinator, int(num_processes), int(process_id))

import probmf.data.partitioned as partitioned
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs
from probmf.sharding import to_host

reads = []
load_rows = partitioned.load_rows


def logged(part, side, lo, hi):
    rows = load_rows(part, side, lo, hi)
    reads.append({"side": side, "lo": lo, "hi": hi, "n": int(rows.rows.size), "files": list(rows.files)})
    return rows


partitioned.load_rows = logged
part = partitioned.open_partitioned(folder)
result = fit_als(jax.random.PRNGKey(0), part, rank=3, num_sweeps=4, solver="cg", devices=2)
als_reads = list(reads)
gibbs = fit_gibbs(jax.random.PRNGKey(0), part, rank=3, num_warmup=3, num_samples=4, linalg="jax", devices=2)
arrays = {}
for name, tree in (("als", result.params), ("gibbs", gibbs.posterior)):
    for p, v in jax.tree_util.tree_leaves_with_path(to_host(tree)):
        arrays[f"{name}{jax.tree_util.keystr(p)}"] = np.asarray(v)
np.savez(out, trace=result.trace, reads=json.dumps(als_reads), **arrays)
"""


@pytest.mark.slow
def test_two_processes_fit_a_partitioned_folder_reading_only_their_rows(gloo, tmp_path):
    import jax

    from probmf.data.partitioned import partition
    from probmf.data.synthetic import synthetic_preset
    from probmf.fitters.als import fit_als
    from probmf.fitters.gibbs import fit_gibbs

    train, _ = synthetic_preset("tiny")
    part = partition(train, tmp_path / "parts", 2)
    outs = [tmp_path / f"p{i}.npz" for i in range(2)]
    _two_processes(
        lambda c, i: [sys.executable, "-c", PARTITIONED, c, "2", str(i), str(part.path), str(outs[i])],
        tmp_path / "logs",
    )
    one = fit_als(jax.random.PRNGKey(0), train, rank=3, num_sweeps=4, solver="cg", devices=1)
    gibbs = fit_gibbs(jax.random.PRNGKey(0), train, rank=3, num_warmup=3, num_samples=4, linalg="jax", devices=1)
    reference = {}
    for name, tree in (("als", one.params), ("gibbs", gibbs.posterior)):
        for p, v in jax.tree_util.tree_leaves_with_path(tree):
            reference[f"{name}{jax.tree_util.keystr(p)}"] = np.asarray(v)
    for i, out in enumerate(outs):
        got = dict(np.load(out))
        assert sorted(got) == sorted([*reference, "trace", "reads"])
        for k, v in reference.items():  # every process holds the whole result, the one-process fit's
            if k.startswith("als"):  # per-row CG solves of the same rows: bit for bit
                np.testing.assert_array_equal(got[k], v, err_msg=f"process {i}: {k}")
            else:  # sums over all rows all-reduced in another order: within the bound of the full-data test
                assert float(np.max(np.abs(got[k].astype(np.float64) - v), initial=0.0)) < 1e-5, k
        np.testing.assert_array_equal(got["trace"], one.trace)
        reads = json.loads(str(got["reads"]))
        assert sorted(r["side"] for r in reads) == ["item", "user"]
        for r in reads:
            n = part.num_rows(r["side"])
            half = -(-n // 2)
            # Process i solves rows [i half, (i + 1) half) of each side, and reads just those:
            # its own file, and as many ratings as the counts give its rows.
            assert (r["lo"], r["hi"]) == (i * half, min((i + 1) * half, n))
            assert r["files"] == [str(tmp_path / "parts" / f"by_{r['side']}" / f"part-{i:05d}.parquet")]
            assert r["n"] == int(part.counts(r["side"])[r["lo"] : r["hi"]].sum()) < len(train)


@pytest.mark.slow
def test_multihost_experiment_smoke(gloo, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import multihost
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    out = tmp_path / "m.jsonl"
    assert multihost.main(["--smoke", "--folder", str(tmp_path / "parts"), "--out", str(out), "--json"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mode"], r["processes"]) for r in rows] == [("folder", 1), ("memory", 1), ("folder", 2)]
    one, _, two = rows
    assert one["equal_to_one_process"] and two["equal_to_one_process"]
    assert one["ratings_read"] == [2 * one["n_ratings"]]  # both sides, all rows
    assert sum(two["ratings_read"]) == 2 * two["n_ratings"] and max(two["ratings_read"]) < 2 * two["n_ratings"]
    assert all(len(r["peak_rss_mb"]) == r["processes"] and min(r["peak_rss_mb"]) > 0 for r in rows)


# argv: coordinator num_processes process_id folder out die; fits ALS, then Gibbs, checkpointing
# every sweep in folder, and writes out (.npz) with every leaf and the step each fit resumed
# from. die "yes": process 0 exits right after saving Gibbs's step 2; process 1 takes part in that
# save's gather, waits for process 0's file, then exits before writing its own (a kill that
# catches the processes apart).
RESUME = r"""
import os
import sys
import time

import jax
import numpy as np

coordinator, num_processes, process_id, folder, out, die = sys.argv[1:]
jax.distributed.initialize(coordinator, int(num_processes), int(process_id))

import probmf.checkpoint as checkpoint
from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs
from probmf.sharding import to_host

save, restore, resumed = checkpoint.save, checkpoint.restore, []


def dying_save(ckpt, step, state):
    if die == "yes" and ckpt.path.name.startswith("gibbs") and step == 2:
        if jax.process_index() == 1:
            to_host(state)
            other = ckpt.path.with_name(ckpt.path.name.replace("process1", "process0"))
            for _ in range(600):  # until process 0's file of step 2 is in place: the kill comes after it
                if other.exists():
                    with np.load(other) as f:
                        if int(f["step"]) == 2:
                            break
                time.sleep(0.1)
            os._exit(3)
        save(ckpt, step, state)
        os._exit(3)
    save(ckpt, step, state)


def logged_restore(ckpt, state):
    step, state = restore(ckpt, state)
    resumed.append(step)
    return step, state


checkpoint.save, checkpoint.restore = dying_save, logged_restore
train, _ = synthetic_preset("tiny")
key = jax.random.PRNGKey(0)
run = {"devices": 2, "checkpoint": folder, "checkpoint_every": 1}
als = fit_als(key, train, rank=3, num_sweeps=3, solver="cg", **run)
gibbs = fit_gibbs(key, train, rank=3, num_warmup=2, num_samples=3, linalg="jax", **run)
arrays = {"resumed": np.array(resumed)}
for name, tree in (("als", als.params), ("gibbs", gibbs.posterior)):
    for p, v in jax.tree_util.tree_leaves_with_path(to_host(tree)):
        arrays[f"{name}{jax.tree_util.keystr(p)}"] = np.asarray(v)
np.savez(out, als_trace=als.trace, **arrays)
"""


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_bit_for_bit(gloo, tmp_path):
    """Each process saves its own file; killed with the processes a step apart, the run
    resumes from the step both hold and ends where the uninterrupted run ends, bit for bit; a
    process missing its files is refused by name."""

    def run(folder: Path, tag: str, die: str = "no") -> list[dict]:
        outs = [tmp_path / f"{tag}{i}.npz" for i in range(2)]
        _two_processes(
            lambda c, i: [sys.executable, "-c", RESUME, c, "2", str(i), str(folder), str(outs[i]), die],
            tmp_path / f"logs-{tag}",
        )
        return [dict(np.load(out)) for out in outs]

    whole = run(tmp_path / "whole", "whole")
    assert [list(w["resumed"]) for w in whole] == [[0, 0]] * 2
    folder = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="a process failed"):
        run(folder, "cut", die="yes")
    names = sorted(p.name for p in folder.iterdir())
    assert sum(n.startswith("als") for n in names) == 4  # the finished ALS run: both processes, two files each
    gibbs = sorted(n.split(".", 1)[1] for n in names if n.startswith("gibbs"))
    # Process 0 wrote step 2 and kept step 1; process 1 holds step 1 alone.
    assert gibbs == ["process0-of-2.npz", "process0-of-2.previous.npz", "process1-of-2.npz"]
    resumed = run(folder, "resumed")
    for i, (got, want) in enumerate(zip(resumed, whole, strict=True)):
        # ALS was finished: read back, not refitted; Gibbs resumed after sweep 1, which both hold.
        assert list(got["resumed"]) == [3, 1], i
        assert sorted(got) == sorted(want)
        for k in want:
            if k != "resumed":
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"process {i}: {k}")

    for path in folder.glob("gibbs-*.process1-of-2*"):
        path.unlink()
    with pytest.raises(RuntimeError, match="none in common"):
        run(folder, "orphan")
