"""NUTS for the Bayesian biased MF model (`probmf.fitters.bayes_model.mf_model`): every
parameter sampled jointly (`fit_nuts`), optionally on the ratings of the most active users
and items only (`subset_ratings`), with R-hat and ESS of predictions (`NUTSInfo`). The
result keeps NumPyro's `MCMC` object (``NUTSResult.mcmc``), so ``arviz.from_numpyro`` reads
the run as NumPyro recorded it.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from numpyro.infer import MCMC, NUTS

from probmf.data.ratings import Ratings
from probmf.diagnostics import prediction_diagnostics
from probmf.fitters.bayes_model import (
    _check_common,
    _device_data,
    _posterior_from_samples,
    init_small_factors,
    mf_model,
)
from probmf.posterior import Posterior, seen_rows
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program, staged_program


class NUTSInfo(NamedTuple):
    """NUTS diagnostics.

    num_divergences: (C,) divergent transitions after warm-up, per chain.
    step_size: (C,) adapted step size per chain.
    mean_tree_depth: (C,) mean log2(leapfrog steps + 1) per chain.
    r_hat, ess: (P,) rank-normalised split R-hat and bulk effective sample size of the
      predictions at the check pairs (all chains together; `probmf.diagnostics`).
    check_users, check_items: (P,) the training pairs the diagnostics are computed on.
    seconds: wall time of warm-up and sampling.
    """

    num_divergences: np.ndarray
    step_size: np.ndarray
    mean_tree_depth: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    check_users: np.ndarray
    check_items: np.ndarray
    seconds: float


class MCMCRun(tuple):
    """NumPyro's `MCMC` object of a run (``.mcmc``), carried by a `NUTSResult` as an empty
    tuple: a pytree with no leaves (tree maps and ``device_put`` keep it as it is), and what
    `probmf.persistence` writes as an empty list, so a saved model leaves the object out and
    loads with ``run=()`` (``NUTSResult.mcmc`` None). An MCMC object holds compiled
    functions and the training data; it is not a file format."""

    mcmc: MCMC | None

    def __new__(cls, mcmc: MCMC | None = None) -> MCMCRun:
        self = super().__new__(cls)
        self.mcmc = mcmc
        return self

    def __repr__(self) -> str:
        return f"MCMCRun({type(self.mcmc).__name__})"


jax.tree_util.register_pytree_node(MCMCRun, lambda run: ((), run.mcmc), lambda mcmc, _: MCMCRun(mcmc))


class NUTSResult(NamedTuple):
    """``posterior``: the draws of every chain, chain-major (S = num_chains * num_samples);
    ``info``: `NUTSInfo`; ``run``: the `MCMCRun` holding NumPyro's `MCMC` (``()`` once saved
    and loaded): ``arviz.from_numpyro(result.mcmc)``."""

    posterior: Posterior
    info: NUTSInfo
    run: tuple = ()

    @property
    def mcmc(self) -> MCMC | None:
        """The `numpyro.infer.MCMC` that drew the samples, None for a loaded model. Its
        extra fields hold the per-draw ``diverging``, ``num_steps`` and
        ``adapt_state.step_size``."""
        return getattr(self.run, "mcmc", None)

    @property
    def rank(self) -> int:
        return self.posterior.rank

    @property
    def num_samples(self) -> int:
        return int(self.posterior.num_samples)

    @property
    def num_chains(self) -> int:
        return len(self.info.step_size)

    @property
    def r_hat_max(self) -> float:
        return float(np.max(self.info.r_hat))

    @property
    def ess_min(self) -> float:
        return float(np.min(self.info.ess))

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        return self.posterior.predict(users, items)

    def predictive(self, users: ArrayLike, items: ArrayLike) -> tuple[jax.Array, jax.Array]:
        return self.posterior.predictive(users, items)


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (NUTSInfo, NUTSResult)


def subset_ratings(train: Ratings, *, max_users: int | None, max_items: int | None) -> np.ndarray:
    """bool (n,): the ratings among the ``max_users`` most active users and ``max_items`` most
    rated items (None: all of that side)."""
    keep = np.ones(len(train), bool)
    for idx, size, top in ((train.users, train.num_users, max_users), (train.items, train.num_items, max_items)):
        if top is not None and top < size:
            counts = np.bincount(idx, minlength=size)
            chosen = np.zeros(size, bool)
            chosen[np.argsort(-counts, kind="stable")[:top]] = True
            keep &= chosen[idx]
    return keep


class NUTSConfig(NamedTuple):
    """NUTS's options (`fit_nuts` documents each)."""

    rank: int = 3
    hyper: str = "gamma"
    num_warmup: int = 200
    num_samples: int = 200
    num_chains: int = 2
    max_tree_depth: int = 7
    target_accept_prob: float = 0.8
    init_scale: float = 0.1
    max_users: int | None = None
    max_items: int | None = None
    num_check_pairs: int = 200

    def validate(self, run: RunOptions = DEFAULT_RUN) -> NUTSConfig:
        """Self, or a ValueError naming the option out of range."""
        c = self
        limits = {k: v for k, v in (("max_users", c.max_users), ("max_items", c.max_items)) if v is not None}
        _check_common(c.rank, c.hyper, num_samples=c.num_samples, num_chains=c.num_chains,
                      max_tree_depth=c.max_tree_depth, num_check_pairs=c.num_check_pairs, **limits)  # fmt: skip
        if int(c.num_warmup) != c.num_warmup or c.num_warmup < 0:
            raise ValueError(f"num_warmup must be an integer >= 0, got {c.num_warmup!r}")
        if not 0.0 < c.target_accept_prob < 1.0 or not c.init_scale > 0:
            raise ValueError("need 0 < target_accept_prob < 1 and init_scale > 0")
        return c


def prepare_nuts(rng_key: jax.Array, train: Ratings, config: NUTSConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """NUTS as a one-step `Program`: NumPyro's `MCMC.run` draws every chain in one call."""
    return staged_program(lambda: _nuts(rng_key, train, config), "NUTS")


def fit_nuts(
    rng_key: jax.Array,
    train: Ratings,
    *,
    rank: int = 3,
    hyper: str = "gamma",
    num_warmup: int = 200,
    num_samples: int = 200,
    num_chains: int = 2,
    max_tree_depth: int = 7,
    target_accept_prob: float = 0.8,
    init_scale: float = 0.1,
    max_users: int | None = None,
    max_items: int | None = None,
    num_check_pairs: int = 200,
) -> NUTSResult:
    """Sample the posterior of `mf_model` (every parameter jointly) by NUTS.

    Chains run one after another (``chain_method="sequential"``), each from its own small
    random factors; R-hat and ESS are those of the predicted means at ``num_check_pairs``
    training pairs (split R-hat, so one chain works too).

    Practical limits (2 shared CPU cores): a draw costs (leapfrog steps) x (one gradient over
    all n ratings). Measured on ML-100K u1 (80k ratings, rank 3, 15.7k parameters): 2 chains
    x (150 warm-up + 150 draws), trees of ~63 steps, took 212 s with no divergences, split
    R-hat <= 1.014 and ESS >= 130 on 200 predictions (the classic split R-hat and NumPyro's
    ESS, the definitions then); the defaults take ~5 minutes there.
    Cost grows with n x rank x tree size, so ML-1M and up are out of reach: use
    ``max_users``/``max_items`` (the most active users and items; the others get zero
    factors and biases, i.e. they are predicted as cold), or SVI/Gibbs.

    Args:
      rng_key: PRNG key (initialisation and the chains).
      train: training `Ratings` (every id known).
      rank: k >= 1.
      hyper: "fixed", "gamma" or "wishart" (see `mf_model`).
      num_warmup: warm-up draws per chain.
      num_samples: kept draws per chain.
      num_chains: >= 1.
      max_tree_depth: NUTS's tree depth limit.
      target_accept_prob: NUTS's target acceptance probability.
      init_scale: sd of the initial factors.
      max_users: fit only the ratings among this many most active users.
      max_items: and among this many most active items.
      num_check_pairs: training pairs whose predictions get R-hat/ESS.

    Returns:
      `NUTSResult(posterior, info)`; ``r_hat_max``, ``ess_min`` summarise ``info``.
    """
    config = NUTSConfig(rank, hyper, num_warmup, num_samples, num_chains, max_tree_depth, target_accept_prob,
                        init_scale, max_users, max_items, num_check_pairs)  # fmt: skip
    return run_program(prepare_nuts(rng_key, train, config.validate()))


def _nuts(rng_key: jax.Array, train: Ratings, config: NUTSConfig) -> NUTSResult:
    (rank, hyper, num_warmup, num_samples, num_chains, max_tree_depth, target_accept_prob, init_scale, max_users,
     max_items, num_check_pairs) = config  # fmt: skip
    users, items, values = _device_data(train)
    keep = subset_ratings(train, max_users=max_users, max_items=max_items)
    if not keep.all():
        users, items, values = users[keep], items[keep], values[keep]
    mu = float(jnp.mean(values))
    key_check, key_run = jax.random.split(rng_key)
    check = np.asarray(jax.random.choice(key_check, users.shape[0], (min(num_check_pairs, users.shape[0]),), False))
    model = functools.partial(
        mf_model, num_users=train.num_users, num_items=train.num_items, rank=rank, mu=mu, hyper=hyper
    )
    kernel = NUTS(
        model,
        max_tree_depth=int(max_tree_depth),
        target_accept_prob=target_accept_prob,
        init_strategy=init_small_factors(scale=init_scale),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=int(num_warmup),
        num_samples=int(num_samples),
        num_chains=int(num_chains),
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.run(key_run, users, items, values, extra_fields=("diverging", "num_steps", "adapt_state.step_size"))
    samples = mcmc.get_samples()
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - t0
    # Rows with no fitted rating (all of them outside max_users / max_items) were never
    # constrained by data: they are predicted as cold, under each draw's prior.
    posterior = _posterior_from_samples(samples, mu, hyper, seen_rows(users, items, train.num_users, train.num_items))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    check_u, check_i = np.asarray(users)[check], np.asarray(items)[check]
    r_hat, ess = prediction_diagnostics(posterior, check_u, check_i, num_chains=int(num_chains))
    info = NUTSInfo(
        num_divergences=np.asarray(extra["diverging"]).sum(axis=1),
        step_size=np.asarray(extra["adapt_state.step_size"])[:, -1],
        mean_tree_depth=np.log2(np.asarray(extra["num_steps"]) + 1.0).mean(axis=1),
        r_hat=r_hat,
        ess=ess,
        check_users=check_u,
        check_items=check_i,
        seconds=seconds,
    )
    return NUTSResult(posterior, info, MCMCRun(mcmc))
