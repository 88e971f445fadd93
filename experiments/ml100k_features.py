"""Side information on a MovieLens 100K fold: ``gibbs --implicit`` with and without the users'
and the items' attributes.

    python experiments/ml100k_features.py [--split u1] [--rank 10] [--variants implicit users items both]
                                          [--catalogue] [--seed 0] [--out results.jsonl]

Builds the attribute matrices from ``u.user`` (one-hots of gender, occupation, age bucket
<18/18-24/25-34/35-44/45-49/50-55/56+ and the zip code's first digit, non-digits as one more
level) and ``u.item`` (the 19 genre flags scaled by 1/sqrt(number of genres), and a one-hot
of the release decade; an unknown date is a zero row), row i for dense index i of the
training id maps, then fits `probmf.fitters.fit_gibbs` with ``implicit=True`` at its default
sweeps for each variant and prints the test RMSE (`probmf.evaluate.score`, clipped to the
rating range, and unclipped), the cold pairs' RMSE and the fit time.

``--catalogue``: the item id map is every item of ``u.item``, so a test item with no training
rating is a cold row with known attributes rather than an unknown id (-1).
The builders here are throwaway; the dataset loaders for attributes belong in
``probmf.data.features``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp

from probmf.data.movielens import load_split
from probmf.data.ratings import IdMap, Ratings
from probmf.evaluate import score
from probmf.fitters import fit_gibbs
from probmf.metrics import rmse

AGE_EDGES = [18, 25, 35, 45, 50, 56]  # buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
VARIANTS = {"implicit": (False, False), "users": (True, False), "items": (False, True), "both": (True, True)}


def _one_hot(codes: np.ndarray, num: int) -> sp.csr_matrix:
    """Rows with a 1 at ``codes[i]`` (num columns); a code of -1 is a zero row."""
    rows = np.flatnonzero(codes >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, codes[rows])), shape=(codes.size, num))


def _categories(values) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1]


def user_attributes(folder: Path, user_ids: IdMap) -> sp.csr_matrix:
    """(len(user_ids), G_u) one-hots of gender, occupation, age bucket and zip first digit."""
    lines = [line.split("|") for line in (folder / "u.user").read_text(encoding="latin-1").splitlines() if line]
    raw = np.array([int(f[0]) for f in lines])
    age = np.array([int(f[1]) for f in lines])
    zip_first = [f[4][0] if f[4][:1].isdigit() else "other" for f in lines]
    blocks = [
        _one_hot(_categories([f[2] for f in lines]), 2),
        _one_hot(_categories([f[3] for f in lines]), len(set(f[3] for f in lines))),
        _one_hot(np.searchsorted(AGE_EDGES, age, side="right"), len(AGE_EDGES) + 1),
        _one_hot(_categories(zip_first), len(set(zip_first))),
    ]
    return _align(sp.hstack(blocks).tocsr(), raw, user_ids)


def item_attributes(folder: Path, item_ids: IdMap) -> sp.csr_matrix:
    """(len(item_ids), G_i): genre flags / sqrt(#genres) and a one-hot of the release decade."""
    lines = [line.split("|") for line in (folder / "u.item").read_text(encoding="latin-1").splitlines() if line]
    raw = np.array([int(f[0]) for f in lines])
    genres = np.array([[int(g) for g in f[5:24]] for f in lines], np.float64)
    genres /= np.sqrt(np.maximum(genres.sum(1, keepdims=True), 1.0))
    year = np.array([int(f[2][-4:]) if f[2] else -1 for f in lines])
    decades = np.unique(year[year > 0] // 10)
    decade = np.where(year > 0, np.searchsorted(decades, year // 10), -1)
    return _align(sp.hstack([sp.csr_matrix(genres), _one_hot(decade, decades.size)]).tocsr(), raw, item_ids)


def _align(X: sp.csr_matrix, raw: np.ndarray, ids: IdMap) -> sp.csr_matrix:
    """Rows of X (one per raw id in ``raw``) in the dense order of ``ids``; an id without a row is zero."""
    index = ids.index(raw)
    keep = index >= 0
    P = sp.csr_matrix((np.ones(keep.sum()), (index[keep], np.flatnonzero(keep))), shape=(len(ids), len(raw)))
    return (P @ X).tocsr()


def _with_catalogue(folder: Path, split: str, train: Ratings) -> tuple[Ratings, Ratings]:
    """(train, test) of the split over the item id map of every item in ``u.item``."""
    lines = (folder / "u.item").read_text(encoding="latin-1").splitlines()
    items = IdMap(np.array(sorted(int(line.split("|")[0]) for line in lines if line)))
    raw = np.loadtxt(folder / f"{split}.test", dtype=np.int64)
    test = Ratings(train.user_ids.index(raw[:, 0]), items.index(raw[:, 1]), raw[:, 2].astype(np.float32),
                   train.user_ids, items)  # fmt: skip
    return train.reindex(train.user_ids, items), test


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="u1")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--catalogue", action="store_true", help="item id map: every item of u.item")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON lines file to append each variant's row to")
    args = p.parse_args(argv)
    train, test = load_split("ml-100k", args.split, download=False)
    folder = Path(os.environ.get("PROBMF_DATA_DIR", "data")) / "ml-100k"
    if args.catalogue:
        train, test = _with_catalogue(folder, args.split, train)
    X_users, X_items = user_attributes(folder, train.user_ids), item_attributes(folder, train.item_ids)
    print(f"{args.split}: {len(train)} train, {len(test)} test; users {X_users.shape}, items {X_items.shape}")
    for name in args.variants:
        with_users, with_items = VARIANTS[name]
        t0 = time.perf_counter()
        fitted = fit_gibbs(jax.random.PRNGKey(args.seed), train, rank=args.rank, implicit=True,
                           user_features=X_users if with_users else None,
                           item_features=X_items if with_items else None)  # fmt: skip
        seconds = time.perf_counter() - t0
        row = score(fitted, train, test)
        raw = rmse(fitted.predict(test.users, test.items), test.values)
        out = {"variant": name, "split": args.split, "catalogue": args.catalogue, "rmse": row["rmse"],
               "rmse_unclipped": raw, "n_cold": row["n_cold"], "rmse_cold": row["rmse_cold"],
               "coverage_90": row["coverage_90"],
               "fit_seconds": round(seconds, 1)}  # fmt: skip
        print(json.dumps(out), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
