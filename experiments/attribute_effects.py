"""What the posterior says each attribute does: genres, release years, age, gender, occupation.

    python experiments/attribute_effects.py                  # ML-100K, all ratings (~1 min)
    python experiments/attribute_effects.py --split u1       # u1.base only
    python experiments/attribute_effects.py --smoke          # tiny synthetic data, for tests

Fits `gibbs --features user,item` (rank 10, its defaults otherwise; ``--implicit`` adds implicit
feedback) and reads each kept draw's attribute vectors A (`probmf.posterior.RowPrior`'s
``attributes``, one row [a_g; a_g bias] per column g of the design matrix). A column's raw
vector means nothing by itself: the factors are identified only up to a rotation R, under
which W -> W R, U -> U R^-T and A's vectors rotate with their side. What is identified is what
a column adds to a prediction. An item attribute g of value x (x = 1 for a one-hot, a movie's
only genre; 1 sd for a numeric column) adds to user i's rating

    e_ig = x (w_i . a_g + a_g bias),

computed within each draw, where W and A share one rotation; user attributes likewise against
the items' u_j. For each column the tables give the posterior mean and 90% interval of the
average effect over the other side's rows (users, resp. items: what the attribute does to the
typical rating), and the posterior mean of their spread (sd over those rows: how much the
effect depends on who rates, resp. what is rated; a polarising genre has a small average and a
large spread). For user attributes, the movies the attribute raises most.

Writes ``effects.json`` and ``effects.md`` to ``--out`` (default results/attribute_effects/) and
prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from probmf.data.features import from_columns
from probmf.data.movielens import load_features, load_movielens, load_split, load_titles
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.gibbs import fit_gibbs


def effects(draws_side, A, names, groups, *, top_rows=None, row_names=None):
    """Per attribute column g: the average over ``draws_side``'s rows of x (v . a_g + bias_g)
    with x = 1, per draw -> posterior mean and 90% interval; the mean over draws of its sd over
    the rows; and, with ``top_rows``, the rows it raises most (posterior mean effect).

    Args:
      draws_side: (S, R, k) the other side's vectors in each draw (items for user attributes).
      A: (S, G, k+1) the attribute vectors and biases of each draw.
      names, groups: G column names and their attribute groups.
    """
    e = np.einsum("srk,sgk->sgr", draws_side, A[:, :, :-1]) + A[:, :, -1][:, :, None]  # (S, G, R)
    avg = e.mean(axis=2)  # (S, G)
    spread = e.std(axis=2).mean(axis=0)
    lo, hi = np.quantile(avg, [0.05, 0.95], axis=0)
    mean_e = e.mean(axis=0)  # (G, R)
    rows = []
    for g, name in enumerate(names):
        row = {"column": name, "group": groups[g], "mean": float(avg[:, g].mean()), "lo": float(lo[g]),
               "hi": float(hi[g]), "spread": float(spread[g])}  # fmt: skip
        if top_rows is not None:
            best = np.argsort(-mean_e[g])[:top_rows]
            row["raises_most"] = [row_names[r] for r in best]
        rows.append(row)
    return rows


def _table(rows, title: str, extra: bool = False) -> str:
    head = "| column | average effect | 90% interval | spread |" + (" raises most |" if extra else "")
    lines = [f"### {title}", "", head, "|---|---|---|---|" + ("---|" if extra else "")]
    for r in sorted(rows, key=lambda r: -r["mean"]):
        cell = f"| {r['column']} | {r['mean']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['spread']:.3f} |"
        lines.append(cell + (f" {'; '.join(r['raises_most'])} |" if extra else ""))
    return "\n".join(lines) + "\n"


def _data(args):
    if args.smoke:
        ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, seed=0)
        users = from_columns(ratings.user_ids.raw, {"g": ratings.user_ids.raw % 2}, source="smoke users")
        items = from_columns(ratings.item_ids.raw, {"kind": [f"k{i % 3}" for i in ratings.item_ids.raw]},
                             source="smoke items")  # fmt: skip
        return ratings, users, items, {int(i): f"item {i}" for i in ratings.item_ids.raw}, "synthetic"
    train = load_movielens("ml-100k") if args.split == "all" else load_split("ml-100k", args.split)[0]
    name = "ML-100K all ratings" if args.split == "all" else f"ML-100K {args.split}.base"
    return train, load_features("ml-100k", "user"), load_features("ml-100k", "item"), load_titles("ml-100k"), name


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="all", choices=["all", "u1", "u2", "u3", "u4", "u5"])
    p.add_argument("--implicit", action="store_true", help="with implicit feedback (gibbs --implicit)")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--top", type=int, default=3, help="movies listed per user attribute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/attribute_effects")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and a short chain, for tests")
    args = p.parse_args(argv)
    train, users, items, titles, name = _data(args)
    short = {"num_warmup": 10, "num_samples": 20} if args.smoke else {}
    rank = 2 if args.smoke else args.rank
    fit = fit_gibbs(jax.random.PRNGKey(args.seed), train, rank=rank, implicit=args.implicit,
                    user_features=users, item_features=items, **short)  # fmt: skip
    post = fit.posterior
    prior_u, prior_i = post.priors
    W, U = np.asarray(post.draws.W, np.float64), np.asarray(post.draws.U, np.float64)
    movie = [titles.get(int(i), f"item {i}") for i in train.item_ids.raw]
    item_rows = effects(W, np.asarray(prior_i.attributes, np.float64), items.names, items.groups)
    user_rows = effects(U, np.asarray(prior_u.attributes, np.float64), users.names, users.groups,
                        top_rows=args.top, row_names=movie)  # fmt: skip
    what = f"`gibbs{' --implicit' if args.implicit else ''} --features user,item`, rank {rank}"
    item_table = _table(item_rows, "Item attributes: effect on a user's rating (average over users)")
    user_table = _table(user_rows, "User attributes: effect on a rating of a movie (average over movies)", True)
    text = (f"Attribute effects on {name}: {what}, {post.num_samples} draws (rating points; one-hot and "
            f"multi-hot columns at x = 1, numeric columns per sd)\n\n{item_table}\n{user_table}")  # fmt: skip
    print(text)
    out = Path(args.out)
    _write(out / "effects.md", text)
    _write(out / "effects.json", json.dumps({"data": name, "model": what, "items": item_rows, "users": user_rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
