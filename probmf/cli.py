"""The ``probmf`` command line.

probmf evaluate --data ml-100k --split all --model als --rank 10 --json
probmf evaluate --train train.csv --test test.csv --model svd
"""

from __future__ import annotations

import argparse
import json
import sys

from probmf.evaluate import evaluate_fold, folds, mean_row
from probmf.fitters import FITTERS

# CLI flag -> fitter keyword
_OPTION_FLAGS = {
    "rank": "rank",
    "lam": "lam",
    "lam_bias": "lam_bias",
    "num_sweeps": "num_sweeps",
    "weight_exponent": "weight_exponent",
    "solver": "solver",
    "hidden": "hidden",
    "epochs": "num_epochs",
    "learning_rate": "learning_rate",
    "dropout": "dropout",
    "objective": "objective",
    "batch_size": "batch_size",
    "num_samples": "num_samples",
    "num_warmup": "num_warmup",
}


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="fit on training ratings, report accuracy on held-out ratings")
    p.add_argument("--data", default="ml-100k", help="ml-100k, ml-1m, ml-10m, ml-20m, ..., synthetic[:preset]")
    p.add_argument("--split", default="u1", help="u1..u5, ua, ub, all (u1..u5 and their mean), holdout")
    p.add_argument("--train", help="training ratings file (CSV userId,movieId,rating[,timestamp] or tab)")
    p.add_argument("--test", help="held-out ratings file, same formats")
    p.add_argument("--model", default="als", choices=sorted(FITTERS))
    p.add_argument("--rank", type=int, help="number of latent factors k")
    p.add_argument("--lambda", dest="lam", type=float, help="factor ridge strength (prior precision)")
    p.add_argument("--lambda-bias", dest="lam_bias", type=float, help="bias ridge strength")
    p.add_argument("--sweeps", dest="num_sweeps", type=int, help="ALS sweeps")
    p.add_argument("--weight-exponent", dest="weight_exponent", type=float, help="ALS ridge lam * n_i^alpha")
    p.add_argument("--solver", choices=["auto", "cholesky", "cg"], help="ALS row solver")
    p.add_argument("--hidden", type=int, help="AutoRec hidden units")
    p.add_argument("--epochs", type=int, help="optax, AutoRec: (most) training epochs")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, help="Adam step size")
    p.add_argument("--dropout", type=float, help="AutoRec input-dropout rate in [0, 1)")
    p.add_argument("--objective", choices=["map", "mle"], help="optax: MAP (with priors) or MLE")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="optax: ratings per step")
    p.add_argument("--samples", dest="num_samples", type=int, help="gibbs: posterior draws kept")
    p.add_argument("--warmup", dest="num_warmup", type=int, help="gibbs: burn-in sweeps")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and random splits")
    p.add_argument("--no-clip", action="store_true", help="do not clip predictions to the rating range")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of using synthetic data")
    p.add_argument("--json", action="store_true", help="one JSON object per fold")


def _print_row(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    print(
        f"{row['dataset']:>16} {row['split']:>7} {row['model']:>8} k={row['rank']:<3} "
        f"RMSE {row['rmse']:.4f}  MAE {row['mae']:.4f}  cov90 {row['coverage_90']:.3f}  n_test {row['n_test']:,.0f} "
        f"(cold {row['n_cold']:,.0f})  fit {row['fit_seconds']:.2f} s",
        flush=True,
    )


def cmd_evaluate(args) -> int:
    given = {k: getattr(args, flag) for flag, k in _OPTION_FLAGS.items() if getattr(args, flag) is not None}
    rows = []
    for dataset, split, train, test in folds(
        args.data,
        args.split,
        train_file=args.train,
        test_file=args.test,
        seed=args.seed,
        fallback=not args.no_fallback,
    ):
        row = {"dataset": dataset, "split": split}
        row.update(evaluate_fold(args.model, train, test, options=given, seed=args.seed, clip=not args.no_clip))
        rows.append(row)
        _print_row(row, args.json)
    if len(rows) > 1:
        _print_row(mean_row(rows), args.json)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="probmf", description="Probabilistic matrix factorization in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _evaluate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"evaluate": cmd_evaluate}[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"probmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
