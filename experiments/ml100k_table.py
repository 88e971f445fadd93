"""Every model on the official MovieLens 100K folds u1..u5 at its defaults: the README table.

    python experiments/ml100k_table.py [--models als gibbs ...] [--out results/ml100k.jsonl]
    python experiments/ml100k_table.py --smoke       # tiny synthetic data (seconds; for tests)

Runs `probmf.evaluate` on u1..u5 for each model, appends every fold row and the mean row
(the `probmf evaluate --json` schema) to ``--out``, and prints a Markdown table of the means
with the first fold's (u1) RMSE beside them.

``--smoke`` does the same on two folds (u1, u2) of the tiny synthetic preset, by default for
baseline and als, with rank 2 and a few sweeps, epochs or draws per fit, and writes to a new
temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from probmf.evaluate import evaluate_fold, folds, mean_row
from probmf.fitters import FITTERS
from probmf.fitters.run import fitter_options

# Table rows beyond the fitters at their defaults: name -> (fitter, options)
VARIANTS = {"gibbs-implicit": ("gibbs", {"implicit": True})}
DEFAULT_MODELS = ["baseline", "svd", "als", "optax", "autorec-i", "autorec-u", "mlp", "residual", "svi", "gibbs",
                  "gibbs-implicit"]  # fmt: skip
SMOKE_MODELS = ["baseline", "als"]
# --smoke: options that bound a fit's work, where the fitter takes them
SMOKE_OPTIONS = {"rank": 2, "num_sweeps": 3, "num_epochs": 2, "patience": 1, "num_warmup": 5, "num_samples": 10}


def options_for(name: str, smoke: bool) -> tuple[str, dict]:
    """(fitter, options) of a table row: a fitter at its defaults or a `VARIANTS` entry, with
    --smoke also the `SMOKE_OPTIONS` the fitter takes."""
    model, options = VARIANTS.get(name, (name, {}))
    if not smoke:
        return model, dict(options)
    takes = fitter_options(model)
    return model, {**options, **{k: v for k, v in SMOKE_OPTIONS.items() if k in takes}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(FITTERS) + sorted(VARIANTS),
                   help="default: all in the README table")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and short fits, for tests")
    p.add_argument(
        "--out", help="JSON lines file to append to (default results/ml100k.jsonl; a temporary one with --smoke)"
    )
    args = p.parse_args(argv)
    models = args.models or (SMOKE_MODELS if args.smoke else DEFAULT_MODELS)
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="probmf-ml100k-")) if args.smoke else None
        args.out = str(tmp / "ml100k.jsonl") if tmp else "results/ml100k.jsonl"
    data = list(folds("synthetic:tiny" if args.smoke else "ml-100k", "all", fallback=False))
    if args.smoke:
        data = data[:2]  # each fold's shapes compile anew; two folds exercise the mean row
    print(f"data: {data[0][0]}, folds {', '.join(split for _, split, _, _ in data)}", flush=True)
    means = []
    for name in models:
        model, options = options_for(name, args.smoke)
        rows = []
        for dataset, split, train, test in data:
            row = {"dataset": dataset, "split": split, **evaluate_fold(model, train, test, options=options)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(mean_row(rows))
        means.append((name, rows[-1], rows[0]))
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            print(f"appended {len(rows)} rows to {out}", file=sys.stderr, flush=True)
    first = data[0][1]
    print(f"| model | rank | RMSE | MAE | coverage 50% | coverage 90% | NLL | fit s | {first} RMSE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r, r1 in means:
        print(
            f"| `{name}` | {r['rank']} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['coverage_50']:.3f} | "
            f"{r['coverage_90']:.3f} | {r['nll']:.3f} | {r['fit_seconds']:.1f} | {r1['rmse']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
