"""Answers in raw ids from a saved model: predictions for pairs, top-N recommendations, and
new users folded in without retraining.

Fold-in solves the new user's row with the items fixed, exactly as an ALS half-sweep does:

    [w; b] = (sum_j a_j a_j^T + diag(lam I, lam_b))^-1 sum_j (r_j - mu - c_j) a_j,  a_j = [u_j; 1],

with the model's own ridge strengths (MAP fitters). For a posterior the same conditional is
taken in every draw s, with tau_s and a Gaussian prior for [w; b]: the draw's own cold-user
prior where the posterior keeps it (Gibbs, SVI: N([m_s; 0] + x A_s, blockdiag(S_s, v_s)), x the
user's attributes when given and the posterior has attribute vectors A_s), else the empirical
mean and covariance of the draw's user rows. Each draw's conditional mean and variance of
every item's rating enter the predictive's moments exactly, and one sampled row gives the
Thompson draw, so the fold-in carries the posterior's uncertainty. Two approximations: with
the rounded likelihood the given ratings are treated as Gaussian observations of the latent
rating (the predictions are then rounded as the posterior's are), and with implicit feedback
the new user's implicit term, which needs the draws' implicit vectors (not kept), is
integrated out under its prior as for a cold user.

Titles for the recommended items come from `read_titles`: a u.item-style file
(``id|title|...``, ML-100K), a movies.dat-style file (``id::title::genres``, ML-1M and
ML-10M) or a CSV ``movieId,title[,genres]`` (ML-20M's movies.csv); `titles_for` falls back
to a MovieLens dataset's own titles; `title_of` looks one up and answers None for an item
the file does not name.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from jax.typing import ArrayLike
from scipy.stats import norm

from probmf.data.movielens import DATASETS, load_titles
from probmf.data.ratings import UNKNOWN
from probmf.fitters import POSTERIOR_FITTERS
from probmf.model import MFParams
from probmf.persistence import FittedModel
from probmf.posterior import (
    Posterior,
    RowPrior,
    clock_inputs,
    draw_offsets,
    draw_predictive,
    moments_init,
    moments_update,
    rounded_moments,
    summarize,
    time_offset,
)

STRATEGIES = ("mean", "ucb", "thompson")


class Predictions(NamedTuple):
    """Per pair: mean (n,); sd (n,), a posterior's predictive sd or a point estimate's plug-in
    sd (None for a point estimate saved without it); known (n,) bool: False where the user or
    item is unknown or had no training rating (a point estimate then falls back to biases and
    mu; a posterior predicts under each draw's prior, with its sd)."""

    mean: np.ndarray
    sd: np.ndarray | None
    known: np.ndarray


def predict_pairs(
    model: FittedModel,
    raw_users: npt.ArrayLike,
    raw_items: npt.ArrayLike,
    *,
    times: npt.ArrayLike | None = None,
    clip: bool = True,
) -> Predictions:
    """Predictions for raw (user, item) ids; unknown ids fall back and are flagged. ``times``:
    the pairs' timestamps (seconds, (n,)) for a posterior with time effects (None: "now";
    `probmf.posterior`); not used by a model without them."""
    users, items = model.user_ids.index(raw_users), model.item_ids.index(raw_items)
    known = (users != UNKNOWN) & (items != UNKNOWN)
    # ids in the maps with no training rating are cold too
    if model.rated_indptr is not None and model.rated_items is not None:
        seen_u = np.diff(model.rated_indptr) > 0
        seen_i = np.bincount(model.rated_items, minlength=len(model.item_ids)) > 0
        known &= seen_u[np.maximum(users, 0)] & seen_i[np.maximum(items, 0)]
    posterior: Posterior | None = model.fitted.posterior
    timed = times is not None and posterior is not None and posterior.time is not None
    at = {"times": np.asarray(times, np.float64)} if timed else {}
    mean, sd = (np.asarray(a) for a in model.fitted.predictive(jnp.asarray(users), jnp.asarray(items), **at))
    if clip:
        mean = np.clip(mean, *model.rating_range)
    return Predictions(mean, sd, known)


class Recommendation(NamedTuple):
    items: np.ndarray  # raw item ids, best first
    score: np.ndarray  # the ranking score (mean, upper bound, or a posterior draw)
    mean: np.ndarray
    sd: np.ndarray | None


def recommend(
    model: FittedModel,
    user_scores: tuple[np.ndarray, np.ndarray | None, np.ndarray | None],
    *,
    n: int = 10,
    exclude: Iterable[int] | np.ndarray = (),
    strategy: str = "mean",
    ucb_level: float = 0.9,
) -> Recommendation:
    """Top-``n`` items by ``strategy`` from a user's scores over all items.

    user_scores: (mean (M,), sd (M,) or None, one posterior draw's means (M,) or None), e.g.
      from `score_user` or `fold_in`. exclude: dense item indices not to recommend (the
      user's rated items). strategy: "mean"; "ucb", the upper end of the central
      ``ucb_level`` predictive interval; "thompson", one posterior draw's means.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    mean, sd, draw = user_scores
    if strategy != "mean" and draw is None:
        raise ValueError(
            f"strategy {strategy!r} needs a Bayesian model (gibbs, svi, nuts); {model.model!r} is a point estimate"
        )
    score = {"mean": lambda: mean, "ucb": lambda: mean + norm.ppf(0.5 + ucb_level / 2) * sd, "thompson": lambda: draw}[
        strategy
    ]()
    score = np.array(score, np.float64)
    score[np.asarray(list(exclude), np.int64)] = -np.inf
    top = np.argsort(-score, kind="stable")[: min(n, int(np.isfinite(score).sum()))]
    return Recommendation(model.item_ids.raw[top], score[top], mean[top], None if sd is None else sd[top])


def score_user(
    model: FittedModel, user: int, rng_key: jax.Array | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(mean, sd or None, one draw's means or None) over all M items for dense user ``user``."""
    m = len(model.item_ids)
    users, items = jnp.full((m,), user, jnp.int32), jnp.arange(m, dtype=jnp.int32)
    mean, sd = model.fitted.predictive(users, items)
    posterior: Posterior | None = model.fitted.posterior
    if posterior is None:
        return np.asarray(mean), np.asarray(sd), None
    s = _draw_index(rng_key, posterior.num_samples)
    draws = (posterior.draws, posterior.tau, posterior.priors, posterior.time)
    params, tau, priors, time = jax.tree.map(lambda a: a[s], draws)
    offset = draw_offsets(posterior, users, items)(time)  # with time effects: "now", as the mean
    draw = draw_predictive(params, tau, users, items, priors, posterior.seen, posterior.levels,
                           posterior.features, offset)[0]  # fmt: skip
    return np.asarray(mean), np.asarray(sd), np.asarray(draw)


def fold_in(
    model: FittedModel,
    raw_items: npt.ArrayLike,
    ratings: npt.ArrayLike,
    *,
    attributes: npt.ArrayLike | sp.spmatrix | None = None,
    rng_key: jax.Array | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]:
    """Scores over all items for a NEW user given their ratings of known items (none is
    allowed: a cold start) and, for a posterior fitted with user attributes, their attribute
    row, without retraining (see the module docstring). ``attributes``: (G,) numbers or a (1, G)
    scipy.sparse row in the columns of the model's user attributes (`probmf.data.row_of` of the
    training feature table); None: unknown, the id map's average row. Returns (scores as
    `score_user`, dense indices of the rated items)."""
    items = model.item_ids.index(raw_items)
    if np.any(items == UNKNOWN):
        bad = np.asarray(raw_items)[items == UNKNOWN][0].item()
        raise ValueError(f"item {bad!r} is not known to the model; fold-in needs items it was trained on")
    r = np.asarray(ratings, np.float32)
    if r.shape != items.shape:
        raise ValueError(f"fold-in needs one rating per item, got {r.size} ratings for {items.size} items")
    if not np.all(np.isfinite(r)):
        k = int(np.argmin(np.isfinite(r)))
        raise ValueError(
            f"fold-in needs finite ratings, got {float(r[k])} for item {np.asarray(raw_items)[k].item()!r}"
        )
    posterior: Posterior | None = model.fitted.posterior
    x = _attribute_row(posterior, attributes)
    if posterior is not None:
        key_draw, key = (None, jax.random.PRNGKey(0)) if rng_key is None else jax.random.split(rng_key)
        s = _draw_index(key_draw, posterior.num_samples)
        now = None  # the time terms "now" (`probmf.posterior.clock_inputs`): last bin, no drift
        if posterior.time is not None:
            assert posterior.clock is not None, "a posterior with time effects keeps its clock"
            bins, dev = clock_inputs(posterior.clock, np.full(len(model.item_ids), UNKNOWN))
            now = (jnp.asarray(bins), jnp.asarray(dev))
        post = posterior._replace(clock=None)
        mean, sd, draw = _fold_in_draws(key, post, jnp.asarray(items), jnp.asarray(r), x, jnp.int32(s), now)
        return (np.asarray(mean), np.asarray(sd), np.asarray(draw)), items
    # A point estimate (by its fitter's name: a summary-only posterior also has no draws here):
    # its factors, when it is a matrix factorisation.
    point = model.model not in POSTERIOR_FITTERS
    params: MFParams | None = model.fitted.params if point else None  # type: ignore[attr-defined]
    if params is not None:
        lam, lam_b = _ridge(model, len(r))
        x = _solve_row(params.U[items], params.c[items], params.mu, r, lam, lam_b)
        mean = np.asarray(params.U @ x[:-1] + x[-1] + params.c + params.mu)
        noise_sd = model.fitted.noise_sd  # type: ignore[attr-defined]  # a point estimate's plug-in sd
        return (mean, np.full(mean.shape, noise_sd, np.float32), None), items
    raise ValueError(
        f"fold-in needs a posterior's draws or a point estimate's factors; this {model.model!r} model keeps "
        "neither (a summary-only run keeps no draws: fit with keep_draws=True)"
    )


def _attribute_row(posterior: Posterior | None, attributes: npt.ArrayLike | sp.spmatrix | None) -> jax.Array | None:
    """``attributes`` as a dense float32 (G,), checked against the posterior's user attributes."""
    if attributes is None:
        return None
    prior = None if posterior is None or posterior.priors is None else posterior.priors[0]
    if posterior is None:
        raise ValueError("attributes need a posterior's draws (gibbs fitted with user_features, its draws kept)")
    if prior is None or prior.attributes is None:
        raise ValueError("attributes need a posterior fitted with user attributes (gibbs with user_features)")
    dense = attributes.toarray() if sp.issparse(attributes) else attributes  # type: ignore[union-attr]  # sparse
    x = np.asarray(dense, np.float64).reshape(-1)
    width = prior.attributes.shape[1]
    if x.shape[0] != width:
        raise ValueError(f"attributes must be {width} numbers (the model's user attribute columns), got {x.size}")
    if not np.all(np.isfinite(x)):
        k = int(np.argmin(np.isfinite(x)))
        raise ValueError(f"attributes must be finite numbers, got {float(x[k])} in column {k}")
    return jnp.asarray(x, jnp.float32)


def _ridge(model: FittedModel, count: int) -> tuple[float, float]:
    opts = model.options
    if model.model in ("svd", "baseline") or "lam" not in opts:
        return 1e-6, float(opts.get("lam_bias", 0.0))
    if opts.get("objective") == "mle":
        return 0.0, 0.0
    lam = float(opts["lam"]) * count ** float(opts.get("weight_exponent", 0.0))
    return lam, float(opts.get("lam_bias", 0.0))


def _solve_row(U: jax.Array, c: jax.Array, mu: jax.Array, r: ArrayLike, lam: float, lam_b: float) -> jax.Array:
    """[w; b] minimising sum_j (r_j - mu - c_j - w.u_j - b)^2 + lam |w|^2 + lam_b b^2."""
    a = jnp.concatenate([U, jnp.ones((U.shape[0], 1))], axis=1)
    k1 = a.shape[1]
    d = jnp.concatenate([jnp.full((k1 - 1,), lam), jnp.array([lam_b])]) + 1e-6
    return jnp.linalg.solve(a.T @ a + jnp.diag(d), a.T @ (r - mu - c))


@jax.jit
def _fold_in_draws(
    rng_key: jax.Array,
    posterior: Posterior,
    items: jax.Array,
    r: jax.Array,
    x: jax.Array | None,
    s: jax.Array,
    now: tuple[jax.Array, jax.Array] | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean (M,), sd (M,), draw s's means (M,)) of the predictive for a new user.

    Per draw: the row [w; b] | r ~ N(A^-1 h, A^-1) with A = tau a^T a + P, h = tau a^T (r - mu
    - c - o) + P m over the rated items (a_j = [u_j; 1], o the time terms "now"), and the
    prior (m, P^-1): the draw's cold-user prior (`RowPrior`, its mean shifted by x A with
    attributes ``x``, else by the average row's), or without one the empirical mean and
    covariance of the draw's user rows. Each item's mean B x_hat + c + mu + o and variance
    B A^-1 B^T + 1/tau (B = [U, 1]) enter the running moments exactly; draw s's means come
    from one sampled row."""
    priors = None if posterior.priors is None else posterior.priors[0]
    X = None if posterior.features is None else posterior.features[0]  # (rows, cols, values)

    def prior_of(params: MFParams, prior: RowPrior | None) -> tuple[jax.Array, jax.Array]:
        W, b = params.W, params.b
        k = W.shape[1]
        if prior is None:  # no kept prior: the draw's user rows, empirically
            mean, cov, bias_var = jnp.mean(W, 0), jnp.cov(W.T).reshape(k, k) + 1e-6 * jnp.eye(k), jnp.var(b) + 1e-6
            shift = jnp.zeros(k + 1)
        else:
            mean, cov, bias_var = prior.mean, prior.cov, prior.bias_var
            if prior.attributes is None:
                shift = jnp.zeros(k + 1)
            elif x is None:  # unknown attributes: the average row's, as for an unknown id
                assert X is not None, "a posterior with attribute vectors keeps its attribute rows"
                _, cols, values = X
                shift = jnp.sum(values[:, None] * prior.attributes[cols], axis=0) / W.shape[0]
            else:
                shift = x @ prior.attributes
        prec = jnp.zeros((k + 1, k + 1)).at[:k, :k].set(jnp.linalg.inv(cov)).at[k, k].set(1.0 / bias_var)
        return jnp.concatenate([mean, jnp.zeros(1)]) + shift, prec

    def step(carry: tuple, draw: tuple) -> tuple[tuple, None]:
        moments, chosen = carry
        index, key, params, tau, prior, time = draw
        U, c, mu = params.U, params.c, params.mu
        offset = jnp.zeros_like(c)
        if time is not None:  # a new user: no drift; an item's bin effect "now"
            assert now is not None, "time effects come with their pairs' bins and devs"
            offset = time_offset(time, jnp.full(c.shape, -1), jnp.arange(c.shape[0]), *now)[0]
        prior_mean, prior_prec = prior_of(params, prior)
        a = jnp.concatenate([U[items], jnp.ones((items.shape[0], 1))], axis=1)
        L = jnp.linalg.cholesky(tau * a.T @ a + prior_prec)
        y = jax.scipy.linalg.solve_triangular(
            L, tau * a.T @ (r - mu - c[items] - offset[items]) + prior_prec @ prior_mean, lower=True
        )
        B = jnp.concatenate([U, jnp.ones((U.shape[0], 1))], axis=1)
        base = c + mu + offset
        x_hat = jax.scipy.linalg.solve_triangular(L, y, lower=True, trans="T")
        spread = jnp.sum(jax.scipy.linalg.solve_triangular(L, B.T, lower=True) ** 2, axis=0)  # diag B A^-1 B^T
        pred, var = B @ x_hat + base, spread + 1.0 / tau
        z = jax.random.normal(key, y.shape)
        sampled = B @ jax.scipy.linalg.solve_triangular(L, y + z, lower=True, trans="T") + base
        if posterior.levels is not None:
            pred, var = rounded_moments(pred, 1.0 / var, posterior.levels)
            sampled = rounded_moments(sampled, tau, posterior.levels)[0]
        moments = moments_update(moments, pred, var)
        return (moments, jnp.where(index == s, sampled, chosen)), None

    S, M = posterior.num_samples, posterior.draws.U.shape[1]
    keys = jax.random.split(rng_key, S)
    draws = (jnp.arange(S), keys, posterior.draws, posterior.tau, priors, posterior.time)
    (moments, chosen), _ = jax.lax.scan(step, (moments_init(M), jnp.zeros(M)), draws)
    mean, sd = summarize(*moments)
    return mean, sd, chosen


def _draw_index(rng_key: jax.Array | None, num: int) -> int:
    if rng_key is None:
        return 0
    return int(jax.random.randint(rng_key, (), 0, num))


# ---- titles --------------------------------------------------------------------------------

_ID_COLUMNS = ("movieid", "movie_id", "itemid", "item_id", "item", "id")
_TITLE_COLUMNS = ("title", "name")
_INTEGER = re.compile(r"[+-]?\d+")


class TitlesFileError(ValueError):
    """A titles file that cannot be read; the message names the file and, where it applies, the line."""


def read_titles(path: str | os.PathLike[str]) -> dict:
    """Titles by raw item id from a titles file; ids that look like integers become ints.

    Formats, told apart by the first separator on the first line (``|``, ``::`` or ``,``):

    * ``id|title|...`` (ML-100K's u.item), ``id::title::...`` (ML-1M's movies.dat);
    * CSV ``movieId,title[,genres]`` (ML-20M's movies.csv), quoted fields allowed.

    Any of them may start with a header line naming a ``title`` column (and the id column:
    movieId, itemId, item or id; otherwise the first). Text is read as UTF-8, or as Latin-1
    when it is not valid UTF-8 (ML-100K and ML-1M are Latin-1). Blank lines are skipped, and
    an empty title is left out (the item then has no title).

    Raises:
      TitlesFileError: the file cannot be read, is empty or binary, or a line has no title
        field, an empty id or an id seen before; the message names the file and line.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     f = Path(d) / "u.item"
      ...     _ = f.write_bytes("1|Toy Story (1995)|01-Jan-1995\\n2|Cit\xe9 (1995)|\\n".encode("latin-1"))
      ...     read_titles(f)
      {1: 'Toy Story (1995)', 2: 'Cit\xe9 (1995)'}
    """
    path = Path(os.fspath(path))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TitlesFileError(f"{path}: cannot read the titles file ({err.strerror or err})") from None
    if b"\0" in data:
        raise TitlesFileError(f"{path}: not a text file (it holds NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise TitlesFileError(f"{path}: no titles (the file is empty)")
    first_line, first = lines[0]
    found = {sep: first.find(sep) for sep in ("::", "|", ",") if sep in first}
    if not found:
        raise TitlesFileError(
            f"{path}, line {first_line}: expected id and title separated by '|', '::' or ',', found {first[:80]!r}"
        )
    sep = min(found, key=lambda s: (found[s], -len(s)))
    if sep == ",":
        rows = []
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                if any(f.strip() for f in row):
                    rows.append((reader.line_num, [f.strip() for f in row]))
        except csv.Error as err:
            raise TitlesFileError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    else:
        rows = [(n, [f.strip() for f in line.split(sep)]) for n, line in lines]
    id_col, title_col = 0, 1
    header = [f.lower() for f in rows[0][1]]
    if any(f in _TITLE_COLUMNS for f in header) and not _INTEGER.fullmatch(header[0]):
        title_col = next(k for k, f in enumerate(header) if f in _TITLE_COLUMNS)
        id_col = next((k for k, f in enumerate(header) if f in _ID_COLUMNS and k != title_col), 0 if title_col else 1)
        rows = rows[1:]
    need = max(id_col, title_col) + 1
    titles: dict = {}
    where: dict = {}
    for n, fields in rows:
        if len(fields) < need:
            raise TitlesFileError(
                f"{path}, line {n}: expected at least {need} fields separated by {sep!r} (id and title), "
                f"found {len(fields)}: {fields[0][:80]!r}"
            )
        raw, title = fields[id_col], fields[title_col]
        if not raw:
            raise TitlesFileError(f"{path}, line {n}: empty item id")
        key = int(raw) if _INTEGER.fullmatch(raw) else raw
        if key in where:
            raise TitlesFileError(f"{path}, line {n}: item id {raw!r} appears twice (first on line {where[key]})")
        where[key] = n
        if title:
            titles[key] = title
    return titles


def titles_for(titles_file: str | os.PathLike[str] | None, dataset: str | None) -> dict | None:
    """Titles by raw item id from ``titles_file`` (`read_titles`), else those of the MovieLens
    dataset named ``dataset`` when it is on disk (never downloaded), else None."""
    if titles_file:
        return read_titles(titles_file)
    if dataset not in DATASETS:
        return None
    try:
        return load_titles(dataset, download=False)
    except (OSError, ValueError):  # the dataset's titles file is missing or unreadable: no titles
        return None


def title_of(titles: dict | None, item: Any) -> str | None:
    """The title of raw item id ``item`` in ``titles`` (`read_titles`), or None when unknown.

    Integer ids and their decimal strings match each other (``17`` and ``"17"``)."""
    if not titles:
        return None
    if isinstance(item, np.generic):
        item = item.item()
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    if item in titles:
        return titles[item]
    if isinstance(item, str) and _INTEGER.fullmatch(item.strip()):
        return titles.get(int(item.strip()))
    if isinstance(item, int):
        return titles.get(str(item))
    return None
