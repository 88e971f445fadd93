"""Speed and memory of the iterative fitters on synthetic data shaped like MovieLens.

    python experiments/bench.py --preset ml20m --model als --rank 10 --iters 5 --json

One iteration is one ALS or Gibbs sweep (users then items) or one optax epoch. Prints one
JSON line (``--json``) or a short table row per run and appends the JSON to ``--out``.
Fields: model, rank, preset, n_ratings, num_users, num_items, setup_seconds (encoding),
compile_seconds, seconds_per_iter (median of the timed iterations after compile),
seconds_per_iter_all, ratings_per_second, peak_rss_mb, devices, backend, probmf_version.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import probmf
from probmf.data.synthetic import PRESETS, synthetic_preset
from probmf.encoding import encode, layout_for_rank
from probmf.evaluate import fitter_options
from probmf.fitters.als import als_run, check_als_options, make_priors
from probmf.fitters.gibbs import Hyperpriors, gibbs_sweep, init_state
from probmf.fitters.minibatch import MinibatchState, make_epoch, padded_index
from probmf.fitters.optax_mf import check_optax_options, make_optimizer, mf_objective
from probmf.model import init_params


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def setup_als(rng_key, train, args):
    """Returns (state, step) where step(state) -> state runs one jitted ALS sweep."""
    defaults = fitter_options("als")
    lam = defaults["lam"] if args.lam is None else args.lam
    check_als_options(rank=args.rank, lam=lam, lam_bias=1.0, num_sweeps=1, solver=args.solver, cg_iters=10)
    solver = args.solver if args.solver != "auto" else ("cholesky" if args.rank <= 32 else "cg")
    data = encode(train, layout_for_rank(args.rank))
    params = init_params(rng_key, train.num_users, train.num_items, args.rank, mu=float(train.values.mean()))
    priors = make_priors(
        data.by_user.counts,
        data.by_item.counts,
        lam=lam,
        lam_bias=defaults["lam_bias"],
        weight_exponent=defaults["weight_exponent"],
    )

    def step(p):
        return als_run(p, data, priors, num_sweeps=1, solver=solver)[0]

    return params, step


def setup_optax(rng_key, train, args):
    """Returns (state, step) where step(state) -> state runs one epoch of the optax fitter
    (host shuffle + one jitted scan over the batches), at the fitter's default options."""
    defaults = fitter_options("optax")
    lam = defaults["lam"] if args.lam is None else args.lam
    batch_size = defaults["batch_size"] if args.batch_size is None else args.batch_size
    check_optax_options(**{**defaults, "rank": args.rank, "lam": lam, "batch_size": batch_size})
    key_init, key_shuffle = jax.random.split(rng_key)
    n = len(train)
    params = init_params(key_init, train.num_users, train.num_items, args.rank, mu=float(train.values.mean()))
    n_u = jnp.asarray(np.bincount(train.users, minlength=train.num_users), jnp.float32)
    n_i = jnp.asarray(np.bincount(train.items, minlength=train.num_items), jnp.float32)
    priors = make_priors(n_u, n_i, lam=lam, lam_bias=defaults["lam_bias"], weight_exponent=defaults["weight_exponent"])
    num_batches, weights = padded_index(n, batch_size)
    optimizer = make_optimizer(
        defaults["optimizer"],
        defaults["learning_rate"],
        schedule=defaults["schedule"],
        total_steps=num_batches * defaults["num_epochs"],
    )
    epoch = make_epoch(functools.partial(mf_objective, priors=priors, num_ratings=n), optimizer)
    data = tuple(jnp.asarray(a) for a in (train.users, train.items, train.values))
    weights = jnp.asarray(weights)
    rng = np.random.default_rng(args.seed)
    index = np.zeros(num_batches * batch_size, np.int32)

    def step(state):
        index[:n] = rng.permutation(n)
        return epoch(state, data, jnp.asarray(index.reshape(num_batches, batch_size)), weights)[0]

    return MinibatchState(params, optimizer.init(params)), step


def setup_gibbs(rng_key, train, args):
    """Returns (state, step) where step(state) -> state runs one jitted Gibbs sweep."""
    data = encode(train, layout_for_rank(args.rank))
    key_init, key_run = jax.random.split(rng_key)
    params = init_params(key_init, train.num_users, train.num_items, args.rank, mu=float(train.values.mean()))
    sweep = jax.jit(lambda key, s: gibbs_sweep(key, s, data, Hyperpriors())[0])

    def step(state):
        key, s = state
        key, key_sweep = jax.random.split(key)
        return key, sweep(key_sweep, s)

    return (key_run, init_state(params, 1.0)), step


SETUPS = {"als": setup_als, "optax": setup_optax, "gibbs": setup_gibbs}


def run(args) -> dict:
    if args.smoke:
        train, _ = synthetic_preset("tiny", seed=args.seed)
    else:
        train, _ = synthetic_preset(args.preset, seed=args.seed)
    key = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    state, step = SETUPS[args.model](key, train, args)
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
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "probmf_version": probmf.__version__,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ml20m", choices=sorted(PRESETS))
    p.add_argument("--model", default="als", choices=sorted(SETUPS))
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iters", type=int, default=5, help="timed iterations after the compiling one")
    p.add_argument("--lambda", dest="lam", type=float, help="factor ridge (default: the fitter's)")
    p.add_argument("--solver", default="auto", choices=["auto", "cholesky", "cg"])
    p.add_argument("--batch-size", dest="batch_size", type=int, help="optax: ratings per step (default: the fitter's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny data, for tests")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--out", default="results/bench.jsonl", help="append the JSON rows here ('' to skip)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
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
