"""Every model on the official MovieLens 100K folds u1..u5 at its defaults: the README table.

    python experiments/ml100k_table.py [--models als gibbs ...] [--out results/ml100k.jsonl]

Runs `probmf.evaluate` on u1..u5 for each model, appends every fold row and the mean row
(the `probmf evaluate --json` schema) to ``--out``, and prints a Markdown table of the means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probmf.evaluate import evaluate_fold, folds, mean_row
from probmf.fitters import FITTERS

DEFAULT_MODELS = ["baseline", "svd", "als", "optax", "autorec-i", "autorec-u", "gibbs"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(FITTERS))
    p.add_argument("--out", default="results/ml100k.jsonl")
    args = p.parse_args(argv)
    data = list(folds("ml-100k", "all", fallback=False))
    means = []
    for model in args.models:
        rows = []
        for dataset, split, train, test in data:
            row = {"dataset": dataset, "split": split, **evaluate_fold(model, train, test, options={})}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(mean_row(rows))
        means.append(rows[-1])
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    print("| model | rank | RMSE | MAE | coverage 50% | coverage 90% | NLL | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in means:
        print(
            f"| `{r['model']}` | {r['rank']} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['coverage_50']:.3f} | "
            f"{r['coverage_90']:.3f} | {r['nll']:.3f} | {r['fit_seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
