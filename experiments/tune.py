"""Choose a fitter's default hyper-parameters by cross-validation on TRAINING data only.

    python experiments/tune.py --model als --rank 10
    python experiments/tune.py --model als --smoke     # tiny synthetic data (seconds; for tests)

For each official ML-100K fold u1..u5, the training file uX.base is split 80/20 at random
(seed X); every configuration of the grid is fitted on the 80% and scored (RMSE, clipped
to the rating range) on the 20%. The test files uX.test are never read. The
configuration with the lowest mean validation RMSE is printed last; all rows are appended
as JSON lines to ``--out`` (default results/tune.jsonl). For posteriors a row also gives the
worst R-hat and effective sample size of the validation predictions over the folds.

``--smoke`` runs the same loop on the training parts of two folds of the tiny synthetic
preset, with the first two configurations of the grid cut to a few sweeps or epochs and
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
from probmf.data.splits import random_split
from probmf.evaluate import FOLDS, evaluate_fold, fitter_options, folds

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
    "autorec-i": [
        {"lam": lam, "dropout": p, "learning_rate": lr, "patience": pat, "num_epochs": 400}
        for lam, p, lr, pat in (
            (30, 0.0, 1e-3, 20),
            (100, 0.0, 1e-3, 20),
            (300, 0.0, 1e-3, 20),
            (100, 0.5, 1e-3, 20),
            (100, 0.7, 1e-3, 20),
            (100, 0.5, 5e-4, 40),
            (150, 0.5, 5e-4, 40),
            (150, 0.5, 2.5e-4, 60),
        )
    ],
    # Adam, batch 1024: train to the MAP point on all of the inner-train ratings (cosine decay,
    # fixed epochs), or stop early on a tenth of them.
    "optax": [
        {"weight_exponent": a, "lam": lam, "lam_bias": lb, "validation_fraction": 0.0, "num_epochs": 40, "schedule": s}
        for a, lams in ((0.0, (5, 8, 12, 16, 20)), (0.5, (1, 1.5, 2)))
        for lam, lb, s in itertools.product(lams, (1.0, 3.0, 10.0), ("cosine",))
    ]
    + [{"lam": lam, "lam_bias": 3.0, "validation_fraction": 0.1} for lam in (8, 10, 12)]
    + [{"weight_exponent": 0.5, "lam": 1.5, "lam_bias": 3.0, "validation_fraction": 0.1}],
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


def training_folds(smoke: bool):
    """(name, training ratings) of the folds whose training parts are split for validation."""
    if smoke:
        return [(split, train) for _, split, train, _ in folds("synthetic:tiny", "all")][:2]
    return [(fold, load_split("ml-100k", fold)[0]) for fold in FOLDS]  # the test files are not used


def grid(model: str, smoke: bool) -> list[dict]:
    if not smoke:
        return GRIDS[model]
    takes = fitter_options(model)
    return [{**config, **{k: v for k, v in SMOKE_OPTIONS.items() if k in takes}} for config in GRIDS[model][:2]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="als", choices=sorted(GRIDS))
    p.add_argument("--rank", type=int, help="rank where the model takes one (default 10; 2 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and a cut grid, for tests")
    p.add_argument(
        "--out", help="JSON lines file to append to (default results/tune.jsonl; a temporary one with --smoke)"
    )
    p.add_argument("--configs", help="comma-separated indices of the grid rows to run (default: all)")
    args = p.parse_args(argv)
    rank = args.rank if args.rank is not None else (2 if args.smoke else 10)
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="probmf-tune-")) if args.smoke else None
        args.out = str(tmp / "tune.jsonl") if tmp else "results/tune.jsonl"

    bases = training_folds(args.smoke)
    data = "synthetic:tiny" if args.smoke else "ml-100k"
    print(
        f"data: {data}, training parts of folds {', '.join(name for name, _ in bases)}, 80/20 inner splits", flush=True
    )
    inner = [random_split(base, 0.2, seed=k) for k, (_, base) in enumerate(bases, start=1)]
    rows = []
    configs = grid(args.model, args.smoke)
    if args.configs:
        chosen = [int(i) for i in args.configs.split(",")]
        if not all(0 <= i < len(configs) for i in chosen):
            p.error(f"--configs: the {args.model} grid has rows 0..{len(configs) - 1}")
        configs = [configs[i] for i in chosen]
    for config in configs:
        options = dict(config)
        if "rank" in fitter_options(args.model):
            options["rank"] = rank
        t0 = time.perf_counter()
        results = [evaluate_fold(args.model, tr, va, options=options) for tr, va in inner]
        scores = [r["rmse"] for r in results]
        row = {
            "model": args.model,
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
    best = min(rows, key=lambda r: r["val_rmse"])
    print("best:", json.dumps(best))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"appended {len(rows)} rows to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
