"""What each ingredient of the Bayesian model buys on MovieLens 100K: an ablation, per fold.

    python experiments/ml100k_features.py                       # u1..u5, every variant (~30 min)
    python experiments/ml100k_features.py --splits u1 --variants implicit both
    python experiments/ml100k_features.py --smoke               # tiny synthetic data, for tests

Each variant is `gibbs` at its defaults (rank 10; 200 + 800 sweeps with implicit feedback) with
one more ingredient than the row above it, fitted on ``uK.base`` and scored on ``uK.test`` by
`probmf.evaluate.evaluate_fold`, so a row is what ``probmf evaluate --model gibbs ...`` prints
for the same options:

    plain      gibbs
    implicit   --implicit
    user       --implicit --features user       (u.user: age, age bucket, gender, occupation, zip digit)
    item       --implicit --features item       (u.item: genres, release year and decade)
    both       --implicit --features user,item
    rounded    --implicit --features user,item --likelihood rounded
    time       --implicit --features time       (timeSVD++'s item bias per time bin and user drift)
    all        --implicit --features user,item,time --likelihood rounded
    plain-user --features user                  (not in the default list: for --cold-users)

No variant is chosen on a test file: the list is fixed in advance, and the table reports each.
Prints one JSON line per (variant, fold), appended to ``--out``, then a table of RMSE per fold
and the mean, with the 90% coverage of the mean column.

``--inner uK`` scores on an 80/20 split of ``uK.base`` (seed 1) instead, the way a default is
chosen without a test file; ``--rank`` sets the rank of every variant.

``--cold-users F`` measures cold start instead: a share F of the users (seeded) is held out
entirely, all their ratings the test set, the rest of the data the training set, both over the
id map of every user and item; a held-out user is then a row with no training rating whose
attributes are known. Each variant is scored on those ratings, and so is ``baseline`` (mu + c_j
for a cold user: the bias-only prediction).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np

from probmf.data.features import from_columns
from probmf.data.movielens import load_features, load_movielens, load_split
from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.evaluate import evaluate_fold
from probmf.fitters.gibbs import GibbsConfig

KEPT = ("rmse", "mae", "coverage_90", "nll", "rmse_cold", "fit_seconds", "seconds_per_sweep", "options")
SPLITS = ("u1", "u2", "u3", "u4", "u5")
VARIANTS = {
    "plain": {},
    "implicit": {"implicit": True},
    "user": {"implicit": True, "features": ("user",)},
    "item": {"implicit": True, "features": ("item",)},
    "both": {"implicit": True, "features": ("user", "item")},
    "rounded": {"implicit": True, "features": ("user", "item"), "likelihood": "rounded"},
    "time": {"implicit": True, "features": ("time",)},
    "all": {"implicit": True, "features": ("user", "item", "time"), "likelihood": "rounded"},
    "plain-user": {"features": ("user",)},  # attributes without implicit feedback (for --cold-users)
}


def _options(variant: dict, tables: dict) -> dict:
    """The fitter options of a variant: its ``features`` sides as the loaded tables ("time":
    ``time=True``, from the ratings' timestamps)."""
    options = {k: v for k, v in variant.items() if k != "features"}
    sides = variant.get("features", ())
    options.update({f"{side}_features": tables[side] for side in sides if side != "time"})
    if "time" in sides:
        options["time"] = True
    return options


def _smoke_data():
    """Tiny synthetic folds and attribute tables (seconds), with short chains."""
    ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=800, round_to_half_stars=True,
                                   clip=(0.5, 5.0), seed=0)  # fmt: skip
    train, test = random_split(ratings, 0.2, seed=0)
    users = from_columns(train.user_ids.raw, {"g": train.user_ids.raw % 3}, source="smoke users")
    items = from_columns(train.item_ids.raw, {"kind": [f"k{i % 4}" for i in train.item_ids.raw]}, source="smoke items")
    return (lambda split: (train, test)), {"user": users, "item": items}, {"num_warmup": 3, "num_samples": 3}


def cold_user_split(ratings, fraction: float, seed: int):
    """(train, test): the ratings of a seeded share ``fraction`` of the users held out whole,
    both parts over ``ratings``' id maps (so a held-out user is a known id with no rating)."""
    rng = np.random.default_rng(seed)
    held = rng.random(ratings.num_users) < fraction
    mask = held[ratings.users]
    return ratings.take(~mask), ratings.take(mask)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:-1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON lines file to append each row to")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and short chains, for tests")
    p.add_argument("--cold-users", type=float, metavar="F", help="hold out this share of the users entirely")
    p.add_argument("--inner", choices=SPLITS, help="score on an 80/20 split of this fold's base file (seed 1)")
    p.add_argument("--rank", type=int, help="rank of every variant (default: gibbs's)")
    args = p.parse_args(argv)
    if args.smoke:
        fold, tables, extra = _smoke_data()
    else:
        fold = lambda split: load_split("ml-100k", split)  # noqa: E731
        tables, extra = {side: load_features("ml-100k", side) for side in ("user", "item")}, {}
    if args.inner is not None:
        fit, val = random_split(fold(args.inner)[0], 0.2, seed=1)
        inner = (fit, val.reindex(fit.user_ids, fit.item_ids))
        fold, args.splits = (lambda name: inner), [f"{args.inner}.base 80/20"]
    if args.rank is not None:
        extra = {**extra, "rank": args.rank}
    if args.cold_users is not None:
        everything = fold("u1")[0] if args.smoke else load_movielens("ml-100k")
        held_out = cold_user_split(everything, args.cold_users, args.seed)
        fold, args.splits = (lambda name: held_out), [f"cold users {args.cold_users:g}"]
        args.variants = ["baseline", *args.variants]
    rows = []
    for name in args.variants:
        for split in args.splits:
            train, test = fold(split)
            model, options = (
                ("baseline", {}) if name == "baseline" else ("gibbs", {**_options(VARIANTS[name], tables), **extra})
            )
            row = evaluate_fold(model, train, test, options=options, seed=args.seed)
            if model == "gibbs":  # the sweeps of the fit (its ALS start and compile time included)
                o = row["options"]
                c = GibbsConfig(num_warmup=o["num_warmup"], num_samples=o["num_samples"], thin=o["thin"],
                                implicit=o["implicit"]).validate()  # fmt: skip
                sweeps = c.num_warmup + c.num_samples * c.thin
                row["seconds_per_sweep"] = round(row["fit_seconds"] / sweeps, 4)
            out = {"variant": name, "split": split, **{k: row.get(k) for k in KEPT}}
            rows.append(out)
            print(json.dumps(out), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(out) + "\n")
    print(f"\n| variant | {' | '.join(args.splits)} | mean | coverage 90% |\n|---|{'---|' * len(args.splits)}---|---|")
    for name in args.variants:
        mine = [r for r in rows if r["variant"] == name]
        rmses = " | ".join(f"{r['rmse']:.4f}" for r in mine)
        mean = statistics.fmean(r["rmse"] for r in mine)
        print(f"| {name} | {rmses} | {mean:.4f} | {statistics.fmean(r['coverage_90'] for r in mine):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
