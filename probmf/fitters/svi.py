"""SVI for the Bayesian biased MF model (`probmf.fitters.bayes_model.mf_model`) on
minibatches of ratings: `fit_svi` (and `svi_trainer`, its state and epoch runner for
chunked fits and timing), with a mean-field or low-rank guide (`make_guide`).

Each epoch is one host shuffle of the ratings, cut into batches of `default_batch_size`
ratings; the default guide runs the hand-written program of `probmf.fitters.meanfield`,
the others NumPyro's own `SVI`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jax.typing import ArrayLike
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

from probmf.checkpoint import check_every, fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.fitters.bayes_model import (
    _check_common,
    _device_data,
    _posterior_from_samples,
    init_small_factors,
    mf_model,
)
from probmf.fitters.meanfield import _meanfield_program
from probmf.posterior import Posterior, seen_rows
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program
from probmf.sharding import check_devices, device_mesh, replicated, split_along

GUIDES = ("normal", "lowrank")


class SVIResult(NamedTuple):
    """``posterior``: ``num_samples`` draws from the fitted guide; ``elbo``: (num_epochs,) mean
    ELBO estimate per epoch (nats, full-data scale); ``params``: the guide's parameters."""

    posterior: Posterior
    elbo: np.ndarray
    params: dict

    @property
    def num_chains(self) -> int:
        return 1

    @property
    def rank(self) -> int:
        return self.posterior.rank

    @property
    def num_samples(self) -> int:
        return int(self.posterior.num_samples)

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        return self.posterior.predict(users, items)

    def predictive(self, users: ArrayLike, items: ArrayLike) -> tuple[jax.Array, jax.Array]:
        return self.posterior.predictive(users, items)


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (SVIResult,)


def make_guide(
    model: Callable, guide: str, *, init_scale: float = 0.1, guide_rank: int | None = None
) -> AutoNormal | AutoLowRankMultivariateNormal:
    """AutoNormal (mean-field) or AutoLowRankMultivariateNormal over every latent site,
    initialised at small random factors and the other sites' prior medians."""
    init = init_small_factors(scale=init_scale)
    if guide == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=0.01)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=0.01, rank=guide_rank)
    raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")


_BIG_DATA_STEPS = 256  # optimizer steps per epoch above which the default batch grows (see default_batch_size)


def default_batch_size(num_ratings: int) -> int:
    """4096 ratings per step, or n / 256 when that is larger (at most 256 steps per epoch).

    A step costs O(B) for the likelihood plus O((N + M) k) for drawing, scoring and updating
    every variational parameter, so an epoch costs (n / B) x that dense part, which dominates
    at B = 4096 on big data. ML-100K and ML-1M keep B = 4096 (20 and 195-244 steps per epoch);
    synthetic ML-20M (20M ratings) gets B = 78,126: 256 steps per epoch, 30,720 Adam steps
    over the default 120 epochs, 13 times what an ML-100K fit takes. Chosen on the training
    data only (synthetic ML-20M, a 10% validation split of its training ratings, rank 10,
    5 epochs each, 18M ratings): final ELBO / validation RMSE -15.41M / 0.5166 at 256 steps
    per epoch, -15.61M / 0.5175 at 512, -16.51M / 0.5241 at B = 4096 (4,394 steps): at equal
    epochs, fewer and larger steps fit better, besides being 10 times cheaper.
    """
    return max(4096, -(-int(num_ratings) // _BIG_DATA_STEPS))


class SVITrainer(NamedTuple):
    """A prepared SVI run (`svi_trainer`): ``run_epochs(state, first, num) -> state`` runs epochs
    ``first .. first + num - 1`` (each a fixed function of (state, epoch): its shuffle is seeded
    by (key, epoch)); ``finish(state)`` draws the posterior. ``state`` is (optimiser state,
    ELBO trace (num_epochs,) float64); ``batch`` ratings per step, ``steps`` per epoch."""

    state: tuple
    run_epochs: Callable
    finish: Callable
    num_epochs: int
    batch: int
    steps: int
    mesh: Any

    @property
    def program(self) -> Program:
        """This run as a `probmf.program.Program` (one epoch a step)."""
        return Program(self.state, self.run_epochs, self.finish, self.num_epochs, desc="SVI epochs")


def _check_svi_options(rank: int, guide: str, hyper: str, num_epochs: int, batch_size: int | None,
                       learning_rate: float, num_samples: int, guide_rank: int, init_scale: float,
                       devices: int) -> int:  # fmt: skip
    _check_common(rank, hyper, num_epochs=num_epochs, num_samples=num_samples, guide_rank=guide_rank,
                  **({} if batch_size is None else {"batch_size": batch_size}))  # fmt: skip
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    if not learning_rate > 0 or not init_scale > 0:
        raise ValueError("learning_rate and init_scale must be > 0")
    return check_devices(devices)


def svi_trainer(
    rng_key: jax.Array,
    train: Ratings,
    *,
    rank: int = 10,
    guide: str = "normal",
    hyper: str = "gamma",
    num_epochs: int = 120,
    batch_size: int | None = None,
    learning_rate: float = 0.05,
    num_samples: int = 100,
    guide_rank: int = 4,
    init_scale: float = 0.1,
    devices: int = 1,
) -> SVITrainer:
    """The state and epoch runner of `fit_svi` (same options, less the checkpoint): for
    fitting in chunks and for timing epochs (``experiments/bench.py``)."""
    devices = _check_svi_options(rank, guide, hyper, num_epochs, batch_size, learning_rate, num_samples, guide_rank,
                                 init_scale, devices)  # fmt: skip
    users, items, values = _device_data(train)
    seen = seen_rows(train.users, train.items, train.num_users, train.num_items)
    n = users.shape[0]
    batch = min(default_batch_size(n) if batch_size is None else int(batch_size), n)
    mesh = device_mesh(devices)  # enough devices?
    if batch % devices:
        raise ValueError(f"batch size {batch} must divide by devices={devices} (each device takes an equal share)")
    steps = n // batch
    hand_written = guide == "normal" and hyper in ("fixed", "gamma")
    # mu and n enter as traced arguments, so fits with the same shapes and options share
    # one compiled epoch (a second fit does not retrace).
    data_kwargs = {"mu": jnp.mean(values), "num_ratings": jnp.float32(n)}
    init, epoch, to_params, draw = _svi_program(
        train.num_users, train.num_items, int(rank), hyper, guide, int(guide_rank), float(init_scale),
        float(learning_rate), int(num_epochs) * steps, hand_written,
    )  # fmt: skip
    key_init, key_shuffle, key_draw = jax.random.split(rng_key, 3)
    state = init(key_init, users[:batch], items[:batch], values[:batch], data_kwargs)
    users, items, values, data_kwargs = replicated(mesh, (users, items, values, data_kwargs))
    seed = [int(w) for w in np.asarray(jax.random.key_data(key_shuffle)).ravel()]

    def run_epochs(full_state: tuple, first: int, num: int) -> tuple:
        state, elbo = replicated(mesh, full_state[0]), np.array(full_state[1], np.float64)
        for e in range(first, first + num):
            perm = np.random.default_rng([*seed, e]).permutation(n)
            idx = perm[: steps * batch].reshape(steps, batch).astype(np.int32)
            idx = split_along(mesh, idx, axis=1) if mesh is not None else jnp.asarray(idx)
            state, losses = epoch(state, idx, users, items, values, data_kwargs)
            elbo[e] = -float(jnp.mean(losses))
        return state, elbo

    def finish(full_state: tuple) -> SVIResult:
        state, elbo = full_state
        params = to_params(state)
        draws = draw(jax.random.split(key_draw, int(num_samples)), params)
        posterior = _posterior_from_samples(draws, float(data_kwargs["mu"]), hyper, seen)
        return SVIResult(posterior, np.asarray(elbo), params)

    full_state = (replicated(mesh, state), np.full(int(num_epochs), np.nan))
    return SVITrainer(full_state, run_epochs, finish, int(num_epochs), batch, steps, mesh)


def fit_svi(
    rng_key: jax.Array,
    train: Ratings,
    *,
    rank: int = 10,
    guide: str = "normal",
    hyper: str = "gamma",
    num_epochs: int = 120,
    batch_size: int | None = None,
    learning_rate: float = 0.05,
    num_samples: int = 100,
    guide_rank: int = 4,
    init_scale: float = 0.1,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> SVIResult:
    """Fit `mf_model` by stochastic variational inference on minibatches of ratings.

    Maximises ELBO = E_q[log p(R, theta) - log q(theta)] on minibatches of B ratings
    (likelihood scaled by n / B), Adam with a cosine-decayed step size. Each epoch is one
    host permutation of the ratings, seeded by (key, epoch), cut into floor(n / B) batches
    (the remainder rotates with the shuffle). A step costs O(B) for the likelihood and
    O((N + M) k) for the guide, prior and Adam update, never O(n).

    The gradient is Trace_ELBO's one-draw reparameterised estimate. For the default guide
    ("normal", hyper "fixed" or "gamma", mean-field) it is computed by `meanfield_elbo`, a
    hand-written equivalent of NumPyro's `Trace_ELBO` + `AutoNormal` that keeps the parameters
    flat and avoids softplus and logs of the dense parameters (the cost of NumPyro's step on
    CPU); "lowrank" and hyper "wishart" run NumPyro's `SVI` itself. Posterior draws of the
    mean-field guide come in antithetic pairs (`_meanfield_draw`).

    Args:
      rng_key: PRNG key (initialisation, shuffles, ELBO noise, posterior draws).
      train: training `Ratings` (every id known).
      rank: k >= 1.
      guide: "normal" (mean-field) or "lowrank" (AutoLowRankMultivariateNormal with
        ``guide_rank`` directions of covariance).
      hyper: "fixed", "gamma" or "wishart" (see `mf_model`).
      num_epochs: passes over the ratings; batch_size: B ratings per step (None:
        `default_batch_size`: 4096 up to about 1M ratings, then n / 256).
      learning_rate: Adam's initial step size.
      num_samples: draws from the fitted guide kept in ``posterior``.
      init_scale: sd of the initial factor means.
      devices: data parallel over this many devices (`probmf.sharding`): every batch is split
        across them, everything else is replicated; B must divide by it.
      checkpoint: a folder to save the run's state in every ``checkpoint_every`` epochs and to
        resume it from (`probmf.checkpoint`; a resumed fit equals an uninterrupted one).

    Returns:
      `SVIResult(posterior, elbo, params)`.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> res = fit_svi(jax.random.PRNGKey(0), train, rank=2, num_epochs=2, batch_size=256, num_samples=5)
      >>> res.posterior.draws.W.shape, res.elbo.shape
      ((5, 60, 2), (2,))
    """
    config = SVIConfig(rank, guide, hyper, num_epochs, batch_size, learning_rate, num_samples, guide_rank, init_scale)
    run = RunOptions(devices, checkpoint, checkpoint_every)
    return run_program(prepare_svi(rng_key, train, config.validate(run), run))


class SVIConfig(NamedTuple):
    """SVI's options (`fit_svi` documents each)."""

    rank: int = 10
    guide: str = "normal"
    hyper: str = "gamma"
    num_epochs: int = 120
    batch_size: int | None = None
    learning_rate: float = 0.05
    num_samples: int = 100
    guide_rank: int = 4
    init_scale: float = 0.1

    def validate(self, run: RunOptions = DEFAULT_RUN) -> SVIConfig:
        """Self, or a ValueError naming the option out of range (``run``'s too)."""
        _check_svi_options(*self, run.devices)
        check_every(run.checkpoint_every)
        return self


def prepare_svi(rng_key: jax.Array, train: Ratings, config: SVIConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """The SVI `Program` (`svi_trainer`'s, one epoch a step, checkpointed as ``run`` says);
    it finishes as the `SVIResult`. ``config`` must be validated."""
    options = {**config._asdict(), "devices": run.devices}
    ckpt = None
    if run.checkpoint is not None:
        _device_data(train)  # the data's own errors first
        ckpt = fit_checkpoint(run.checkpoint, run.checkpoint_every, "svi", rng_key, train, options)
    return svi_trainer(rng_key, train, **options).program._replace(checkpoint=ckpt)


@functools.lru_cache(maxsize=8)
def _svi_program(
    num_users: int,
    num_items: int,
    rank: int,
    hyper: str,
    guide: str,
    guide_rank: int,
    init_scale: float,
    learning_rate: float,
    total_steps: int,
    hand_written: bool,
) -> tuple[Callable, Callable, Callable, Callable]:
    """(init, epoch, to_params, draw) for one configuration: ``init(key, users, items, values,
    data_kwargs)`` (one batch, for NumPyro to trace the model) -> state, ``epoch(state, idx
    (steps, B), users, items, values, data_kwargs) -> (state, losses (steps,))``,
    ``to_params(state)`` (the guide's constrained parameters, AutoNormal's names on the
    hand-written path) and ``draw(keys (S,), params)`` -> {W, U, b, c, tau, ...} draws.

    With ``hand_written`` the state is (params {site: (loc, log scale)}, Adam state, ELBO key,
    step) of `meanfield_elbo`, step s drawing its noise from fold_in(key, s), and NumPyro is
    not involved (`probmf.fitters.meanfield._meanfield_program`); else NumPyro's `SVIState`.
    Both use Adam with the same cosine-decayed step size."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1), alpha=0.01)
    adam = optax.adam(schedule)
    if hand_written:
        init, update, to_params, draw = _meanfield_program(num_users, num_items, rank, hyper, init_scale, adam)
    else:
        model = functools.partial(mf_model, num_users=num_users, num_items=num_items, rank=rank, hyper=hyper)
        q = make_guide(model, guide, init_scale=init_scale, guide_rank=guide_rank)
        svi = SVI(model, q, numpyro.optim.optax_to_numpyro(adam), Trace_ELBO())

        def init(key: jax.Array, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict) -> Any:
            return svi.init(key, users, items, values, **data_kwargs)

        def update(
            state: Any, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict
        ) -> tuple[Any, jax.Array]:
            return svi.update(state, users, items, values, **data_kwargs)

        to_params = svi.get_params

        @jax.jit
        def draw(keys: jax.Array, params: dict) -> dict:
            return jax.lax.map(lambda k: q.sample_posterior(k, params), keys)

    @jax.jit
    def epoch(
        state: Any, idx: jax.Array, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict
    ) -> tuple[Any, jax.Array]:
        def step(s: Any, batch_idx: jax.Array) -> tuple[Any, jax.Array]:
            return update(s, users[batch_idx], items[batch_idx], values[batch_idx], data_kwargs)

        return jax.lax.scan(step, state, idx)

    return init, epoch, to_params, draw
