"""Conjugate-gradient iterations of the implicit-feedback draw, by preconditioner.

    python experiments/cg_iterations.py --preset ml20m     # ~3 min on 2 cores
    python experiments/cg_iterations.py --smoke            # tiny synthetic data, for tests

On synthetic data shaped like a MovieLens release (`probmf.data.synthetic.synthetic_preset`),
each side's implicit-feedback operator F is built as `gibbs --implicit --implicit-solver cg`
builds it (from the training tiles), and (F^T F + c I) Y = B is solved from zero to
`CG_TOLERANCE` for the 11 columns of a rank-10 draw, B = F^T E1 + sqrt(c) E2 with standard
normal E1, E2 (the draw's right-hand side, `sample_implicit`, with T = 0), at each c of
``--c``: once with the diagonal preconditioner alone, once with `coarse_space`'s deflation.
Prints one JSON line per side and c: preset, side ("users": F's rows are the users, so Y has a
row per item), num_rows, num_cols, c, iterations and seconds (after compiling) of each
preconditioner, the coarse space's Ritz values g and the seconds to build both operators;
appends them to ``--out`` (default results/cg_iterations.jsonl; '' to skip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from probmf.data.synthetic import PRESETS, synthetic_preset
from probmf.encoding import encode
from probmf.fitters.gibbs import implicit_operators, solve_cg

COLUMNS = 11  # k + 1 at rank 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ml1m", choices=sorted(PRESETS))
    p.add_argument("--c", type=float, nargs="+", default=[0.3, 1.0, 3.0], help="prior precision scales c")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="the tiny preset, for tests")
    p.add_argument("--out", default="results/cg_iterations.jsonl", help="append the JSON rows here ('' to skip)")
    args = p.parse_args(argv)
    preset = "tiny" if args.smoke else args.preset
    train, _ = synthetic_preset(preset, seed=args.seed)
    data = encode(train)
    start = time.perf_counter()
    ops = implicit_operators(train, "cg", data)
    setup = time.perf_counter() - start
    solve = jax.jit(solve_cg, static_argnums=(3,))
    rng = np.random.default_rng(args.seed)
    rows = []
    for side, op, num_rows in (("users", ops[0], train.num_users), ("items", ops[1], train.num_items)):
        for c in args.c:
            e1 = jnp.asarray(rng.standard_normal((num_rows, COLUMNS)), jnp.float32)
            e2 = jnp.asarray(rng.standard_normal((op.num_cols, COLUMNS)), jnp.float32)
            rhs = op.apply_t(e1) + np.float32(np.sqrt(c)) * e2
            row = dict(preset=preset, side=side, num_rows=num_rows, num_cols=op.num_cols, c=c)
            for name, o in (("jacobi", op._replace(coarse=None)), ("deflated", op)):
                jax.block_until_ready(solve(o, jnp.float32(c), rhs, num_rows, jnp.zeros_like(rhs)))  # compile
                t = time.perf_counter()
                _, iterations = jax.block_until_ready(solve(o, jnp.float32(c), rhs, num_rows, jnp.zeros_like(rhs)))
                row[f"iterations_{name}"] = int(iterations)
                row[f"seconds_{name}"] = round(time.perf_counter() - t, 3)
            row["ritz"] = None if op.coarse is None else [round(float(g), 3) for g in np.asarray(op.coarse[2])]
            row["setup_seconds"] = round(setup, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
