"""The embedding MLP: user and item embeddings through a ReLU tower, trained per rating.

``fit_mlp``: user and item embeddings p_i, q_j (dim = rank) are concatenated and passed
through ReLU layers with dropout (`probmf.nn.tower`) to a scalar,

    r_hat_ij = mu + b_i + c_j + f([p_i; q_j]),      f = dense_L o relu o ... o relu o dense_1.

Training, shared with the residual hybrid (`probmf.fitters.residual`, which uses this
module's `Hyper`, `compiled_epoch`, `ridge_weights`, `salts` and option checks): the model is
trained by `probmf.fitters.minibatch.train_minibatch` (Adam, masked last batch, early
stopping on the validation RMSE of the predictions clipped to the training rating range,
the project's clipping rule). Per batch S the objective is the per-rating estimate of F / n,

    loss_S = sum_k w_k [1/2 (t_k - r_hat_k)^2 + lam/2 (a_k |x_{i_k}|^2 + a'_k |y_{j_k}|^2)
             + lam_bias/2 (...)] / sum_k w_k + lam_net/2 |weights|^2 / n,

where row i's ridge is spread over its n_i ratings, a_k = n_i^(alpha - 1), so that summed
over all ratings it is lam n_i^alpha |x_i|^2 (alpha = ``weight_exponent``, as in ALS).

The validation share is carved from the TRAINING ratings (`probmf.fitters.holdout`); with
``refit=True`` the model is then retrained on all of them for the chosen number of epochs.
Predictions for a user or item that is unknown (-1) or has no fitted rating use mu + biases
only: the network's term is masked, and every gather uses a safe index, never JAX's clamping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from probmf.checkpoint import fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.fitters.holdout import known, validation_split
from probmf.fitters.minibatch import (
    MinibatchResult,
    MinibatchTrace,
    check_loop_options,
    make_epoch,
    rating_range,
    train_minibatch,
)
from probmf.model import MFParams, predict_with_fallback
from probmf.nn import Dense, as_hidden, init_layers, l2, tower
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program, staged_program
from probmf.sharding import device_mesh


class MLPParams(NamedTuple):
    """Embedding MLP (a pytree): P (num_users, rank), Q (num_items, rank) embeddings,
    b (num_users,), c (num_items,) biases, mu () offset, layers: the dense layers, the last
    of width 1."""

    P: jax.Array
    Q: jax.Array
    b: jax.Array
    c: jax.Array
    mu: jax.Array
    layers: tuple


# ---- the model ----------------------------------------------------------------------------
def init(
    rng_key: jax.Array,
    num_users: int,
    num_items: int,
    *,
    rank: int,
    hidden: int | tuple[int, ...] = (64, 32),
    mu: ArrayLike = 0.0,
    scale: float = 0.1,
) -> MLPParams:
    """Embeddings ~ N(0, scale^2), biases 0, offset ``mu``, layers by `probmf.nn.init_layers`."""
    key_p, key_q, key_l = jax.random.split(rng_key, 3)
    return MLPParams(
        P=scale * jax.random.normal(key_p, (num_users, rank), jnp.float32),
        Q=scale * jax.random.normal(key_q, (num_items, rank), jnp.float32),
        b=jnp.zeros((num_users,), jnp.float32),
        c=jnp.zeros((num_items,), jnp.float32),
        mu=jnp.asarray(mu, jnp.float32),
        layers=init_layers(key_l, 2 * rank, as_hidden(hidden)),
    )


def apply(
    params: MLPParams, users: jax.Array, items: jax.Array, *, dropout: float = 0.0, rng_key: jax.Array | None = None
) -> jax.Array:
    """r_hat = mu + b_i + c_j + f([p_i; q_j]) for in-range int (B,) ``users``/``items`` -> (B,)."""
    x = jnp.concatenate([params.P[users], params.Q[items]], axis=-1)
    f = tower(params.layers, x, dropout=dropout, rng_key=rng_key)
    return params.mu + params.b[users] + params.c[items] + f


# ---- the objective: a per-rating estimate of F / n (see the module docstring) -------------
class Hyper(NamedTuple):
    """Hashable training constants; one compiled epoch per distinct value."""

    lam: float
    lam_bias: float
    lam_net: float
    dropout: float
    num_ratings: int


def batch_key(salt: jax.Array) -> jax.Array:
    """The dropout key of a batch from its ratings' salts (B,) (`salts`)."""
    # The batch's rows differ every epoch (host shuffle), so two of their random salts seed
    # a fresh dropout key per step, deterministic for a fixed fit key.
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), salt[0]), salt[-1])


def batch_mean(weights: jax.Array, x: jax.Array) -> jax.Array:
    """sum_k w_k x_k / sum_k w_k over a batch (B,), 0 for an all-padding batch."""
    return jnp.sum(weights * x) / jnp.maximum(jnp.sum(weights), 1.0)


def ridge_weights(
    part: Ratings, num_users: int, num_items: int, exponent: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a_user, a_item) per rating: n^(alpha - 1), so the ridge summed over a row's n ratings
    is lam n^alpha; and (n_users, n_items) counts."""
    n_u = np.bincount(part.users, minlength=num_users).astype(np.float32)
    n_i = np.bincount(part.items, minlength=num_items).astype(np.float32)
    a_u = np.maximum(n_u, 1.0) ** (exponent - 1.0)
    a_i = np.maximum(n_i, 1.0) ** (exponent - 1.0)
    return a_u[part.users], a_i[part.items], n_u, n_i


def salts(rng_key: jax.Array, n: int) -> np.ndarray:
    """int32 (n,) random salts, one per rating: `batch_key` makes a batch's dropout key of them."""
    return np.asarray(jax.random.randint(rng_key, (n,), 0, np.iinfo(np.int32).max, jnp.int32))


def mlp_objective(params: MLPParams, batch: tuple[jax.Array, ...], weights: jax.Array, *, hyper: Hyper) -> jax.Array:
    """loss_S of the embedding MLP; batch = (users, items, ratings, a_user, a_item, salt),
    each (B,); ``mu`` gets no gradient."""
    users, items, ratings, a_u, a_i, salt = batch
    params = params._replace(mu=jax.lax.stop_gradient(params.mu))
    err = ratings - apply(params, users, items, dropout=hyper.dropout, rng_key=batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(params.P[users] ** 2, -1) + a_i * jnp.sum(params.Q[items] ** 2, -1))
    ridge += hyper.lam_bias * (a_u * params.b[users] ** 2 + a_i * params.c[items] ** 2)
    return (
        batch_mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * l2(params.layers) / hyper.num_ratings
    )


# Compiled epochs, shared by every fit with the same constants (a second fit does not retrace).
_EPOCHS: dict = {}


def compiled_epoch(
    objective: Callable, hyper: Hyper, learning_rate: float, **constants: Any
) -> tuple[Callable, optax.GradientTransformation, Callable]:
    """(loss_fn, optimizer, jitted epoch) of ``objective(params, batch, weights, hyper=hyper,
    **constants)`` under Adam at ``learning_rate``, built once per distinct value of them."""
    key = (objective, hyper, learning_rate, tuple(sorted(constants.items())))
    if key not in _EPOCHS:
        loss_fn = functools.partial(objective, hyper=hyper, **constants)
        optimizer = optax.adam(learning_rate)
        _EPOCHS[key] = (loss_fn, optimizer, make_epoch(loss_fn, optimizer))
    return _EPOCHS[key]


@jax.jit
def _mlp_predict(params: MLPParams, users: jax.Array, items: jax.Array) -> jax.Array:
    return apply(params, users, items)


# ---- the result ---------------------------------------------------------------------------
class MLPResult(NamedTuple):
    """A fitted embedding MLP. ``seen_users``/``seen_items`` mark rows with a fitted rating;
    ``trace``/``best_epoch``: the minibatch trace and the epoch kept (0-based)."""

    params: MLPParams
    seen_users: np.ndarray
    seen_items: np.ndarray
    trace: object
    best_epoch: int

    @property
    def rank(self) -> int:
        return int(self.params.P.shape[1])

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        """(n,) means for int (n,) ``users``/``items``; an unknown (-1) or unfitted id drops
        its embedding and the network: mu + the known biases."""
        users, items = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
        warm = known(users, self.seen_users) & known(items, self.seen_items)
        p = self.params
        fallback = predict_with_fallback(MFParams(p.P[:, :0], p.Q[:, :0], p.b, p.c, p.mu), users, items)
        pred = _mlp_predict(p, jnp.where(warm, users, 0), jnp.where(warm, items, 0))
        return jnp.where(warm, pred, fallback)


# ---- fitting ------------------------------------------------------------------------------

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (Dense, MLPParams, MLPResult, MinibatchTrace)


class MLPConfig(NamedTuple):
    """The options of `fit_mlp` (it documents each); `validate` checks them."""

    rank: int = 32
    hidden: tuple | int = (64, 32)
    dropout: float = 0.1
    lam: float = 0.05
    lam_bias: float = 0.05
    lam_net: float = 1.0
    weight_exponent: float = 1.0
    learning_rate: float = 2e-3
    batch_size: int = 1024
    num_epochs: int = 60
    patience: int = 5
    validation_fraction: float = 0.1
    refit: bool = True
    init_scale: float = 0.1

    def validate(self, run: RunOptions = DEFAULT_RUN) -> MLPConfig:
        """The config with ``hidden`` a tuple, or a ValueError naming the option out of range."""
        c = self._replace(hidden=as_hidden(self.hidden))
        check_mlp_options(**{k: v for k, v in c._asdict().items() if k != "refit"}, devices=run.devices,
                          checkpoint=run.checkpoint, checkpoint_every=run.checkpoint_every)  # fmt: skip
        return c


def prepare_mlp(rng_key: jax.Array, train: Ratings, config: MLPConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """The MLP as a one-step `Program` of two stages, each an epoch program that checkpoints
    itself: the early-stopped fit, then the refit on all of ``train``."""
    return staged_program(lambda: _mlp(rng_key, train, config, run), "MLP")


def fit_mlp(
    rng_key: jax.Array,
    train: Ratings,
    *,
    rank: int = 32,
    hidden: int | tuple[int, ...] = (64, 32),
    dropout: float = 0.1,
    lam: float = 0.05,
    lam_bias: float = 0.05,
    lam_net: float = 1.0,
    weight_exponent: float = 1.0,
    learning_rate: float = 2e-3,
    batch_size: int = 1024,
    num_epochs: int = 60,
    patience: int = 5,
    validation_fraction: float = 0.1,
    refit: bool = True,
    init_scale: float = 0.1,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> MLPResult:
    """Fit the embedding MLP (module docstring) by minibatch Adam with early stopping.

    Args:
      rng_key: PRNG key (initialisation, validation split, shuffles, dropout).
      train: training `Ratings`.
      rank: embedding dim (each of p_i, q_j).
      hidden: widths of the ReLU layers, a tuple (or an int: one layer).
      dropout: rate in [0, 1) after each hidden layer.
      lam: ridge of the embeddings, lam n_i^weight_exponent per row.
      lam_bias: ridge of the biases, likewise.
      lam_net: L2 of the dense weights (over the whole objective F).
      learning_rate: Adam's step size.
      batch_size: ratings per step.
      num_epochs: most epochs.
      patience: training stops after this many epochs without a better validation RMSE (of
        the predictions clipped to the training rating range).
      validation_fraction: share of ``train`` held out for early stopping (0: none).
      refit: retrain on all of ``train`` for the chosen number of epochs.
      init_scale: sd of the initial embeddings.
      devices: D devices, data parallel (`probmf.fitters.minibatch`); ``batch_size`` must
        divide by D.
      checkpoint: folder to save the epochs in and resume from (None: no checkpoints).
      checkpoint_every: epochs between saves.
    Returns:
      `MLPResult`; ``predict(users, items)`` and ``rank``.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> res = fit_mlp(jax.random.PRNGKey(0), train, rank=4, hidden=8, num_epochs=2)
      >>> res.predict(jnp.array([0, -1]), jnp.array([1, 2])).shape
      (2,)
    """
    config = MLPConfig(rank, hidden, dropout, lam, lam_bias, lam_net, weight_exponent, learning_rate, batch_size,
                       num_epochs, patience, validation_fraction, refit, init_scale)  # fmt: skip
    run = RunOptions(devices, checkpoint, checkpoint_every)
    return run_program(prepare_mlp(rng_key, train, config.validate(run), run))


def _mlp(rng_key: jax.Array, train: Ratings, config: MLPConfig, run: RunOptions) -> MLPResult:
    (rank, hidden, dropout, lam, lam_bias, lam_net, weight_exponent, learning_rate, batch_size, num_epochs,
     patience, validation_fraction, refit, init_scale) = config  # fmt: skip
    devices, checkpoint, checkpoint_every = run.devices, run.checkpoint, run.checkpoint_every
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    device_mesh(devices)  # enough devices?
    options = dict(
        rank=rank, hidden=hidden, dropout=dropout, lam=lam, lam_bias=lam_bias, lam_net=lam_net,
        weight_exponent=weight_exponent, learning_rate=learning_rate, batch_size=batch_size, num_epochs=num_epochs,
        patience=patience, validation_fraction=validation_fraction, refit=refit, init_scale=init_scale,
        devices=devices, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    key_init, key_split, key_shuffle, key_drop = jax.random.split(rng_key, 4)
    fit, val = validation_split(key_split, train, validation_fraction)

    def run_stage(part: Ratings, epochs: int, val_arrays: tuple | None, stage: str) -> MinibatchResult:
        a_u, a_i, *_ = ridge_weights(part, train.num_users, train.num_items, weight_exponent)
        mu = float(np.mean(part.values, dtype=np.float64))
        params = init(key_init, train.num_users, train.num_items, rank=rank, hidden=hidden, mu=mu, scale=init_scale)
        hyper = Hyper(float(lam), float(lam_bias), float(lam_net), float(dropout), len(part))
        loss_fn, optimizer, epoch = compiled_epoch(mlp_objective, hyper, float(learning_rate))
        arrays = (part.users, part.items, part.values, a_u, a_i, salts(key_drop, len(part)))
        return train_minibatch(
            key_shuffle,
            loss_fn,
            params,
            arrays,
            optimizer=optimizer,
            batch_size=batch_size,
            num_epochs=epochs,
            val_arrays=val_arrays,
            predict_fn=apply if val_arrays is not None else None,
            patience=patience if val_arrays is not None else None,
            epoch_fn=epoch,
            devices=devices,
            checkpoint=fit_checkpoint(checkpoint, checkpoint_every, stage, rng_key, train, options),
            rating_range=rating_range(train.values),
        )

    val_arrays = None if val is None else (jnp.asarray(val.users), jnp.asarray(val.items), jnp.asarray(val.values))
    result = run_stage(fit, num_epochs, val_arrays, "mlp")
    trace, best_epoch, final = result.trace, result.best_epoch, fit
    if val is not None and refit:
        result, final = run_stage(train, best_epoch + 1, None, "mlp-refit"), train
    return MLPResult(
        result.params,
        np.bincount(final.users, minlength=train.num_users) > 0,
        np.bincount(final.items, minlength=train.num_items) > 0,
        trace,
        best_epoch,
    )


# ---- options ------------------------------------------------------------------------------
def check_common_options(
    *,
    hidden: int | tuple[int, ...],
    dropout: float,
    lam: float,
    lam_net: float,
    lam_bias: float,
    weight_exponent: float,
    learning_rate: float,
    batch_size: int,
    num_epochs: int,
    patience: int,
    validation_fraction: float,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> None:
    """Reject out-of-range options shared by `fit_mlp` and `probmf.fitters.residual.fit_residual`."""
    if not as_hidden(hidden):
        raise ValueError(f"hidden needs at least one layer, got {hidden!r}")
    if not (np.isfinite(dropout) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    for name, value in (("lambda", lam), ("lam_net", lam_net), ("lambda_bias", lam_bias)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not np.isfinite(weight_exponent):
        raise ValueError(f"weight_exponent must be finite, got {weight_exponent!r}")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    for name, value in (("batch_size", batch_size), ("num_epochs", num_epochs), ("patience", patience)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (np.isfinite(validation_fraction) and 0 <= validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    check_loop_options(batch_size=batch_size, devices=devices, checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def check_mlp_options(*, rank: int, init_scale: float, **common: Any) -> None:
    """Reject out-of-range options of `fit_mlp` before anything is compiled."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not (np.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
    check_common_options(**common)
