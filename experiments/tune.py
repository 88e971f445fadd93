"""Choose a fitter's default hyper-parameters by cross-validation inside ONE training file.

    python experiments/tune.py --model als --fold u1         # select on u1.base alone (the default fold)
    python experiments/tune.py --nested --model als          # nested selection over u1..u5
    python experiments/tune.py --nested --model gibbs --where implicit=true
    python experiments/tune.py --model als --smoke           # tiny synthetic data (seconds; for tests)

``--fold uK`` (K in 1..5, default u1) selects on ``uK.base`` alone: the base file is cut into
``--inner-folds`` N disjoint validation parts (k-fold, seed K; N = 1: one random 80/20 split),
every configuration of the grid is fitted on the rest of the base and scored (RMSE, clipped to
the rating range) on each part, and the one with the lowest mean validation RMSE is printed
last ("best:"). ``uK.test`` plays no part. Each of u2..u5.base holds all of u1.test, so only
u1.base may choose the defaults behind a u1 figure.

``--nested`` does that for every fold u1..u5, then fits the fold's choice on the whole
``uK.base`` and scores it on ``uK.test`` (`probmf.evaluate.evaluate_fold`); it also scores the
shipped defaults (the fitter's own, with ``--rank`` and the ``--where`` fields) on the same
folds, reusing the nested fit where the choice is the default. The last line ("nested:")
gives the mean test RMSE, MAE, coverage and NLL under nested selection, the per-fold RMSE and
choices, the same for the shipped defaults, and shipped minus nested.

Rows are appended as JSON lines to ``--out`` (default results/tune.jsonl): one per
configuration and fold (``"kind": "inner"``, with ``fold`` and ``inner_folds``; for posteriors
the worst R-hat and ESS of the validation predictions), and with ``--nested`` the test rows
(``"kind": "nested"`` / ``"shipped"``) and the summary (``"kind": "summary"``).

``--configs`` picks grid rows by index; ``--where key=value`` (repeatable, the value read as
JSON) keeps the rows whose field has that value, a missing field counting as the fitter's
default: ``gibbs`` and ``gibbs --implicit`` are tuned apart with ``--where implicit=false``
and ``--where implicit=true``.

The grids (configurations; fits of a nested run, 5 x (2 x configurations + 2) at 2 inner
folds; wall time of ``--nested`` on 2 CPU cores, measured on 1 December 2026 with the machine
shared with other jobs, so an idle machine is faster):

    baseline    8   90 fits   24 s
    svd         3   40 fits    5 min (~12 s a fit under load, LAPACK's threads contending)
    als        45  460 fits    3 min
    optax      12  130 fits    6.6 min
    autorec-i   4   50 fits   31.5 min
    autorec-u   2   30 fits    8.9 min
    residual    5   60 fits    6.1 min
    gibbs       6   70 fits   23.8 min (11.6 with --where implicit=false, 12.2 with implicit=true)
    svi         4   50 fits    4.4 min
    mlp         3   40 fits    6.3 min

autorec-i keeps four of the eight rows it had: at about 30 s a fit, eight rows would take
about 45 min alone and more on a busy machine, so lam 30 and dropout 0.7 (the ends of its
ranges) and the two slow-learning rows, lr 5e-4 at lam 100 and lr 2.5e-4 with patience 60 at
lam 150 (the shipped default, which its nested run still scores as "shipped"), were dropped.
optax keeps its cosine rows at weight_exponent 0 with lam 8, 12, 16 and at 0.5 with lam 1.5
(x lam_bias 1, 3, 10); lam 5 and 20, lam 1 and 2 at 0.5, and the early-stopping rows were
dropped.

``--smoke`` runs on the tiny synthetic preset (the train part of each fold as its base, the
test part as its test file; ``--nested``: folds u1 and u2), with the first two of the
selected grid rows cut to a few sweeps or epochs, the shipped defaults cut the same way, and
rank 2, and writes to a new temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from probmf.data.movielens import load_split
from probmf.data.splits import kfold, random_split
from probmf.evaluate import FOLDS, evaluate_fold, folds
from probmf.fitters.run import fitter_options, resolve_options

GRIDS = {
    "als": [
        {"weight_exponent": a, "lam": lam, "lam_bias": lb}
        for a, lams in (
            (0.0, (5, 8, 10, 12, 15, 20)),
            (0.5, (0.5, 1, 1.5, 2, 3)),
            (1.0, (0.03, 0.05, 0.08, 0.12)),
        )
        for lam, lb in itertools.product(lams, (1.0, 3.0, 10.0))
    ],
    "baseline": [{"lam_bias": lb} for lb in (0.5, 1, 2, 3, 5, 10, 15, 25)],
    "svd": [{"lam_bias": lb} for lb in (1, 3, 10)],
    # Four of the eight rows searched before (dropped: lam 30, dropout 0.7, lr 5e-4 at lam 100 and
    # the shipped default lr 2.5e-4 at lam 150; see the module docstring).
    "autorec-i": [
        {"lam": lam, "dropout": p, "learning_rate": lr, "patience": pat, "num_epochs": 400}
        for lam, p, lr, pat in (
            (100, 0.5, 1e-3, 20),
            (150, 0.5, 5e-4, 40),
            (100, 0.0, 1e-3, 20),
            (300, 0.0, 1e-3, 20),
        )
    ],
    # The user-based autoencoder at its other defaults.
    "autorec-u": [{"lam": lam} for lam in (30, 100)],
    # Adam, batch 1024, trained to the MAP point on all of the inner-train ratings (cosine decay,
    # 40 epochs).
    "optax": [
        {
            "weight_exponent": a,
            "lam": lam,
            "lam_bias": lb,
            "validation_fraction": 0.0,
            "num_epochs": 40,
            "schedule": "cosine",
        }
        for a, lams in ((0.0, (8, 12, 16)), (0.5, (1.5,)))
        for lam, lb in itertools.product(lams, (1.0, 3.0, 10.0))
    ],
    # The network on out-of-fold ALS residuals (its own early stopping on a tenth of the data).
    "residual": [
        {"embedding_dim": d, "hidden": h, "learning_rate": lr, "num_epochs": 80}
        for d, h, lr in ((0, (32,), 1e-3), (0, (32,), 3e-3), (0, (64, 32), 1e-3), (4, (32,), 1e-3), (8, (32,), 1e-3))
    ],
    # The likelihood of the ratings (Gaussian, or rounded latent Gaussian: ordinal probit), the
    # number of draws kept, and implicit feedback (with a longer chain, or rounded ratings).
    "gibbs": [
        {"likelihood": "gaussian", "num_samples": 200},
        {"likelihood": "rounded", "num_samples": 200},
        {"likelihood": "gaussian", "num_samples": 500},
        {"implicit": True, "num_warmup": 50, "num_samples": 200},
        {"implicit": True, "num_warmup": 200, "num_samples": 800},
        {"implicit": True, "num_warmup": 50, "num_samples": 200, "likelihood": "rounded"},
    ],
    # Mean-field SVI: the length of the run and the draws kept from the fitted guide.
    "svi": [{"num_epochs": e, "num_samples": s} for e in (60, 120) for s in (100, 400)],
    # --rank sets the embedding dim (32 is the default).
    "mlp": [
        {"hidden": h, "dropout": p, "lam": lam}
        for h, p, lam in (((64, 32), 0.1, 0.05), ((32,), 0.1, 0.05), ((64, 32), 0.3, 0.1))
    ],
}


# --smoke: options that bound a fit's work, where the fitter takes them
SMOKE_OPTIONS = {"num_sweeps": 3, "num_epochs": 2, "patience": 1, "num_warmup": 5, "num_samples": 10}
METRICS = ("rmse", "mae", "coverage_50", "coverage_90", "nll")


def fold_data(names, smoke: bool) -> dict:
    """{fold: (base, test)}: ML-100K's uK.base / uK.test, or the tiny synthetic folds."""
    if smoke:
        return {split: (train, test) for _, split, train, test in folds("synthetic:tiny", "all") if split in names}
    return {name: load_split("ml-100k", name) for name in names}


def inner_splits(base, n: int, seed: int) -> list:
    """(train, validation) pairs inside ``base``: n-fold (disjoint validation parts), or one
    random 80/20 split for n = 1."""
    return [random_split(base, 0.2, seed=seed)] if n == 1 else kfold(base, n, seed=seed)


def grid(model: str, indices, where: dict, smoke: bool) -> list[dict]:
    """The grid rows picked by ``indices`` (all when None) whose ``where`` fields match."""
    takes = fitter_options(model)
    rows = GRIDS[model] if indices is None else [GRIDS[model][i] for i in indices]
    rows = [r for r in rows if all(r.get(k, takes[k]) == v for k, v in where.items())]
    return [smoke_cut(model, r) for r in rows[:2]] if smoke else rows


def smoke_cut(model: str, config: dict) -> dict:
    takes = fitter_options(model)
    return {**config, **{k: v for k, v in SMOKE_OPTIONS.items() if k in takes}}


def with_rank(model: str, config: dict, rank: int) -> dict:
    return {**config, "rank": rank} if "rank" in fitter_options(model) else dict(config)


def select(model: str, fold: str, base, configs: list[dict], rank: int, inner_folds: int) -> list[dict]:
    """One row per configuration: its mean validation RMSE over the inner splits of ``base``."""
    splits = inner_splits(base, inner_folds, seed=int(fold[1:]))
    rows = []
    for config in configs:
        options = with_rank(model, config, rank)
        t0 = time.perf_counter()
        results = [evaluate_fold(model, tr, va, options=options) for tr, va in splits]
        scores = [r["rmse"] for r in results]
        row = {
            "model": model,
            "kind": "inner",
            "fold": fold,
            "inner_folds": inner_folds,
            "rank": options.get("rank", 0),
            **config,
            "val_rmse": float(np.mean(scores)),
            "val_rmse_folds": [round(s, 4) for s in scores],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        # Posteriors: the worst convergence diagnostics of the validation predictions.
        r_hat = [r["r_hat_max"] for r in results if r.get("r_hat_max") is not None]
        ess = [r["ess_min"] for r in results if r.get("ess_min") is not None]
        if r_hat:
            row["r_hat_max"] = round(max(r_hat), 3)
        if ess:
            row["ess_min"] = round(min(ess), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(kind_rows: list[dict]) -> dict:
    return {
        **{m: round(float(np.mean([r[m] for r in kind_rows])), 5) for m in METRICS},
        "rmse_folds": {r["fold"]: round(r["rmse"], 4) for r in kind_rows},
    }


def parse_where(items) -> dict:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--where {item!r}: expected key=value")
        try:
            where[key] = json.loads(value)
        except json.JSONDecodeError:
            where[key] = value
    return where


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="als", choices=sorted(GRIDS))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fold", default="u1", choices=FOLDS, help="select on this fold's base file alone (default u1)")
    mode.add_argument("--nested", action="store_true", help="select on each uK.base, score on uK.test (u1..u5)")
    p.add_argument("--inner-folds", type=int, default=2, help="inner CV folds inside the base (1: one 80/20 split)")
    p.add_argument("--rank", type=int, help="rank where the model takes one (default 10; 2 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and a cut grid, for tests")
    p.add_argument(
        "--out", help="JSON lines file to append to (default results/tune.jsonl; a temporary one with --smoke)"
    )
    p.add_argument("--configs", help="comma-separated indices of the grid rows to run (default: all)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="keep grid rows with this field")
    args = p.parse_args(argv)
    rank = args.rank if args.rank is not None else (2 if args.smoke else 10)
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="probmf-tune-")) if args.smoke else None
        args.out = str(tmp / "tune.jsonl") if tmp else "results/tune.jsonl"
    if args.inner_folds < 1:
        p.error("--inner-folds must be at least 1")
    takes = fitter_options(args.model)
    try:
        where = parse_where(args.where)
    except ValueError as err:
        p.error(str(err))
    if unknown := sorted(set(where) - set(takes)):
        p.error(f"--where: {args.model} takes no option {', '.join(unknown)}")
    indices = None
    if args.configs:
        indices = [int(i) for i in args.configs.split(",")]
        if not all(0 <= i < len(GRIDS[args.model]) for i in indices):
            p.error(f"--configs: the {args.model} grid has rows 0..{len(GRIDS[args.model]) - 1}")
    configs = grid(args.model, indices, where, args.smoke)
    if not configs:
        p.error("no grid row matches --configs and --where")

    t_start = time.perf_counter()
    names = (FOLDS[:2] if args.smoke else FOLDS) if args.nested else (args.fold,)
    data = fold_data(names, args.smoke)
    inner = "one 80/20 split" if args.inner_folds == 1 else f"{args.inner_folds}-fold CV"
    print(
        f"data: {'synthetic:tiny' if args.smoke else 'ml-100k'}, folds {', '.join(names)}: {len(configs)} "
        f"configurations chosen by {inner} inside each base file{', scored on its test file' if args.nested else ''}",
        flush=True,
    )
    shipped = smoke_cut(args.model, where) if args.smoke else dict(where)
    rows, chosen, tested = [], {}, {"nested": [], "shipped": []}
    for name in names:
        base, test = data[name]
        fold_rows = select(args.model, name, base, configs, rank, args.inner_folds)
        rows += fold_rows
        best = min(range(len(configs)), key=lambda i: fold_rows[i]["val_rmse"])
        print("best:", json.dumps(fold_rows[best]), flush=True)
        if not args.nested:
            continue
        chosen[name] = configs[best]
        options = [with_rank(args.model, c, rank) for c in (chosen[name], shipped)]
        nested = evaluate_fold(args.model, base, test, options=options[0])
        same = resolve_options(args.model, options[0]) == resolve_options(args.model, options[1])
        default = nested if same else evaluate_fold(args.model, base, test, options=options[1])
        for kind, config, fit in (("nested", chosen[name], nested), ("shipped", shipped, default)):
            result = {"model": args.model, "kind": kind, "fold": name, "config": config, **fit}
            tested[kind].append(result)
            rows.append(result)
            print(json.dumps(result), flush=True)
    if args.nested:
        nested, default = summary(tested["nested"]), summary(tested["shipped"])
        line = {
            "model": args.model,
            "kind": "summary",
            "rank": tested["nested"][0]["rank"],
            "inner_folds": args.inner_folds,
            **({"where": where} if where else {}),
            "nested": nested,
            "configs": chosen,
            "shipped": {"config": shipped, **default},
            "shipped_minus_nested": {m: round(default[m] - nested[m], 5) for m in METRICS},
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        rows.append(line)
        print("nested:", json.dumps(line), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"appended {len(rows)} rows to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
