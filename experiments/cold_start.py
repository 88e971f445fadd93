"""New users on MovieLens 100K: recommendations from demographics alone, then from a few ratings.

    python experiments/cold_start.py                  # ML-100K, ~10 min on 2 CPU cores
    python experiments/cold_start.py --smoke          # tiny synthetic data, for tests

A seeded share (``--fraction``, 0.1) of the users is held out entirely: the models are fitted
on the other users' ratings, so a held-out user is not in any model's id map, and then meets it
as a new user does, through `probmf.recommend.fold_in` (no refit): with the user's attributes
(u.user: age, gender, occupation, zip digit) and their first n ratings in time, for n in
``--shots`` (0 1 3 5 10). Every n is scored on the same ratings, each held-out user's ratings
after their first max(shots), so the rows of one model are comparable across n.

Models (fixed in advance; none is chosen on the scored ratings):
    baseline       mu + c_j + the user's fitted bias (the bias-only prediction; n = 0: mu + c_j)
    als            the MAP row solved against the fixed items
    gibbs          each draw's conditional row under its cold-user prior, N(m, S)
    gibbs-user     `gibbs --features user`, folded in with the user's attributes: N(m + x A, S)
    gibbs-user-x   the same fit folded in without them (the id map's average row)

Prints one JSON line per (model, n) (also appended to ``--out``) and a table of RMSE and 90%
coverage by n.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from probmf.data.features import from_columns, row_of
from probmf.data.io import to_ratings
from probmf.data.movielens import load_features, load_movielens
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.run import fit_model
from probmf.metrics import interval_scores, rmse
from probmf.persistence import FittedModel
from probmf.recommend import fold_in

MODELS = {
    "baseline": ("baseline", False, {}),
    "als": ("als", False, {}),
    "gibbs": ("gibbs", False, {}),
    "gibbs-user": ("gibbs", True, {}),
    "gibbs-user-x": ("gibbs", False, {}),  # the gibbs-user fit, folded in without attributes
}


def held_out_users(ratings, fraction: float, seed: int) -> np.ndarray:
    """bool (num_users,): the seeded share ``fraction`` of the users held out entirely."""
    return np.random.default_rng(seed).random(ratings.num_users) < fraction


def new_user_episodes(ratings, held: np.ndarray, shots: int):
    """Per held-out user with more than ``shots`` ratings: (raw user, raw items and ratings in
    time order (ties by item), their first ``shots`` the fold-in pool, the rest scored)."""
    episodes = []
    ts = ratings.timestamps if ratings.timestamps is not None else np.zeros(len(ratings), np.int64)
    for u in np.flatnonzero(held):
        mine = np.flatnonzero(ratings.users == u)
        mine = mine[np.lexsort((ratings.items[mine], ts[mine]))]
        if mine.size > shots:
            items = ratings.item_ids.raw[ratings.items[mine]]
            episodes.append((ratings.user_ids.raw[u], items, ratings.values[mine]))
    return episodes


def _data(smoke: bool):
    if smoke:
        ratings, _ = synthetic_ratings(num_users=80, num_items=40, num_ratings=1600, round_to_half_stars=True,
                                       clip=(0.5, 5.0), seed=0)  # fmt: skip
        users = from_columns(ratings.user_ids.raw, {"g": ratings.user_ids.raw % 3}, source="smoke users")
        return ratings, users, {"gibbs": {"num_warmup": 5, "num_samples": 10}, "als": {"num_sweeps": 5}}
    return load_movielens("ml-100k"), load_features("ml-100k", "user"), {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=0.1, help="share of the users held out entirely")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3, 5, 10], help="ratings folded in (first in time)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON lines file to append each row to")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and short fits, for tests")
    args = p.parse_args(argv)
    ratings, users, short = _data(args.smoke)
    held = held_out_users(ratings, args.fraction, args.seed)
    keep = ~held[ratings.users]
    df = ratings.to_dataframe()
    train = to_ratings(df[keep])  # its own id maps: a held-out user is in none
    episodes = new_user_episodes(ratings, held, max(args.shots))
    print(f"{len(train):,} training ratings; {len(episodes)} new users, "
          f"{sum(len(e[1]) - max(args.shots) for e in episodes):,} scored ratings", flush=True)  # fmt: skip
    fits: dict = {}
    rows = []
    for name in args.models:
        fitter, with_attributes, _ = MODELS[name]
        features = name.startswith("gibbs-user")
        if (fitter, features) not in fits:
            options = dict(short.get(fitter, {}))
            if features:
                options["user_features"] = users
            fitted, opts, _ = fit_model(fitter, train, options=options, seed=args.seed)
            fits[fitter, features] = FittedModel.from_training(fitter, opts, fitted, train)
        model = fits[fitter, features]
        for n in args.shots:
            means, sds, truth = [], [], []
            for raw_user, items, values in episodes:
                row = row_of(users, raw_user) if with_attributes else None
                (mean, sd, _), _ = fold_in(model, items[:n], values[:n], attributes=row)
                scored = model.item_ids.index(items[max(args.shots) :])
                means.append(np.clip(mean[scored], *model.rating_range))
                sds.append(sd[scored])
                truth.append(values[max(args.shots) :])
            mean, sd, truth = (np.concatenate(a) for a in (means, sds, truth))
            out = {"model": name, "shots": n, "rmse": round(rmse(mean, truth), 4),
                   **{k: round(v, 4) for k, v in interval_scores(mean, sd, truth).items()}}  # fmt: skip
            rows.append(out)
            print(json.dumps(out), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(out) + "\n")
    print(f"\nRMSE (90% coverage) by ratings folded in\n| model | {' | '.join(map(str, args.shots))} |")
    print(f"|---|{'---|' * len(args.shots)}")
    for name in args.models:
        cells = [f"{r['rmse']:.4f} ({r['coverage_90']:.2f})" for r in rows if r["model"] == name]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
