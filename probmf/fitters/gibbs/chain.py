"""The Gibbs chain driver: `fit_gibbs`, its checkpointed run of sweeps and what it keeps.

Randomness depends only on (key, sweep, row): sweep s draws with ``fold_in(key, s)``
(`probmf.fitters.gibbs.kernel` draws the rows), so a chain is the same whatever the
blocks, the number of devices or the checkpoint chunks.
Kept draws are stored in full (`Posterior`) and/or, for test pairs known at fit time, as
running moments of the predictive (`PredictiveSummary`), which never stores a draw. Each
kept draw also keeps its cold-row priors, N(mu_w, Lam_w^-1) and N(0, 1/lam_b) (items
likewise), so a user or item with no training rating is predicted under that draw's prior
(`probmf.posterior.draw_predictive`), never as a zero vector; with side information that
prior's mean is m + x_i A, the row's attributes (`probmf.fitters.gibbs.features`). With time
effects each kept draw also keeps them (`probmf.posterior.TimeEffects`) and the posterior the
clock that maps a pair's timestamp to its bin and drift (`probmf.fitters.gibbs.temporal`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.typing import ArrayLike

from probmf.checkpoint import fit_checkpoint, matrix_digest
from probmf.data.features import FeatureTable
from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, encode, encode_partitioned, layout_for_rank
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs.features import feature_matrix, feature_operators, features_of, side_matrix
from probmf.fitters.gibbs.implicit import IMPLICIT_SOLVERS, implicit_operators, implicit_solver
from probmf.fitters.gibbs.kernel import GibbsInfo, GibbsState, gibbs_sweep, init_state, row_priors
from probmf.fitters.gibbs.rounded import Latent, rounding_intervals
from probmf.fitters.gibbs.temporal import DEFAULT_TIME_BINS, TimeData, time_data, training_clock
from probmf.linalg import LINALGS
from probmf.objectives import Hyperpriors
from probmf.posterior import (
    Posterior,
    PredictiveSummary,
    TimeClock,
    TimeEffects,
    clock_inputs,
    draw_predictive,
    moments_init,
    moments_update,
    seen_rows,
    time_offset,
)
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program
from probmf.sharding import check_devices, device_mesh

LIKELIHOODS = ("gaussian", "rounded")
LINALG_CHOICES = ("auto", *LINALGS)
# "auto": LAPACK up to this rank, the LAPACK-free Cholesky above it: with LAPACK a rank-64
# sweep hung on the ML-1M-shaped preset (jax 0.10, XLA-CPU; rank 32 ran), and without it
# the sweep is as fast there (`probmf.linalg`).
AUTO_LAPACK_MAX_RANK = 32


class GibbsResult(NamedTuple):
    """``posterior``: the kept draws (None with ``keep_draws=False``), chain-major with several
    chains (S = num_chains x num_samples); ``trace``: per sweep (num_warmup + num_samples *
    thin,), or (num_chains, that) with several chains; ``summary``: running predictive moments
    at the pairs given at fit time, pooled over the chains (None without them);
    ``num_factors``: the rank k (for a summary only); ``num_chains``: independent chains."""

    posterior: Posterior | None
    trace: GibbsInfo
    summary: PredictiveSummary | None = None
    num_factors: int = 0
    num_chains: int = 1

    @property
    def rank(self) -> int:
        return self.posterior.rank if self.posterior is not None else self.num_factors

    @property
    def num_samples(self) -> int:
        kept = self.posterior if self.posterior is not None else self.summary
        assert kept is not None, "a Gibbs result keeps its draws or their summary"
        return int(kept.num_samples)

    @property
    def uses_time(self) -> bool:
        """Whether the model has time effects (its predictions then take the pairs' ``times``)."""
        return self.posterior is not None and self.posterior.time is not None

    def predict(self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None) -> jax.Array:
        return self.predictive(users, items, times)[0]

    def predictive(
        self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(mean, sd) of the pairs; ``times``: their timestamps (seconds) with time effects
        (None: "now", `probmf.posterior`); a summary's pairs have their fit-time times."""
        if self.posterior is not None:
            return self.posterior.predictive(users, items, times)
        assert self.summary is not None, "a Gibbs result keeps its draws or their summary"
        return self.summary.predictive(users, items)


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (GibbsResult, GibbsInfo, TimeEffects, TimeClock)


class GibbsChain(NamedTuple):
    """Everything a run carries between sweeps (and saves in a checkpoint): the sampler's
    state, the kept draws so far (slot d holds kept draw d), the predictive moments at the
    summary pairs, and the per-sweep trace."""

    state: GibbsState
    draws: Posterior | None  # (num_samples, ...) leaves
    moments: tuple | None  # (count, mean (P,), m2 (P,), noise) as in `probmf.posterior.moments_update`
    trace: GibbsInfo  # (total sweeps,)


def init_chain(state: GibbsState, total: int, num_samples: int, keep_draws: bool, num_pairs: int | None) -> GibbsChain:
    """An empty `GibbsChain` for ``total`` sweeps keeping ``num_samples`` draws."""
    draws = None
    if keep_draws:
        time = None if state.time is None else state.time.effects()
        like = Posterior(state.params, state.tau, priors=row_priors(state), time=time)
        draws = jax.tree.map(lambda a: jnp.zeros((num_samples,) + a.shape, a.dtype), like)
    moments = None if num_pairs is None else moments_init(num_pairs)
    nan = jnp.full((total,), jnp.nan, jnp.float32)
    return GibbsChain(state, draws, moments, GibbsInfo(nan, nan))


@functools.partial(jax.jit, static_argnames=("num", "num_warmup", "thin", "linalg"))
def gibbs_chunk(
    rng_key: jax.Array,
    chain: GibbsChain,
    data: Encoded,
    hyperpriors: Hyperpriors,
    pairs: tuple[jax.Array, jax.Array] | None,
    first: jax.Array | int,
    latent: Latent | None = None,
    levels: jax.Array | None = None,
    ops: tuple | None = None,
    seen: tuple[jax.Array, jax.Array] | None = None,
    feature_ops: tuple | None = None,
    time_data: TimeData | None = None,
    pair_time: tuple[jax.Array, jax.Array] | None = None,
    *,
    num: int,
    num_warmup: int,
    thin: int,
    linalg: str = "lapack",
) -> GibbsChain:
    """Sweeps first, ..., first + num - 1 of a run that burns in ``num_warmup`` sweeps and
    then keeps every ``thin``-th; sweep s draws with ``fold_in(rng_key, s)``. ``pairs``:
    (users (P,), items (P,)) of the summary, or None; ``latent``, ``levels``: the rounded
    likelihood's `Latent` and rating levels (None: Gaussian); ``ops``, ``feature_ops``: the
    implicit and attribute operators (`gibbs_sweep`); ``seen``: (users (N,), items (M,))
    bool rows with training ratings (the others are cold in the summary); ``time_data``: the
    training ratings' `probmf.fitters.gibbs.temporal.TimeData` with time effects, else None;
    ``pair_time``: the summary pairs' (bins, dev) with time effects."""
    features = features_of(feature_ops)

    def sweep(chain: GibbsChain, s: jax.Array) -> tuple[GibbsChain, None]:
        state, info = gibbs_sweep(
            jax.random.fold_in(rng_key, s), chain.state, data, hyperpriors, linalg, latent, ops, feature_ops, time_data
        )
        after = s - num_warmup
        kept = (after >= 0) & ((after + 1) % thin == 0)
        draws, moments = chain.draws, chain.moments
        priors = row_priors(state, linalg) if draws is not None or moments is not None else None
        if draws is not None:
            # Sweeps between kept draws write the slot of the next kept draw, which overwrites them.
            slot = jnp.clip(after // thin, 0, draws.tau.shape[0] - 1)
            time = None if state.time is None else state.time.effects()
            draw = Posterior(state.params, state.tau, priors=priors, time=time)
            draws = jax.tree.map(lambda d, x: lax.dynamic_update_index_in_dim(d, x, slot, 0), draws, draw)
        if moments is not None:
            assert pairs is not None, "moments are kept at the summary pairs"
            offset = (
                None
                if state.time is None or pair_time is None
                else time_offset(state.time.effects(), *pairs, *pair_time)
            )
            pred, var = draw_predictive(state.params, state.tau, *pairs, priors, seen, levels, features, offset)
            moments = moments_update(moments, pred, var, kept.astype(jnp.float32))
        trace = jax.tree.map(lambda t, v: t.at[s].set(v), chain.trace, info)
        return GibbsChain(state, draws, moments, trace), None

    return lax.scan(sweep, chain, first + jnp.arange(num))[0]


class GibbsConfig(NamedTuple):
    """The Gibbs sampler's options (`fit_gibbs` documents each); ``num_warmup`` and
    ``num_samples`` None are 50 and 200, or 200 and 800 with ``implicit`` (`validate` fills
    them in); ``user_features``, ``item_features``: scipy.sparse CSR once validated (a
    `FeatureTable` once prepared, when it is aligned with the training ids); ``time``,
    ``time_bins``: time effects (`probmf.fitters.gibbs.temporal`); ``predict_times``: the
    summary pairs' timestamps (seconds), None: predicted "now"."""

    rank: int = 10
    num_warmup: int | None = None
    num_samples: int | None = None
    thin: int = 1
    init_sweeps: int = 10
    likelihood: str = "gaussian"
    implicit: bool = False
    user_features: object = None
    item_features: object = None
    keep_draws: bool = True
    predict_pairs: tuple | None = None
    linalg: str = "auto"
    implicit_solver: str = "auto"
    num_chains: int = 1
    time: bool = False
    time_bins: int = DEFAULT_TIME_BINS
    predict_times: ArrayLike | None = None

    def validate(self, run: RunOptions = DEFAULT_RUN) -> GibbsConfig:
        """The config with its defaults filled in, ``predict_pairs`` as int32 arrays and the
        attribute matrices as canonical CSR (`probmf.fitters.gibbs.features.feature_matrix`),
        or a ValueError naming the bad option. (Their rows are checked against the training
        data in `prepare_gibbs`.)"""
        pairs = self.predict_pairs
        c = self._replace(
            num_warmup=(200 if self.implicit else 50) if self.num_warmup is None else self.num_warmup,
            num_samples=(800 if self.implicit else 200) if self.num_samples is None else self.num_samples,
            predict_pairs=None if pairs is None else tuple(jnp.asarray(a, jnp.int32) for a in pairs),
            user_features=_checked(self.user_features, "user"),
            item_features=_checked(self.item_features, "item"),
        )
        assert c.num_warmup is not None and c.num_samples is not None
        for name, v, low in (("rank", c.rank, 1), ("num_samples", c.num_samples, 1), ("thin", c.thin, 1),
                             ("num_warmup", c.num_warmup, 0), ("init_sweeps", c.init_sweeps, 1),
                             ("num_chains", c.num_chains, 1),
                             ("checkpoint_every", run.checkpoint_every, 1)):  # fmt: skip
            if int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if c.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {c.likelihood!r}")
        if c.num_chains > 1 and run.devices != 1:
            raise ValueError("several chains run vectorised on one device (devices=1)")
        if c.linalg not in LINALG_CHOICES:
            raise ValueError(f"linalg must be one of {LINALG_CHOICES}, got {c.linalg!r}")
        if c.linalg == "auto":
            c = c._replace(linalg="lapack" if c.rank <= AUTO_LAPACK_MAX_RANK else "jax")
        if not c.keep_draws and c.predict_pairs is None:
            raise ValueError("keep_draws=False needs predict_pairs: there would be nothing to predict from")
        if not isinstance(c.implicit, bool):
            raise ValueError(f"implicit must be True or False, got {c.implicit!r}")
        if c.implicit_solver not in IMPLICIT_SOLVERS:
            raise ValueError(f"implicit_solver must be one of {IMPLICIT_SOLVERS}, got {c.implicit_solver!r}")
        if not isinstance(c.time, bool):
            raise ValueError(f"time must be True or False, got {c.time!r}")
        if int(c.time_bins) != c.time_bins or c.time_bins < 1:
            raise ValueError(f"time_bins must be an integer >= 1, got {c.time_bins!r}")
        times = c.predict_times
        if times is not None:
            times = np.asarray(times, np.float64)
            if c.predict_pairs is None or times.shape != c.predict_pairs[0].shape:
                raise ValueError("predict_times needs predict_pairs and one timestamp per pair")
            c = c._replace(predict_times=times)
        return c


def _checked(
    X: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None, side: str
) -> FeatureTable | sp.csr_matrix | None:
    """An attribute matrix checked now; a `FeatureTable` (raw ids) is aligned with the
    training id map, and checked, in `prepare_gibbs`."""
    return X if X is None or isinstance(X, FeatureTable) else feature_matrix(X, side)


def prepare_gibbs(
    rng_key: jax.Array, train: Ratings | PartitionedRatings, config: GibbsConfig, run: RunOptions = DEFAULT_RUN
) -> Program:
    """The Gibbs `Program`: the ALS start, the encoded data and the chain (`GibbsChain`);
    a chunk runs `gibbs_chunk`; it finishes as the `GibbsResult`. ``config`` must be
    validated (`GibbsConfig.validate`). ``train`` may be a partitioned folder
    (`probmf.data.partitioned`) for the plain model: each process then reads only the
    ratings of the rows its devices solve."""
    partitioned = isinstance(train, PartitionedRatings)
    if partitioned:  # each process reads only its own rows: nothing may need all the ratings
        needs_all = [name for name, on in (("likelihood='rounded'", config.likelihood == "rounded"),
                     ("implicit", config.implicit), ("time", config.time),
                     ("user_features", config.user_features is not None),
                     ("item_features", config.item_features is not None)) if on]  # fmt: skip
        if needs_all:
            raise ValueError(f"gibbs on a partitioned folder takes the plain model only, not {', '.join(needs_all)}")
    # Below, a partitioned folder reaches only the plain model's paths, which read no rating.
    ratings = cast(Ratings, train)
    c = config._replace(
        user_features=side_matrix(config.user_features, train.user_ids, "user"),
        item_features=side_matrix(config.item_features, train.item_ids, "item"),
    )
    pairs = c.predict_pairs
    assert c.num_warmup is not None and c.num_samples is not None, "config must be validated"
    mesh = device_mesh(check_devices(run.devices))
    # Host-side checks, before anything compiles: sides too large for an eigendecomposition
    # asked for, attribute matrices of the wrong size.
    if c.implicit:
        implicit_solver(c.implicit_solver, max(train.num_users, train.num_items))
    feature_ops = feature_operators(c.user_features, c.item_features, ratings)
    clock = training_clock(ratings, int(c.time_bins)) if c.time else None
    key_init, key_run = jax.random.split(rng_key)
    # linalg="jax" is the no-LAPACK path: the ALS start then uses CG too.
    solver = "cg" if c.linalg == "jax" else "auto"
    # The rounded likelihood writes each sweep's latent ratings through the tiles' slots, and
    # time effects the ratings minus their time terms.
    if isinstance(train, PartitionedRatings):
        data = encode_partitioned(train, layout_for_rank(c.rank), mesh=mesh)
    else:
        data = encode(train, layout_for_rank(c.rank), mesh=mesh, with_slots=c.likelihood == "rounded" or c.time)
    latent = levels = None
    if c.likelihood == "rounded":
        levels, lower, upper = (jnp.asarray(a) for a in rounding_intervals(ratings.values))
        latent = Latent(jnp.asarray(ratings.users), jnp.asarray(ratings.items), lower, upper)
    ops = implicit_operators(ratings, c.implicit_solver, data) if c.implicit else None
    total, num_kept = c.num_warmup + c.num_samples * c.thin, c.num_samples
    widths = None if feature_ops is None else tuple(None if op is None else op.num_cols for op in feature_ops)

    def start(key: jax.Array) -> GibbsChain:  # one chain, from ALS's MAP estimate and its residual precision
        init = fit_als(key, train, rank=c.rank, num_sweeps=c.init_sweeps, solver=solver, devices=run.devices)
        mse = 2.0 * float(init.trace[-1]) / len(train)  # >= the MAP training MSE
        return init_chain(
            init_state(init.params, 1.0 / max(mse, 1e-6), c.implicit, widths, int(c.time_bins) if c.time else None),
            total, num_kept, c.keep_draws, None if pairs is None else pairs[0].shape[0],
        )  # fmt: skip

    # Chain 0 draws with the keys of a single chain; chain j > 0 with keys folded with j (its
    # ALS start too), so one chain is the run it always was and the others are independent.
    keys_init, keys_run = (jnp.stack([key] + [jax.random.fold_in(key, j) for j in range(1, c.num_chains)])
                           for key in (key_init, key_run))  # fmt: skip
    chain = start(key_init) if c.num_chains == 1 else jax.tree.map(lambda *a: jnp.stack(a), *map(start, keys_init))
    if isinstance(train, PartitionedRatings):
        seen = (jnp.asarray(train.user_counts > 0), jnp.asarray(train.item_counts > 0))
    else:
        seen = seen_rows(train.users, train.items, train.num_users, train.num_items)
    times = pair_time = None
    if clock is not None:
        times = time_data(ratings, clock)
        if pairs is not None:
            pair_time = tuple(jnp.asarray(a) for a in clock_inputs(clock, pairs[0], c.predict_times))

    def run_chunk(chain: GibbsChain, first: int, num: int) -> GibbsChain:
        def one(key: jax.Array, chain: GibbsChain) -> GibbsChain:
            return gibbs_chunk(key, chain, data, Hyperpriors(), pairs, first, latent, levels, ops, seen, feature_ops,
                               times, pair_time, num=num, num_warmup=c.num_warmup, thin=c.thin,
                               linalg=c.linalg)  # fmt: skip

        return one(key_run, chain) if c.num_chains == 1 else jax.vmap(one)(keys_run, chain)

    def finish(chain: GibbsChain) -> GibbsResult:
        draws, moments = chain.draws, chain.moments
        if c.num_chains > 1:  # draws chain-major; the chains' moments pooled
            draws = None if draws is None else jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), draws)
            moments = None if moments is None else pooled_moments(moments)
        summary = None if pairs is None or moments is None else PredictiveSummary(*pairs, *moments)
        features = features_of(feature_ops)
        draws = None if draws is None else draws._replace(levels=levels, seen=seen, features=features, clock=clock)
        return GibbsResult(draws, jax.tree.map(np.asarray, chain.trace), summary, int(c.rank), int(c.num_chains))

    options = {**c._asdict(), "devices": run.devices}
    summary_pairs = options.pop("predict_pairs") or ()
    # Options at the values they had before they existed leave the fingerprint as it was, so
    # older checkpoints still resume.
    for name, before in (("implicit_solver", "auto"), ("num_chains", 1)):
        if options[name] == before:
            del options[name]
    predict_times = options.pop("predict_times")
    if not c.time:
        del options["time"], options["time_bins"]
    elif predict_times is not None:
        summary_pairs = (*summary_pairs, predict_times)
    # A matrix enters the checkpoint's fingerprint as its digest; none leaves the options as
    # they were before side information, so older checkpoints still resume.
    for name in ("user_features", "item_features"):
        matrix = options.pop(name)
        if matrix is not None:
            options[name] = matrix_digest(matrix)
    ckpt = fit_checkpoint(run.checkpoint, run.checkpoint_every, "gibbs", rng_key, train, options, *summary_pairs)
    return Program(chain, run_chunk, finish, total, desc="Gibbs sweeps", checkpoint=ckpt)


def pooled_moments(moments: tuple) -> tuple:
    """The running moments (count, mean, m2, noise) of `probmf.posterior.moments_update` of C
    chains (leading axis C) as those of all their draws: Chan et al.'s pairwise combination,
    m2 = sum_c m2_c + n_c (mean_c - mean)^2."""
    count, mean, m2, noise = moments
    total = jnp.sum(count)
    pooled = jnp.sum(count[:, None] * mean, axis=0) / jnp.maximum(total, 1.0)
    m2 = jnp.sum(m2 + count[:, None] * (mean - pooled) ** 2, axis=0)
    return total, pooled, m2, jnp.sum(noise, axis=0)


def fit_gibbs(
    rng_key: jax.Array,
    train: Ratings | PartitionedRatings,
    *,
    rank: int = 10,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    thin: int = 1,
    init_sweeps: int = 10,
    likelihood: str = "gaussian",
    implicit: bool = False,
    user_features: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None = None,
    item_features: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None = None,
    keep_draws: bool = True,
    predict_pairs: tuple | None = None,
    linalg: str = "auto",
    implicit_solver: str = "auto",
    num_chains: int = 1,
    time: bool = False,
    time_bins: int = DEFAULT_TIME_BINS,
    predict_times: ArrayLike | None = None,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 50,
) -> GibbsResult:
    """Sample the posterior of the biased MF model by blocked Gibbs (BPMF): `prepare_gibbs`
    run by `probmf.program.run_program`.

    The chain starts from ALS's MAP estimate (``init_sweeps`` sweeps, defaults otherwise)
    and its residual precision, burns in ``num_warmup`` sweeps and keeps ``num_samples``
    draws, one every ``thin`` sweeps (None: 50 and 200, or 200 and 800 with ``implicit``, whose
    predictions mix more slowly).

    Args:
      likelihood: "gaussian", or "rounded" (ratings are rounded latent Gaussians; see
        `probmf.fitters.gibbs.rounded`).
      implicit: implicit feedback in both directions (SVD++-like; see `probmf.fitters.gibbs.implicit`):
        which items each user rated, and which users rated each item, in ``train``.
      user_features: the users' side information (see `probmf.fitters.gibbs.features`):
        a `probmf.data.features.FeatureTable` on raw ids (`read_features`, or
        `probmf.data.movielens.load_features("ml-100k", "user")`), aligned with ``train``'s id
        map here (an id without a row gets zeros, with a warning); or a scipy.sparse or dense
        float matrix (num_users, G_u) / (num_items, G_i), row i for dense index i. Each row's
        prior mean gains x_i A, and a row with no training rating is predicted from its
        attributes. None: none.
      item_features: the items' side information, likewise.
      keep_draws: store every kept draw (S x (N + M)(k + 1) floats); False keeps only the
        running predictive moments at ``predict_pairs``, for data whose draws would not fit.
      predict_pairs: (users (P,), items (P,)) dense ids (-1 unknown) whose predictive mean
        and variance are accumulated during sampling (`PredictiveSummary`).
      linalg: "lapack", "jax" (no LAPACK calls; `probmf.linalg`) or "auto" (LAPACK up to
        rank `AUTO_LAPACK_MAX_RANK`, "jax" above, where LAPACK's batched calls can hang).
      implicit_solver: how each side's implicit vectors are drawn (`sample_implicit`):
        "eigen" exactly through an eigendecomposition of F^T F (at most
        `MAX_IMPLICIT_COLUMNS` columns), "cg" by conjugate gradients to a relative residual
        of `CG_TOLERANCE`, "auto" eigen where it fits and CG past it.
      num_chains: independent chains, vectorised on one device (chain j > 0 from its own ALS
        start, keys folded with j), each burning in and keeping ``num_samples`` draws; the
        result pools them (R-hat and ESS between chains: `probmf.diagnostics`).
      time: time effects as in timeSVD++ (see `probmf.fitters.gibbs.temporal`): an item bias
        per time bin and a user drift alpha_i dev_i(t); needs ``train.timestamps``. Predictions
        then take the pairs' ``times`` (None: "now", the last training bin and no drift).
      time_bins: the number of equal-width time bins over the training time range.
      predict_times: the ``predict_pairs``' timestamps (seconds) with ``time``; None: "now".
      devices: split the rows of each half-sweep across this many devices (`probmf.sharding`).
      checkpoint: folder to save the chain in every ``checkpoint_every`` sweeps and resume
        from (`probmf.checkpoint`); None: no checkpoints.
    Returns:
      `GibbsResult(posterior, trace, summary, num_factors)`; ``predict``/``predictive``
      average over the draws (or read the summary).
    """
    run = RunOptions(devices, checkpoint, checkpoint_every)
    config = GibbsConfig(rank, num_warmup, num_samples, thin, init_sweeps, likelihood, implicit, user_features,
                         item_features, keep_draws, predict_pairs, linalg, implicit_solver, num_chains, time,
                         time_bins, predict_times).validate(run)  # fmt: skip
    return run_program(prepare_gibbs(rng_key, train, config, run))
