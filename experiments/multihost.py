"""Peak memory per process of ALS on a partitioned folder, with 1 process and with several.

    python experiments/multihost.py --preset ml20m --rank 10 --sweeps 2 --json

Writes the synthetic preset once to a partitioned folder (``probmf.data.partitioned``, one
block per process of the largest run; kept in ``--folder`` for later runs), then fits ALS on
it in one process with the ratings in memory (``memory``: every rating read, as a fit
without a folder does), in one process from the folder, and in each ``--processes`` count of
JAX processes on this machine (``jax.distributed`` over a loopback coordinator, gloo CPU
collectives, one CPU device each, ``devices`` = the number of processes), each reading only
the ratings of the rows it solves. Every process reports its peak RSS (getrusage), the
ratings it read, its wall time; the run checks that every fit's parameters equal the
one-process folder fit's bit for bit. Prints one JSON line per run (``--json``) or a table and
appends the JSON to ``--out``.
Fields: mode (memory, folder), processes, preset, n_ratings, rank, sweeps, solver,
peak_rss_mb (per process), peak_rss_mb_max, rss_ratio (max per-process peak / the
one-process folder run's), ratings_read (per process, both sides: 2 n in all), fit_seconds (per process:
open, encode, sweeps), equal_to_one_process (params bit for bit those of the one-process
folder run; null for memory), objective (after the last sweep), probmf_version. ``--smoke``: tiny data, for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A worker: argv coordinator num_processes process_id mode folder rank sweeps solver.
# Imports JAX only here, so the driver's own memory never counts.
WORKER = r"""
import hashlib, json, resource, sys, time
import jax
import numpy as np

coordinator, num_processes, process_id, mode, folder, rank, sweeps, solver = sys.argv[1:]
num_processes = int(num_processes)
if num_processes > 1:
    jax.distributed.initialize(coordinator, num_processes, int(process_id))

import probmf.data.partitioned as partitioned
from probmf.fitters.als import fit_als
from probmf.sharding import to_host

read = [0]
load_rows = partitioned.load_rows

def counted(part, side, lo, hi):
    rows = load_rows(part, side, lo, hi)
    read[0] += int(rows.rows.size)
    return rows

partitioned.load_rows = counted
t0 = time.perf_counter()
part = partitioned.open_partitioned(folder)
train = partitioned.read_all(part) if mode == "memory" else part
result = fit_als(jax.random.PRNGKey(0), train, rank=int(rank), num_sweeps=int(sweeps), solver=solver,
                 devices=num_processes)
params = jax.block_until_ready(to_host(result.params))
seconds = time.perf_counter() - t0
digest = hashlib.sha256()
for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({"process": jax.process_index(), "peak_rss_mb": peak,
                  "ratings_read": read[0], "fit_seconds": seconds, "params_sha256": digest.hexdigest(),
                  "objective": float(result.trace[-1])}))
"""


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=1"])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(mode: str, processes: int, folder: Path, args, timeout: float) -> list[dict]:
    """Start ``processes`` workers at once; their JSON reports, by process index. When one
    fails or the deadline passes, all are killed and a RuntimeError gives their output."""
    coordinator = f"127.0.0.1:{_free_port()}"
    argv = [str(a) for a in (mode, folder, args.rank, args.sweeps, args.solver)]
    logs = [tempfile.TemporaryFile("w+") for _ in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, coordinator, str(processes), str(i), *argv],
                              env=_env(), stdout=log, stderr=subprocess.STDOUT)
             for i, log in enumerate(logs)]  # fmt: skip
    deadline, why = time.monotonic() + timeout, None
    try:
        while why is None and any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                why = "a process failed"
            elif time.monotonic() > deadline:
                why = f"timed out after {timeout} s"
            else:
                time.sleep(0.2)
        if why is None and any(p.returncode for p in procs):
            why = "a process failed"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if why is not None:
        tails = "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outputs))
        raise RuntimeError(f"{mode} x{processes}: {why}\n{tails}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return sorted(reports, key=lambda r: r["process"])


def ensure_folder(args) -> Path:
    """The partitioned folder of the preset, written if it is not there yet."""
    from probmf.data.partitioned import open_partitioned, partition
    from probmf.data.synthetic import synthetic_preset

    parts = max(args.processes)
    folder = Path(args.folder or ROOT / "results" / "partitions" / f"{args.preset}-seed{args.seed}-p{parts}")
    try:
        if open_partitioned(folder).parts == parts:
            return folder
    except (FileNotFoundError, ValueError):
        pass
    train, _ = synthetic_preset(args.preset, seed=args.seed)
    partition(train, folder, parts)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ml20m")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument(
        "--solver", default="cg", choices=["cholesky", "cg"], help="als (cg: LAPACK-free, as across devices)"
    )
    p.add_argument("--processes", type=lambda s: [int(v) for v in s.split(",")], default=[2],
                   help="process counts to run beside the one-process runs, e.g. 2,4")  # fmt: skip
    p.add_argument("--folder", help="the partitioned folder (default: results/partitions/<preset>-...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--smoke", action="store_true", help="tiny data, for tests")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--out", default="results/multihost.jsonl", help="append the JSON rows here ('' to skip)")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset = "tiny"
        args.folder = args.folder or tempfile.mkdtemp(prefix="probmf-multihost-")
    if any(n < 1 for n in args.processes) or args.rank < 0 or args.sweeps < 1:
        p.error("--processes, --sweeps must be positive and --rank non-negative")

    import probmf
    from probmf.data.partitioned import open_partitioned

    folder = ensure_folder(args)
    n_ratings = len(open_partitioned(folder))
    runs = [("folder", 1), ("memory", 1)] + [("folder", n) for n in args.processes if n > 1]
    rows, reference, baseline = [], None, None
    for mode, processes in runs:
        reports = run_processes(mode, processes, folder, args, args.timeout)
        peak = max(r["peak_rss_mb"] for r in reports)
        if (mode, processes) == ("folder", 1):
            baseline = peak
        reference = reference or reports[0]["params_sha256"]
        # In memory the ratings come back file by file, so an item's ratings are summed in
        # another order than in the folder's item files: equal up to rounding, not compared.
        equal = None if mode == "memory" else all(r["params_sha256"] == reference for r in reports)
        rows.append({
            "mode": mode,
            "processes": processes,
            "preset": args.preset,
            "n_ratings": n_ratings,
            "rank": args.rank,
            "sweeps": args.sweeps,
            "solver": args.solver,
            "peak_rss_mb": [round(r["peak_rss_mb"]) for r in reports],
            "peak_rss_mb_max": round(peak),
            "ratings_read": [r["ratings_read"] for r in reports],
            "fit_seconds": [round(r["fit_seconds"], 2) for r in reports],
            "equal_to_one_process": equal,
            "objective": reports[0]["objective"],
            "probmf_version": probmf.__version__,
        })  # fmt: skip
    for row in rows:
        row["rss_ratio"] = round(row["peak_rss_mb_max"] / baseline, 3)
        line = json.dumps(row)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(line + "\n")
        if args.json:
            print(line)
        else:
            print(f"{row['mode']:>6} x{row['processes']}: peak RSS per process {row['peak_rss_mb']} MB "
                  f"({row['rss_ratio']:.2f}x one process from the folder), read {row['ratings_read']} of "
                  f"2 x {n_ratings:,} ratings, fit {row['fit_seconds']} s, "
                  f"equal {row['equal_to_one_process']}")  # fmt: skip
    return 0 if all(row["equal_to_one_process"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
