"""probmf's ALS and Gibbs beside LensKit's ALS and myFM's Gibbs, on the same data, in one run.

    python experiments/peers.py --preset ml20m --rank 10,64 --iters 3

Every system gets the arrays of `experiments/bench.py --preset PRESET` (the same seed, the
very same `Ratings`), the same rank and the same CPU cores (``--threads``: the process is
pinned to that many before any thread pool starts). Each runs one untimed warm-up iteration
(JAX's trace and compile; the first touch of the peers' memory), then ``--iters`` timed ones;
only the iterations are timed, never the set-up (encoding, the peers' matrices, LensKit's
bias model). probmf is timed by bench.py's own `bench.run`, so its rows carry bench.py's
fields. Peers:

- ``lenskit``: `lenskit.als.BiasedMFScorer`, one `train_epoch` (users then items) per
  iteration. Its ridge on row i is reg n_i, ours lam n_i^alpha (`ALSConfig`); reg is set per
  side to lam m^(alpha - 1), m the side's median count, so both put the same ridge on the
  median row; its bias damping is our lam_bias.
- ``myfm``: `myfm.MyFMRegressor` on the one-hot (user, item) design with a group for each
  side (Bayesian MF with biases, hyperpriors sampled as ours are), one Gibbs iteration per
  callback. Its sampler has no thread option and runs on one thread.

Prints one table of seconds per epoch (ALS) or sweep (Gibbs), with each peer's ratio to
probmf's fitter of the same kind at the same rank (> 1: probmf is faster), and appends the
rows, as JSON, to ``--out``. A peer that is not installed (``pip install -e '.[peers]'``)
is skipped, saying so, with a row ``{"system": ..., "skipped": reason}``. ``--smoke``: tiny
data, for tests.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from probmf.fitters.als import ALSConfig


def _load_bench():
    """experiments/bench.py, beside this file: its preset data and its timing of probmf."""
    spec = importlib.util.spec_from_file_location("probmf_bench", Path(__file__).resolve().with_name("bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

PEERS = ("lenskit", "myfm")
KIND = {"als": "lenskit", "gibbs": "myfm"}  # probmf's fitter -> the peer it is compared with
PEER_KIND = {v: k for k, v in KIND.items()}


def _pin_threads(threads: int) -> list[int]:
    """Pins this process (and every thread it starts from now on) to ``threads`` cores, so
    that XLA's, LensKit's and BLAS's pools all get the same ones."""
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise SystemExit(f"--threads {threads}: this process may use {len(cores)} cores")
    os.sched_setaffinity(0, cores[:threads])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LK_NUM_THREADS"):
        os.environ[var] = str(threads)
    return cores[:threads]


_make_preset = bench.synthetic_preset


@functools.cache
def preset_data(name: str, seed: int):
    """bench.py's data, made once: `bench.run` (see `run`) and the peers all read these arrays."""
    return _make_preset(name, seed=seed)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_peer(name: str) -> str | None:
    """Why ``name`` cannot be timed here, or None."""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed (pip install -e '.[peers]')"
    return None


def _timed(times: list[float]) -> dict:
    per_iter = statistics.median(times)
    return {"seconds_per_iter": round(per_iter, 4), "seconds_per_iter_all": [round(t, 4) for t in times]}


_LENSKIT_PARALLEL: list[int] = []


def matched_ridge(counts: np.ndarray, lam: float, alpha: float) -> float:
    """LensKit's reg (ridge reg n_i on row i) that puts our ridge lam n_i^alpha on the
    median row: reg m = lam m^alpha, m the median of the rows' counts (rated rows only)."""
    m = float(np.median(counts[counts > 0]))
    return lam * m ** (alpha - 1.0)


def time_lenskit(train, rank: int, iters: int, seed: int, threads: int) -> dict:
    """LensKit's biased-MF ALS: ``iters`` epochs after one warm-up epoch."""
    import pandas as pd
    from lenskit.als import BiasedMFConfig, BiasedMFScorer
    from lenskit.data import from_interactions_df
    from lenskit.parallel import initialize
    from lenskit.training import TrainingOptions

    if not _LENSKIT_PARALLEL:  # once per process (its thread pools); later calls only warn
        initialize(threads=threads, backend_threads=threads)
        _LENSKIT_PARALLEL.append(threads)
    als = ALSConfig()
    sides = (("user", train.users, train.num_users), ("item", train.items, train.num_items))
    reg = {side: matched_ridge(np.bincount(ids, minlength=n), als.lam, als.weight_exponent) for side, ids, n in sides}
    t0 = time.perf_counter()
    frame = pd.DataFrame({"user_id": train.users, "item_id": train.items, "rating": train.values})
    data = from_interactions_df(frame, user_col="user_id", item_col="item_id", rating_col="rating")
    config = BiasedMFConfig(embedding_size=rank, epochs=iters + 1, regularization=reg, damping=als.lam_bias)
    trainer = BiasedMFScorer(config).create_trainer(data, TrainingOptions(rng=seed))
    setup = time.perf_counter() - t0
    del frame
    t0 = time.perf_counter()
    trainer.train_epoch()  # warm-up
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        trainer.train_epoch()
        times.append(time.perf_counter() - t0)
    return {"setup_seconds": round(setup, 3), "warmup_seconds": round(warmup, 3), **_timed(times),
            "regularization": {k: round(v, 5) for k, v in reg.items()}, "damping": als.lam_bias,
            "threads": threads}  # fmt: skip


def time_myfm(train, rank: int, iters: int, seed: int, threads: int) -> dict:
    """myFM's Gibbs sampler for Bayesian MF: the intervals between its per-iteration
    callbacks, after the first (its set-up and a warm-up iteration)."""
    import myfm
    import myfm.base
    import scipy.sparse as sp

    if not isinstance(myfm.base.tqdm, functools.partial):  # its progress bar, updated every iteration
        myfm.base.tqdm = functools.partial(myfm.base.tqdm, disable=True)

    # The one-hot (user, item) design as two relation blocks (row -> user, row -> item), myFM's
    # fast path for repeated rows: ~15% faster per iteration than the plain sparse design on ml1m.
    t0 = time.perf_counter()
    blocks = [myfm.RelationBlock(ids.astype(np.int64), sp.identity(size, format="csr"))
              for ids, size in ((train.users, train.num_users), (train.items, train.num_items))]  # fmt: skip
    grouping = [0] * train.num_users + [1] * train.num_items
    setup = time.perf_counter() - t0
    stamps = []

    def callback(i, fm, hyper, history):
        stamps.append(time.perf_counter())
        return False, None

    start = time.perf_counter()
    model = myfm.MyFMRegressor(rank=rank, random_seed=seed)
    model.fit(None, train.values.astype(np.float64), X_rel=blocks, n_iter=iters + 1, n_kept_samples=1,
              grouping=grouping, callback=callback)  # fmt: skip
    times = list(np.diff(stamps))
    return {"setup_seconds": round(setup, 3), "warmup_seconds": round(stamps[0] - start, 3), **_timed(times),
            "threads": 1, "design": "relation blocks"}  # fmt: skip


TIMERS = {"lenskit": time_lenskit, "myfm": time_myfm}
DIST = {"lenskit": "lenskit", "myfm": "myfm"}


def probmf_row(model: str, rank: int, args) -> dict:
    """bench.py's row for ``model`` at ``rank``, timed by `bench.run` on the same data."""
    ns = argparse.Namespace(model=model, rank=rank, iters=args.iters, preset=args.preset, smoke=args.smoke,
                            seed=args.seed, lam=None, solver="auto", linalg="auto", batch_size=None,
                            implicit=False, implicit_solver="auto", engine="fast", devices=1)  # fmt: skip
    row = bench.run(ns)
    return {"system": "probmf", "algorithm": model, "version": row["probmf_version"], **row}


def run(args) -> list[dict]:
    """Every (system, rank) row: probmf's als and gibbs, then each peer of the same kind."""
    bench.synthetic_preset = lambda name, *, seed: preset_data(name, seed)  # bench.run: the same arrays
    train, _ = preset_data("tiny" if args.smoke else args.preset, args.seed)
    common = {"preset": "tiny" if args.smoke else args.preset, "n_ratings": len(train),
              "num_users": train.num_users, "num_items": train.num_items, "date": time.strftime("%Y-%m-%d"),
              "cores": len(os.sched_getaffinity(0)), "cpu": _cpu_name()}  # fmt: skip
    rows = []
    for name in args.peers:
        if why := missing_peer(name):
            print(f"skipping {name}: {why}", flush=True)
            rows.append({"system": name, "algorithm": PEER_KIND[name], "skipped": why, **common})
    for model in args.fitters:
        for rank in args.ranks:
            if model == "gibbs" and rank not in args.gibbs_ranks:
                continue
            base = {**probmf_row(model, rank, args), **common}
            rows.append(base)
            peer = KIND[model]
            if peer not in args.peers or missing_peer(peer):
                continue
            print(f"timing {peer} rank {rank} ...", file=sys.stderr, flush=True)
            timed = TIMERS[peer](train, rank, args.iters, args.seed, args.threads)
            ratio = timed["seconds_per_iter"] / base["seconds_per_iter"] if base["seconds_per_iter"] else float("nan")
            rows.append({"system": peer, "algorithm": model, "version": _version(DIST[peer]), "rank": rank,
                         **common, **timed, "ratio_to_probmf": round(ratio, 3)})  # fmt: skip
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


LABELS = {"probmf als": "probmf {v} `als`{solver}", "lenskit als": "LensKit {v} `BiasedMFScorer` (Cholesky)",
          "probmf gibbs": "probmf {v} `gibbs`", "myfm gibbs": "myFM {v} Gibbs (Bayesian MF, 1 thread)"}  # fmt: skip


def table(rows: list[dict], ranks: list[int]) -> str:
    """A markdown table: a line per system, a column per rank, each cell seconds per
    epoch/sweep (and a peer's ratio to probmf's)."""
    timed = [r for r in rows if "seconds_per_iter" in r]
    lines = ["| system | " + " | ".join(f"rank {k}, s / iteration" for k in ranks) + " |",
             "|---|" + "---|" * len(ranks)]  # fmt: skip
    order = [("probmf", "als"), ("lenskit", "als"), ("probmf", "gibbs"), ("myfm", "gibbs")]
    for system, algorithm in order:
        mine = {r["rank"]: r for r in timed if r["system"] == system and r["algorithm"] == algorithm}
        if not mine:
            continue
        version = next(iter(mine.values())).get("version")
        solver = ", ".join(f"{r['solver']} at {k}" for k, r in mine.items() if r.get("solver"))
        solver = f" ({solver})" if solver else ""
        label = LABELS[f"{system} {algorithm}"].format(v=version, solver=solver)
        cells = []
        for k in ranks:
            r = mine.get(k)
            if r is None:
                cells.append("-")
            elif "ratio_to_probmf" in r:
                cells.append(f"{r['seconds_per_iter']:.3g} ({r['ratio_to_probmf']:.2f}x probmf)")
            else:
                cells.append(f"{r['seconds_per_iter']:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be integers >= 1, got {text!r}")
    return values


def _names(known):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if unknown := sorted(set(names) - set(known)):
            raise argparse.ArgumentTypeError(f"unknown name(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return names

    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ml20m", choices=sorted(bench.PRESETS))
    p.add_argument("--rank", type=_ints, action="append", help="repeatable or comma list (default: 10)")
    p.add_argument("--gibbs-ranks", type=_ints, default=[10],
                   help="the ranks of --rank at which the Gibbs samplers are timed (default: 10)")  # fmt: skip
    p.add_argument("--iters", type=int, default=3, help="timed iterations after the warm-up one")
    p.add_argument("--peers", type=_names(PEERS), default=list(PEERS), help="comma list (default: lenskit,myfm)")
    p.add_argument("--fitters", type=_names(KIND), default=list(KIND),
                   help="probmf's fitters to time, each beside its peer (default: als,gibbs)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="cores given to every system")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny data, for tests")
    p.add_argument("--json", action="store_true", help="also print the JSON rows")
    p.add_argument("--out", default="results/peers.jsonl", help="append the JSON rows here ('' to skip)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    args.ranks = list(dict.fromkeys(k for ks in (args.rank or [[10]]) for k in ks))
    _pin_threads(args.threads)  # before JAX, LensKit or BLAS start their pools
    rows = run(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    if not any("seconds_per_iter" in r for r in rows):
        print("nothing was timed (--fitters, --gibbs-ranks)")
        return 0
    first = next(r for r in rows if "seconds_per_iter" in r)
    print(f"data: synthetic preset {first['preset']} ({first['num_users']:,} users x {first['num_items']:,} items, "
          f"{first['n_ratings']:,} ratings), {args.threads} cores, {first['date']}; median of {args.iters} "
          "iterations after a warm-up; (Nx probmf): the peer's time over probmf's")  # fmt: skip
    print(table(rows, args.ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
