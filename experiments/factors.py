"""What the K latent dimensions mean: the movies at each end of each ALS factor.

    python experiments/factors.py                    # ML-100K, all ratings, rank 10 (seconds)
    python experiments/factors.py --rank 5 --top 8 --min-ratings 50
    python experiments/factors.py --train u1.base    # another ratings file in ML-100K ids
    python experiments/factors.py --smoke            # tiny synthetic data (seconds; for tests)

Fits ALS (`probmf.fitters.fit_als` at its defaults) and, for each factor f, lists the movies
with the highest and the lowest item loadings U[:, f], among the movies with at least
``--min-ratings`` ratings (obscure movies, shrunk by few ratings, would otherwise crowd both
ends). For context it gives the share of the interaction variance each factor carries and,
on ML-100K, the genres (u.item's genre flags) most correlated with the factor's loadings.

Factors are only defined up to rotation: for any invertible k x k matrix R, (W R, U R^-T)
predicts exactly what (W, U) does, so one raw ALS column means nothing by itself and changes
with the seed. The factors are therefore first rotated to principal axes: with the thin QR
factorisations W = Q_w R_w and U = Q_u R_u and the SVD R_w R_u^T = P S V^T, the interaction
matrix is W U^T = A S B^T with A = Q_w P and B = Q_u V orthonormal. The rotated loadings
W' = A S^1/2 (users) and U' = B S^1/2 (items) predict the same W' U'^T = W U^T; the factors
are uncorrelated and ordered by s_f^2 / sum_g s_g^2, their share of ||W U^T||_F^2 (the squared
interaction term summed over all user x item cells). With distinct singular values each
factor is unique up to sign; the sign is chosen so that the item loadings (of the movies
shown) have a positive third moment: the "high" end is the longer tail.

Writes ``factors.json`` and ``factors.md`` to ``--out`` (default results/factors/; each file
written to a temporary name and renamed into place) and prints the Markdown table. The first
line of output names the data; without MovieLens 100K (and no network) it runs on synthetic
data shaped like it, with made-up titles ("item 17"), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from probmf.data import movielens
from probmf.data.io import read_ratings
from probmf.data.movielens import DATASETS, DatasetNotFoundError
from probmf.data.synthetic import synthetic_preset
from probmf.evaluate import load_ratings
from probmf.fitters.run import fit_model
from probmf.metrics import predict_ratings, rmse
from probmf.recommend import title_of, titles_for


def principal_axes(W, U, *, sign_rows=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate the factors (W, U) to the principal axes of W U^T (see the module docstring).

    Args:
      W: (num_users, k) user factors; U: (num_items, k) item factors.
      sign_rows: optional boolean mask of the item rows whose third moment fixes each
        factor's sign (default: all items).

    Returns:
      (W', U', s): float64 W' = A S^1/2 (num_users, r), U' = B S^1/2 (num_items, r) and the
      singular values s (r,) of W U^T in decreasing order, r = min(k, num_users, num_items);
      W' U'^T equals W U^T up to rounding.
    """
    W, U = np.asarray(W, np.float64), np.asarray(U, np.float64)
    if W.shape[1] != U.shape[1]:
        raise ValueError(f"W and U need the same number of columns, got {W.shape} and {U.shape}")
    qw, rw = np.linalg.qr(W)
    qu, ru = np.linalg.qr(U)
    p, s, vt = np.linalg.svd(rw @ ru.T, full_matrices=False)
    root = np.sqrt(s)
    w_rot, u_rot = (qw @ p) * root, (qu @ vt.T) * root
    rows = u_rot if sign_rows is None else u_rot[np.asarray(sign_rows, bool)]
    sign = np.where(np.sum(rows**3, axis=0) < 0, -1.0, 1.0)
    return w_rot * sign, u_rot * sign, s


def _made_up_titles(item_ids) -> dict:
    return {raw.item(): f"item {raw.item()}" for raw in np.asarray(item_ids.raw)}


def load_data(args):
    """(ratings, dataset name, titles by raw id, (genre names, genre flags by raw id) or None)."""
    if args.smoke:
        ratings, _ = synthetic_preset("tiny", seed=args.seed)
        return ratings, "synthetic:tiny", _made_up_titles(ratings.item_ids), None
    if args.train:
        ratings, dataset = read_ratings(args.train), str(args.train)
        names = args.data  # titles and genres of the MovieLens set the file's ids come from, if on disk
    else:
        ratings, dataset = load_ratings(args.data, fallback=True)
        names = None if dataset.startswith("synthetic") else args.data
    titles = titles_for(args.titles, names)
    if titles is None:
        titles = {} if names in DATASETS else _made_up_titles(ratings.item_ids)
    return ratings, dataset, titles, _ml100k_genres() if names == "ml-100k" else None


def _ml100k_genres():
    """(genre names, {raw item id: 0/1 flags}) from ML-100K's u.genre and u.item, or None."""
    try:
        folder = movielens._locate("ml-100k", None, False)  # the loaders' own search, never downloading
        names = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if line]
        flags = {}
        for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
            fields = line.split("|")
            if len(fields) == 5 + len(names) and fields[0].strip():
                flags[int(fields[0])] = np.array([int(f) for f in fields[5:]], np.float64)
    except (DatasetNotFoundError, OSError, ValueError):
        return None
    return (names, flags) if flags else None


def _genre_correlations(loadings, raw_items, genres, top: int = 3) -> dict:
    """Per end of the factor, the genres whose 0/1 flags correlate most with the loadings."""
    names, flags = genres
    have = [k for k, raw in enumerate(raw_items) if raw in flags]
    if len(have) < 3:
        return {"high": [], "low": []}
    x = loadings[have]
    g = np.stack([flags[raw_items[k]] for k in have])
    xc, gc = x - x.mean(), g - g.mean(0)
    denom = np.sqrt((xc**2).sum() * (gc**2).sum(0))
    corr = np.divide(xc @ gc, denom, out=np.zeros(len(names)), where=denom > 0)
    order = np.argsort(-corr)
    high = [(names[j], round(float(corr[j]), 3)) for j in order[:top] if corr[j] > 0]
    low = [(names[j], round(float(corr[j]), 3)) for j in order[::-1][:top] if corr[j] < 0]
    return {"high": high, "low": low}


def run(args) -> dict:
    ratings, dataset, titles, genres = load_data(args)
    synthetic = dataset.startswith("synthetic")
    note = " (SYNTHETIC data, made-up titles: not MovieLens)" if synthetic else ""
    print(
        f"data: {dataset}: {len(ratings):,} ratings, {ratings.num_users:,} users, {ratings.num_items:,} items{note}",
        flush=True,
    )
    rank = args.rank if args.rank is not None else (3 if args.smoke else 10)
    min_ratings = args.min_ratings if args.min_ratings is not None else (5 if args.smoke else 20)
    given = {"rank": rank, **({"num_sweeps": 5} if args.smoke else {})}
    predictor, options, seconds = fit_model("als", ratings, options=given, seed=args.seed)  # probmf.fitters.fit_als
    params = predictor.params

    counts = np.bincount(ratings.items, minlength=ratings.num_items)
    shown = counts >= min_ratings
    if not shown.any():
        raise SystemExit(f"no item has {min_ratings} ratings; lower --min-ratings (the most is {counts.max()})")
    _, loadings, s = principal_axes(params.W, params.U, sign_rows=shown)
    share = s**2 / np.sum(s**2) if np.sum(s**2) > 0 else np.zeros_like(s)
    raw = np.asarray(ratings.item_ids.raw)
    candidates = np.flatnonzero(shown)
    raw_shown = [raw[j].item() for j in candidates]
    top = min(args.top, len(candidates))

    def entry(j, f):
        return {
            "movieId": raw[j].item(),
            "title": title_of(titles, raw[j]),
            "loading": round(float(loadings[j, f]), 4),
            "n_ratings": int(counts[j]),
        }

    factors = []
    for f in range(len(s)):
        order = candidates[np.argsort(-loadings[candidates, f], kind="stable")]
        row = {
            "factor": f + 1,
            "variance_share": round(float(share[f]), 4),
            "singular_value": round(float(s[f]), 4),
            "high": [entry(j, f) for j in order[:top]],
            "low": [entry(j, f) for j in order[::-1][:top]],
        }
        if genres is not None:
            row["genres"] = _genre_correlations(loadings[candidates, f], raw_shown, genres)
        factors.append(row)

    report = {
        "dataset": dataset,
        "synthetic": synthetic,
        "n_ratings": len(ratings),
        "n_users": ratings.num_users,
        "n_items": ratings.num_items,
        "rank": rank,
        "min_ratings": min_ratings,
        "n_items_shown": int(shown.sum()),
        "train_rmse": round(rmse(predict_ratings(params, ratings), ratings.values), 4),
        "fit_seconds": round(seconds, 3),
        "options": {k: v for k, v in options.items() if k != "rank"},
        "seed": args.seed,
        "rotation": "principal axes of W U^T; item loadings B S^1/2; sign: positive third moment",
        "factors": factors,
    }
    markdown = _markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "factors.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    _write_atomic(out / "factors.md", markdown)
    print(markdown, end="")
    print(f"wrote {out / 'factors.json'} and {out / 'factors.md'}", flush=True)
    return report


def _cell(movies) -> str:
    return "; ".join(f"{m['title'] or 'movie ' + str(m['movieId'])} ({m['loading']:+.2f})" for m in movies).replace(
        "|", "\\|"
    )


def _markdown(report: dict) -> str:
    has_genres = any("genres" in f for f in report["factors"])
    head = "| factor | variance share | high end | low end |" + (" genres (high / low end) |" if has_genres else "")
    rule = "|---|---|---|---|" + ("---|" if has_genres else "")
    lines = [
        f"# What the {report['rank']} ALS factors mean",
        "",
        f"Data: {report['dataset']}, {report['n_ratings']:,} ratings"
        + (" (SYNTHETIC, made-up titles)" if report["synthetic"] else "")
        + f"; ALS rank {report['rank']}, training RMSE {report['train_rmse']:.4f}. Factors rotated to the "
        "principal axes of W U^T (they are only defined up to rotation), ordered by their share of "
        f"||W U^T||_F^2. Movies shown: the {report['n_items_shown']:,} with at least {report['min_ratings']} "
        "ratings; item loading in brackets.",
        "",
        head,
        rule,
    ]
    for f in report["factors"]:
        row = f"| {f['factor']} | {f['variance_share']:.3f} | {_cell(f['high'])} | {_cell(f['low'])} |"
        if has_genres:
            g = f.get("genres", {"high": [], "low": []})
            high = ", ".join(f"{n} {r:+.2f}" for n, r in g["high"]) or "-"
            low = ", ".join(f"{n} {r:+.2f}" for n, r in g["low"]) or "-"
            row += f" {high} / {low} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k", help="a MovieLens name (titles from its files) or synthetic[:preset]")
    p.add_argument("--train", help="ratings file to fit instead of --data (titles from --data's files when on disk)")
    p.add_argument("--titles", help="titles file (id|title|..., id::title::... or CSV movieId,title[,genres])")
    p.add_argument("--rank", type=int, help="ALS rank (default 10; 3 with --smoke)")
    p.add_argument(
        "--min-ratings", type=int, help="show only movies with this many ratings (default 20; 5 with --smoke)"
    )
    p.add_argument("--top", type=int, default=5, help="movies shown at each end of each factor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data, for tests")
    p.add_argument("--out", default="results/factors")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error("--top must be at least 1")
    if args.rank is not None and args.rank < 1:
        p.error("--rank must be at least 1")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
