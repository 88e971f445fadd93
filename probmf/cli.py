"""The ``probmf`` command line.

probmf evaluate --data ml-100k --split all --model als --rank 10 --json
probmf evaluate --train train.csv --test test.csv --model svd
probmf fit --data ml-100k --model gibbs --out models/gibbs
probmf predict --model models/gibbs --pairs pairs.csv
probmf recommend --model models/gibbs --user 196 -n 10 --strategy ucb
probmf recommend --model models/gibbs --ratings my_ratings.csv
probmf info --model models/gibbs
probmf partition --train ratings.csv --out parts --parts 8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from probmf import __version__

if TYPE_CHECKING:  # for annotations only: the commands import what they use
    import scipy.sparse as sp

    from probmf.persistence import FittedModel

# JAX and the fitters are imported by the commands that need them, so that `probmf --help`
# and `probmf --version` answer at once. The names the parser offers are spelled here (a test
# checks them against `probmf.fitters.FITTERS` and `probmf.recommend.STRATEGIES`).
MODELS = ("als", "autorec-i", "autorec-u", "baseline", "gibbs", "mlp", "nuts", "optax", "residual", "svd", "svi")
STRATEGIES = ("mean", "ucb", "thompson")

# The flags that are fitter options: each dest is the fitter keyword (flags spell it with
# dashes; the older spellings --lambda, --sweeps, --epochs, --samples, --warmup are aliases, and
# --svi-engine of --engine)
_MODEL_OPTIONS = (
    "rank",
    "lam",
    "lam_bias",
    "num_sweeps",
    "weight_exponent",
    "solver",
    "hidden",
    "num_epochs",
    "learning_rate",
    "dropout",
    "objective",
    "batch_size",
    "num_samples",
    "num_warmup",
    "linalg",
    "devices",
    "checkpoint",
    "checkpoint_every",
    "keep_draws",
    "likelihood",
    "implicit",
    "implicit_solver",
    "num_chains",
    "time_bins",
    "engine",
)


def _hidden(text: str) -> int | tuple[int, ...]:
    """ "500" -> 500 (one layer); "64,32" -> (64, 32)."""
    widths = tuple(int(w) for w in text.split(","))
    return widths[0] if len(widths) == 1 else widths


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """--model and every fitter option (each applies to the fitters that take it)."""
    p.add_argument("--model", default="als", choices=MODELS)
    p.add_argument("--rank", type=int, help="number of latent factors k")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="factor ridge strength (prior precision)")
    p.add_argument("--lam-bias", "--lambda-bias", dest="lam_bias", type=float, help="bias ridge strength")
    p.add_argument("--num-sweeps", "--sweeps", dest="num_sweeps", type=int, help="ALS sweeps")
    p.add_argument("--weight-exponent", dest="weight_exponent", type=float, help="ALS ridge lam * n_i^alpha")
    p.add_argument("--solver", choices=["auto", "cholesky", "cg"], help="ALS row solver")
    p.add_argument("--hidden", type=_hidden, help="AutoRec hidden units; mlp, residual: layer widths, e.g. 64,32")
    p.add_argument(
        "--num-epochs", "--epochs", dest="num_epochs", type=int, help="optax, AutoRec: (most) training epochs"
    )
    p.add_argument("--learning-rate", dest="learning_rate", type=float, help="Adam step size")
    p.add_argument("--dropout", type=float, help="AutoRec input-dropout rate in [0, 1)")
    p.add_argument("--objective", choices=["map", "mle"], help="optax: MAP (with priors) or MLE")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="optax: ratings per step")
    p.add_argument("--num-samples", "--samples", dest="num_samples", type=int, help="gibbs: posterior draws kept")
    p.add_argument("--num-warmup", "--warmup", dest="num_warmup", type=int, help="gibbs: burn-in sweeps")
    p.add_argument("--chains", dest="num_chains", type=int, help="gibbs: independent chains, pooled (default 1)")
    p.add_argument("--likelihood", choices=["gaussian", "rounded"], help="gibbs: ratings as rounded latent Gaussians")
    p.add_argument(
        "--linalg",
        choices=["auto", "lapack", "jax"],
        help="gibbs: Cholesky by LAPACK or without it (auto: LAPACK up to rank 32)",
    )
    p.add_argument(
        "--engine",
        "--svi-engine",
        dest="engine",
        choices=["fast", "numpyro"],
        help="svi: the hand-written mean-field step (fast, the default) or NumPyro's own SVI with Trace_ELBO",
    )
    p.add_argument(
        "--implicit",
        action="store_const",
        const=True,
        help="gibbs: implicit feedback, which items each user rated and which users rated each item",
    )
    p.add_argument(
        "--implicit-solver",
        dest="implicit_solver",
        choices=["auto", "eigen", "cg"],
        help="gibbs --implicit: draw the implicit vectors exactly by eigendecomposition, by conjugate gradients, "
        "or auto (eigen up to 12,000 users or items, CG past it)",
    )
    p.add_argument(
        "--summary-only",
        dest="keep_draws",
        action="store_const",
        const=False,
        help="gibbs, evaluate: keep running predictive moments of the test pairs, not the draws",
    )
    p.add_argument(
        "--features",
        type=_feature_sides,
        help="gibbs: side information of a MovieLens --data, any of user,item (ML-100K u.user, u.item; ...), "
        "and time (time effects from the ratings' timestamps, as in timeSVD++)",
    )
    p.add_argument("--time-bins", dest="time_bins", type=int, help="gibbs --features time: number of item time bins")
    p.add_argument("--user-features", dest="user_features", metavar="PATH", help="gibbs: user attributes (CSV)")
    p.add_argument("--item-features", dest="item_features", metavar="PATH", help="gibbs: item attributes (CSV)")
    p.add_argument("--devices", type=int, help="split the work across this many devices (JAX sharding)")
    p.add_argument("--checkpoint", metavar="DIR", help="save the run's state in DIR and resume from it")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="steps between checkpoints")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="fit on training ratings, report accuracy on held-out ratings")
    p.add_argument("--data", default="ml-100k", help="ml-100k, ml-1m, ml-10m, ml-20m, ..., synthetic[:preset]")
    p.add_argument("--split", default="u1", help="u1..u5, ua, ub, all (u1..u5 and their mean), holdout")
    p.add_argument("--train", help="training ratings file (CSV userId,movieId,rating[,timestamp] or tab)")
    p.add_argument("--test", help="held-out ratings file, same formats")
    _add_model_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and random splits")
    p.add_argument("--no-clip", action="store_true", help="do not clip predictions to the rating range")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of using synthetic data")
    p.add_argument(
        "--ranking",
        nargs="?",
        type=int,
        const=10,
        metavar="K",
        help="also report precision@K, recall@K and NDCG@K (default K = 10) on held-out ratings >= 4",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per fold")


def _print_row(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    print(
        f"{row['dataset']:>16} {row['split']:>7} {row['model']:>8} k={row['rank']:<3} "
        f"RMSE {row['rmse']:.4f}  MAE {row['mae']:.4f}  cov90 {row['coverage_90']:.3f}  n_test {row['n_test']:,.0f} "
        f"(cold {row['n_cold']:,.0f}{_cold_text(row)})  fit {row['fit_seconds']:.2f} s{_convergence_text(row)}",
        flush=True,
    )


def _cold_text(row: dict) -> str:
    """The cold pairs' RMSE and coverage, when the row has cold pairs."""
    if row.get("rmse_cold") is None:
        return ""
    return f": RMSE {row['rmse_cold']:.4f}  cov50 {row['coverage_50_cold']:.3f}  cov90 {row['coverage_90_cold']:.3f}"


def _convergence_text(row: dict) -> str:
    """A Bayesian model's worst R-hat and ESS over the checked test pairs, when it has them."""
    if row.get("r_hat_max") is None:
        return ""
    bulk, tail = row.get("ess_min"), row.get("ess_tail_min")
    text = f"  R-hat {row['r_hat_max']:.3f}"
    if bulk is not None:
        text += f"  ESS {bulk:.0f}" + ("" if tail is None else f" (tail {tail:.0f})")
    return text


SUMMARY_RANKING = (
    "--summary-only cannot be combined with --ranking: ranking scores every item for each test user, "
    "and a summary-only fit keeps the predictive moments of the test pairs alone; drop --summary-only "
    "to rank (the draws are kept), or drop --ranking"
)


def _check_evaluate_args(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot work, before any data is read or model fitted."""
    if args.keep_draws is False and args.ranking is not None:
        raise ValueError(SUMMARY_RANKING)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from probmf.evaluate import evaluate_fold, folds, mean_row

    _check_evaluate_args(args)
    given = _given_options(args)
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
        row.update(
            evaluate_fold(
                args.model, train, test, options=given, seed=args.seed, clip=not args.no_clip, ranking_k=args.ranking
            )
        )
        rows.append(row)
        _print_row(row, args.json)
    if len(rows) > 1:
        _print_row(mean_row(rows), args.json)
    return 0


def _given_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line; feature files and ``--features`` sides
    read as `probmf.data.features.FeatureTable` (the fitter aligns them with each fold);
    ``--features time`` is ``time=True``."""
    from probmf.data.features import read_features
    from probmf.data.movielens import load_features

    given = {k: getattr(args, k) for k in _MODEL_OPTIONS if getattr(args, k) is not None}
    if "time" in (args.features or ()):
        given["time"] = True
    for side in ("user", "item"):
        path = getattr(args, f"{side}_features")
        if path is not None:
            given[f"{side}_features"] = read_features(path)
        elif side in (args.features or ()):
            if args.train:
                raise ValueError(
                    f"--features {side} reads a MovieLens --data's files; with --train give --{side}-features"
                )
            given[f"{side}_features"] = load_features(args.data, side)
    return given


def _feature_sides(text: str) -> tuple[str, ...]:
    sides = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in sides if s not in ("user", "item", "time")]
    if bad or not sides:
        raise argparse.ArgumentTypeError(f"--features takes any of user,item,time (comma-separated), got {text!r}")
    return sides


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit a model on all given ratings and save it")
    p.add_argument("--data", default="ml-100k", help="ml-100k, ..., synthetic[:preset] (all ratings are used)")
    p.add_argument(
        "--train",
        help="ratings file to fit instead of --data, or a folder written by `probmf partition` (als, gibbs: each "
        "process of a --distributed run reads only its own rows)",
    )
    _add_model_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder to save the model in (replaced only on success)")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of using synthetic data")
    p.add_argument("--json", action="store_true")


def cmd_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    import jax

    from probmf.data.io import read_ratings
    from probmf.data.partitioned import PartitionedRatings, open_partitioned
    from probmf.evaluate import load_ratings
    from probmf.fitters.run import fit_model
    from probmf.persistence import FittedModel, save_model
    from probmf.sharding import to_host

    if args.train and Path(args.train).is_dir():  # written by `probmf partition`: each process reads its rows
        train, dataset = open_partitioned(args.train), str(args.train)
    elif args.train:
        train, dataset = read_ratings(args.train), str(args.train)
    else:
        train, dataset = load_ratings(args.data, fallback=not args.no_fallback)
    fitted, options, seconds = fit_model(args.model, train, options=_given_options(args), seed=args.seed)
    # Under --distributed the rows may be split across processes: every process takes part in
    # gathering them, then process 0 alone writes the model (one writer for a shared --out).
    fitted = to_host(fitted)
    if jax.process_index() != 0:
        return 0
    if isinstance(train, PartitionedRatings):
        model = FittedModel.from_partitioned(args.model, options, fitted, train, dataset)
    else:
        model = FittedModel.from_training(args.model, options, fitted, train, dataset)
    path = save_model(args.out, model)
    info = {"saved": str(path), "model": args.model, "dataset": dataset, "rank": int(fitted.rank),
            "n_train": len(train), "fit_seconds": round(seconds, 3)}  # fmt: skip
    text = f"saved {args.model} (rank {info['rank']}) fitted on {len(train):,} ratings of {dataset} to {path}"
    print(json.dumps(info) if args.json else f"{text} in {seconds:.1f} s")
    return 0


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict ratings for (user, item) pairs with a saved model")
    p.add_argument("--model", required=True, help="a folder written by probmf fit")
    p.add_argument(
        "--pairs",
        required=True,
        help="CSV with header userId,movieId[,timestamp,...] (or tab format); a model with time effects "
        "predicts each pair at its timestamp (seconds), or now without one",
    )
    p.add_argument("--no-clip", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per pair")


def cmd_predict(args: argparse.Namespace) -> int:
    from probmf.data.io import read_pairs
    from probmf.persistence import load_model
    from probmf.recommend import predict_pairs

    model = load_model(args.model)
    posterior = model.fitted.posterior
    if posterior is not None and posterior.time is not None:  # time effects: at the pairs' times
        users, items, times = read_pairs(args.pairs, times=True)
    else:
        (users, items), times = read_pairs(args.pairs), None
    p = predict_pairs(model, users, items, times=times, clip=not args.no_clip)
    if not args.json:
        print("userId,movieId,prediction,sd,known")
    for k in range(len(users)):
        row = {"userId": _py(users[k]), "movieId": _py(items[k]), "prediction": round(float(p.mean[k]), 4),
               "sd": None if p.sd is None else _round(p.sd[k]), "known": bool(p.known[k])}  # fmt: skip
        print(json.dumps(row) if args.json else ",".join(str(v) for v in row.values()))
    return 0


def _recommend_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="top-N items for a user of a saved model, or for a new user")
    p.add_argument("--model", required=True, help="a folder written by probmf fit")
    p.add_argument("--user", help="a user id the model was trained on, or a new user's id in --user-features")
    p.add_argument("--ratings", help="a new user's ratings (CSV movieId,rating), folded in without retraining")
    p.add_argument(
        "--user-features",
        metavar="PATH",
        help="the user attributes file the model was fitted with, unchanged: a new user's (--user) attributes "
        "are its row (gibbs fitted with user features; with or without --ratings)",
    )
    p.add_argument("-n", type=int, default=10, help="how many items")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="mean",
                   help="rank by predicted mean, upper 90%% bound (ucb) or one posterior draw (thompson)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="for thompson and the fold-in of Bayesian models")
    p.add_argument(
        "--titles",
        help="item titles: a u.item-style file (id|title|...), movies.dat (id::title::...) or a CSV "
        "movieId,title[,genres]; by default the titles of the MovieLens dataset the model was fitted on, "
        "when the saved model names it and the dataset is on disk",
    )
    p.add_argument("--json", action="store_true")


def cmd_recommend(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from probmf.data.io import read_new_user
    from probmf.data.ratings import UNKNOWN
    from probmf.persistence import load_model
    from probmf.recommend import fold_in, recommend, score_user, title_of, titles_for

    model = load_model(args.model)
    titles = titles_for(args.titles, model.dataset)  # before scoring: a bad titles file fails fast
    key = jax.random.PRNGKey(args.seed)
    if args.user is None and args.ratings is None:
        raise ValueError("recommend needs --user ID (known, or new with --user-features) or --ratings FILE")
    raw_user = None if args.user is None else args.user if model.user_ids.raw.dtype.kind in "US" else _as_int(args.user)
    user = UNKNOWN if raw_user is None else int(model.user_ids.index([raw_user])[0])
    if user != UNKNOWN and args.ratings:
        raise ValueError(f"user {args.user!r} is known to the model; --ratings folds in a new user")
    attributes = _new_user_attributes(model, args.user_features, raw_user) if user == UNKNOWN else None
    if user != UNKNOWN:
        scores, rated = score_user(model, user, rng_key=key), model.rated(user)
    elif args.ratings or attributes is not None:
        items, values = read_new_user(args.ratings) if args.ratings else (np.array([]), np.array([]))
        scores, rated = fold_in(model, items, values, attributes=attributes, rng_key=key)
    else:
        raise ValueError(
            f"user {args.user!r} is not known to the model; pass --ratings FILE to fold in a new user, "
            "or --user-features PATH with their attributes"
        )
    rec = recommend(model, scores, n=args.n, exclude=rated, strategy=args.strategy)
    for k in range(len(rec.items)):
        row = {"rank": k + 1, "movieId": _py(rec.items[k]), "score": round(float(rec.score[k]), 4),
               "mean": round(float(rec.mean[k]), 4), "sd": None if rec.sd is None else _round(rec.sd[k])}  # fmt: skip
        row["title"] = title_of(titles, rec.items[k])
        if not args.json:  # text: a title column only when there are titles; "?" for an item without one
            if titles is None:
                del row["title"]
            elif row["title"] is None:
                row["title"] = "?"
        print(json.dumps(row) if args.json else "  ".join(f"{name}={v}" for name, v in row.items()))
    return 0


def _new_user_attributes(model: FittedModel, path: str | None, raw_user: object) -> sp.csr_matrix | None:
    """The (1, G) row of ``raw_user`` in the user attributes file ``path`` (None without a
    path), checked against the attributes the model was fitted with."""
    if path is None:
        return None
    from probmf.data.features import read_features, row_of

    if raw_user is None:
        raise ValueError("--user-features needs --user: the new user's id in that file")
    fitted_with = model.options.get("user_features")
    if fitted_with is None:
        raise ValueError(f"--user-features: the model ({model.model}) was not fitted with user attributes")
    if not isinstance(fitted_with, str) or " rows x " not in fitted_with:
        raise ValueError(
            "--user-features: the model was fitted with an attribute matrix, not a file; "
            "pass the user's row in Python (probmf.recommend.fold_in(..., attributes=))"
        )
    table = read_features(path)
    # describe(): "<source>: <n> rows x <F> columns (<groups>)". Only the columns' count and groups
    # can be checked: numeric columns are standardised over the file and categories come from
    # it, so the file must be the one the model was fitted with (help text).
    columns = table.describe().rpartition(" rows x ")[2]
    if fitted_with.rpartition(" rows x ")[2] != columns:
        raise ValueError(f"{path}: its columns, {columns}, are not those the model was fitted with ({fitted_with})")
    row = row_of(table, raw_user)
    if row is None:
        raise ValueError(f"{path} has no row for user {raw_user!r}")
    return row


def _info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a saved model")
    p.add_argument("--model", required=True)
    p.add_argument("--json", action="store_true")


def cmd_info(args: argparse.Namespace) -> int:
    from probmf.persistence import load_model

    model = load_model(args.model)
    info = {
        "model": model.model,
        "rank": int(model.fitted.rank),
        "num_users": len(model.user_ids),
        "num_items": len(model.item_ids),
        "rating_range": list(model.rating_range),
        "options": model.options,
        "num_samples": int(model.fitted.num_samples),
    }
    print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _partition_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition",
        help="write ratings as Parquet split by user and by item row blocks, for fits whose processes "
        "each read only their own rows",
    )
    p.add_argument("--train", required=True, help="ratings file (CSV userId,movieId,rating[,timestamp], tab, Parquet)")
    p.add_argument("--out", required=True, help="folder to write (a folder an earlier partition wrote is replaced)")
    p.add_argument("--parts", type=int, required=True, help="row blocks per side, e.g. the number of devices")
    p.add_argument("--json", action="store_true")


def cmd_partition(args: argparse.Namespace) -> int:
    from probmf.data.io import read_ratings
    from probmf.data.partitioned import partition

    if args.parts < 1:
        raise ValueError(f"--parts must be a positive integer, got {args.parts}")
    part = partition(read_ratings(args.train), args.out, args.parts, source=str(args.train))
    info = {"saved": str(part.path), "n_ratings": len(part), "num_users": part.num_users,
            "num_items": part.num_items, "parts": part.parts}  # fmt: skip
    text = (f"wrote {len(part):,} ratings of {part.num_users:,} users x {part.num_items:,} items in "
            f"{part.parts} parts per side to {part.path}")  # fmt: skip
    print(json.dumps(info) if args.json else text)
    return 0


def _round(x: Any) -> float | None:
    """x to 4 decimals; None (JSON null) for NaN, the sd of a point model saved without one."""
    import numpy as np

    return round(float(x), 4) if np.isfinite(x) else None


def _py(x: Any) -> Any:
    import numpy as np

    return x.item() if isinstance(x, np.generic) else x


def _as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"user id {text!r} is not an integer, and the model's user ids are") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probmf", description="Probabilistic matrix factorization in JAX.")
    parser.add_argument("--version", action="version", version=f"probmf {__version__}")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="several hosts: call jax.distributed.initialize() first (run the same command on every host; "
        "fit: process 0 saves the model)",
    )
    parser.add_argument("--coordinator", help="with --distributed outside a cluster manager: host:port of process 0")
    parser.add_argument("--num-processes", dest="num_processes", type=int, help="with --coordinator: hosts in all")
    parser.add_argument("--process-id", dest="process_id", type=int, help="with --coordinator: this host's index")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_evaluate_parser, _fit_parser, _predict_parser, _recommend_parser, _info_parser, _partition_parser):
        add(sub)
    args = parser.parse_args(argv)
    import jax

    from probmf.checkpoint import show_progress

    if args.distributed:
        # Without --coordinator, JAX detects the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes).
        # --devices then counts the devices of all hosts.
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        commands = {"evaluate": cmd_evaluate, "fit": cmd_fit, "predict": cmd_predict, "recommend": cmd_recommend,
                    "info": cmd_info, "partition": cmd_partition}  # fmt: skip
        # A progress bar on stderr when a person watches it (a terminal), never in a pipe or log.
        with show_progress(sys.stderr.isatty() or None):
            return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"probmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
