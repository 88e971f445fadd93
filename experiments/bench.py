"""Speed and memory of the iterative fitters on synthetic data shaped like MovieLens.

    python experiments/bench.py --preset ml20m --model als --rank 10 --iters 5 --json

One iteration is one ALS or Gibbs sweep (users then items), or one optax, SVI or AutoRec
epoch (for ``autorec-i``, ``--rank`` is the number of hidden units). It is one step of the
fitter's own `probmf.program.Program` (``run_chunk``), the code `probmf.fit` runs (AutoRec's:
its epochs on all the training ratings, `probmf.fitters.autorec.autorec_epochs`); set-up is
the program's (for gibbs, with its ALS start). Prints one JSON line
(``--json``) or a short table row per run and appends the JSON to ``--out``.
Fields: model, rank, preset, n_ratings, num_users, num_items, setup_seconds (encoding),
compile_seconds, seconds_per_iter (median of the timed iterations after compile),
seconds_per_iter_all, ratings_per_second, peak_rss_mb, devices (``--devices``: rows or
batches split across that many devices, as the fitters do), device_count, state_devices (the
devices the final state lies on), backend, device_kind, probmf_version, batch_size (minibatch
fitters), solver (als), linalg, implicit and implicit_solver (gibbs), engine (svi: ``--engine
fast`` the hand-written step, ``numpyro`` NumPyro's SVI). ``--smoke``: tiny data, for tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

import probmf
from probmf.data.synthetic import PRESETS, synthetic_preset
from probmf.fitters.als import ALSConfig, prepare_als, resolve_solver
from probmf.fitters.autorec import AutoRecConfig, autorec_epochs
from probmf.fitters.gibbs import GibbsConfig, prepare_gibbs
from probmf.fitters.optax_mf import OptaxConfig, prepare_optax
from probmf.fitters.run import fitter_options
from probmf.fitters.svi import svi_trainer
from probmf.program import RunOptions
from probmf.sharding import device_mesh


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _als(rng_key, train, args, run):
    solver = resolve_solver(args.solver, args.rank)
    args.solver_used = solver
    lam = {} if args.lam is None else {"lam": args.lam}
    config = ALSConfig(rank=args.rank, num_sweeps=args.iters + 1, solver=solver, **lam).validate()
    return prepare_als(rng_key, train, config, run)


def _optax(rng_key, train, args, run):
    options = {k: v for k, v in (("lam", args.lam), ("batch_size", args.batch_size)) if v is not None}
    config = OptaxConfig(rank=args.rank, **options).validate(run)
    args.batch_used = config.batch_size
    return prepare_optax(rng_key, train, config, run)


def _gibbs(rng_key, train, args, run):
    config = GibbsConfig(rank=args.rank, num_warmup=0, num_samples=args.iters + 1, implicit=args.implicit,
                         linalg=args.linalg, implicit_solver=args.implicit_solver).validate(run)  # fmt: skip
    args.linalg_used = config.linalg  # "auto" resolved by rank
    return prepare_gibbs(rng_key, train, config, run)


def _svi(rng_key, train, args, run):
    options = {"rank": args.rank, "devices": run.devices, "engine": getattr(args, "engine", "fast")}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    trainer = svi_trainer(rng_key, train, **options)
    args.batch_used = trainer.batch
    return trainer.program


def _autorec_i(rng_key, train, args, run):
    """I-AutoRec's epochs on all the training ratings (`fit_autorec_i`'s defaults, ``--rank``
    hidden units): the inputs are the items' columns (num_users wide), densified one batch of
    items at a time; refused up front when they would not fit in memory."""
    options = {k: v for k, v in fitter_options("autorec-i").items() if k in AutoRecConfig._fields}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    config = AutoRecConfig(**options, item_based=True)._replace(hidden=args.rank).validate(run)
    max_len = int(np.bincount(train.items, minlength=train.num_items).max())
    need = autorec_memory_bytes(train.num_users, config.hidden, config.batch_size, max_len)
    if need > 0.8 * (have := _available_memory_bytes()):
        raise SystemExit(
            f"autorec-i with {config.hidden} hidden units needs about {need / 2**30:.1f} GiB for "
            f"{train.num_users:,} users x {train.num_items:,} items, but {have / 2**30:.1f} GiB is available: "
            "use a smaller --preset or --rank"
        )
    args.batch_used = config.batch_size
    return autorec_epochs(rng_key, train, config, run)


# Each builds the fitter's own `probmf.program.Program` at its default options (but for the
# command line's); the benchmark times its ``run_chunk``, one step at a time.
PROGRAMS = {"als": _als, "optax": _optax, "gibbs": _gibbs, "svi": _svi, "autorec-i": _autorec_i}


def setup_program(rng_key, train, args):
    """Returns (state, step) where step(state) -> state runs the next step (sweep or epoch)
    of ``args.model``'s program: exactly what `probmf.fit` runs."""
    program = PROGRAMS[args.model](rng_key, train, args, RunOptions(devices=args.devices))
    if args.iters + 1 > program.num_steps:
        raise SystemExit(f"--iters {args.iters}: {args.model} runs {program.num_steps} steps; use fewer")
    steps = itertools.count()

    def step(state):
        return program.run_chunk(state, next(steps), 1)

    return program.state, step


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def autorec_memory_bytes(width: int, hidden: int, batch: int, max_len: int) -> int:
    """Rough peak bytes of an AutoRec epoch: weights, gradients and Adam's two moments
    (4 x 2 width x hidden floats), plus the dense (batch, width) input, mask, dropout and
    reconstruction of a step and its gathered CSR slots."""
    return 4 * (4 * 2 * width * hidden + 8 * batch * width + 4 * batch * max_len)


def run(args) -> dict:
    if args.smoke:
        train, _ = synthetic_preset("tiny", seed=args.seed)
    else:
        train, _ = synthetic_preset(args.preset, seed=args.seed)
    key = jax.random.PRNGKey(args.seed)
    args.batch_used = getattr(args, "batch_used", None)
    t0 = time.perf_counter()
    state, step = setup_program(key, train, args)
    jax.block_until_ready(state)
    setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = jax.block_until_ready(step(state))  # first call: trace + compile + one iteration
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        state = jax.block_until_ready(step(state))
        times.append(time.perf_counter() - t0)
    per_iter = statistics.median(times)
    return {
        "model": args.model,
        "rank": args.rank,
        "preset": "tiny" if args.smoke else args.preset,
        "n_ratings": len(train),
        "num_users": train.num_users,
        "num_items": train.num_items,
        "setup_seconds": round(setup, 3),
        "compile_seconds": round(max(first - per_iter, 0.0), 3),
        "seconds_per_iter": round(per_iter, 4),
        "seconds_per_iter_all": [round(t, 4) for t in times],
        "ratings_per_second": round(len(train) / per_iter),
        "peak_rss_mb": round(_peak_rss_mb()),
        "devices": args.devices,
        "device_count": jax.device_count(),
        "state_devices": max(len(a.sharding.device_set) for a in jax.tree.leaves(state) if isinstance(a, jax.Array)),
        "batch_size": args.batch_used,
        "solver": getattr(args, "solver_used", None),
        "linalg": getattr(args, "linalg_used", args.linalg) if args.model == "gibbs" else None,
        "implicit": args.implicit if args.model == "gibbs" else None,
        "implicit_solver": args.implicit_solver if args.model == "gibbs" and args.implicit else None,
        "engine": getattr(args, "engine", "fast") if args.model == "svi" else None,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "probmf_version": probmf.__version__,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ml20m", choices=sorted(PRESETS))
    p.add_argument("--model", default="als", choices=sorted(PROGRAMS))
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iters", type=int, default=5, help="timed iterations after the compiling one")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="factor ridge (default: the fitter's)")
    p.add_argument("--solver", default="auto", choices=["auto", "cholesky", "cg"], help="als")
    p.add_argument(
        "--linalg",
        default="auto",
        choices=["auto", "lapack", "jax"],
        help="gibbs: Cholesky by LAPACK or not (auto: LAPACK up to rank 32)",
    )
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help="optax, svi: ratings per step; autorec-i: items per step (default: the fitter's)",
    )
    p.add_argument("--implicit", action="store_true", help="gibbs: with implicit feedback")
    p.add_argument("--implicit-solver", default="auto", choices=["auto", "eigen", "cg"], help="gibbs --implicit")
    p.add_argument("--engine", "--svi-engine", dest="engine", default="fast", choices=["fast", "numpyro"],
                   help="svi: the hand-written step or NumPyro's SVI")  # fmt: skip
    p.add_argument("--devices", type=int, default=1, help="split the work across this many devices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny data, for tests")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--out", default="results/bench.jsonl", help="append the JSON rows here ('' to skip)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    try:
        device_mesh(args.devices)  # a clear error before any data is made
    except ValueError as err:
        p.error(str(err))
    row = run(args)
    line = json.dumps(row)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")
    if args.json:
        print(line)
    else:
        print(
            f"{row['model']} rank {row['rank']} on {row['preset']} ({row['n_ratings']:,} ratings): "
            f"{row['seconds_per_iter']:.3f} s/iter, compile {row['compile_seconds']:.1f} s, "
            f"setup {row['setup_seconds']:.1f} s, peak RSS {row['peak_rss_mb']:,} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
