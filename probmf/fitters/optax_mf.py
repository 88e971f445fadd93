"""The biased MF model fitted by minibatch gradient descent (optax): "embeddings + dot + biases".

Same model (`probmf.model.predict`) and objectives (`probmf.objectives`) as ALS; only the
optimiser differs. With sigma = 1 the full-data objectives over the n training ratings are

    F_mle = 1/2 sum_k (r_k - r_hat_k)^2,
    F_map = F_mle + 1/2 sum_i lam_i |w_i|^2 + 1/2 sum_j lam_j |u_j|^2 + lam_bias/2 (|b|^2 + |c|^2),

i.e. `mle_loss` and `map_loss` less their constants (`regularized_loss`). A minibatch S of
the shuffled ratings gives the unbiased per-rating estimate

    loss_S = 1/|S| sum_{k in S} 1/2 (r_k - r_hat_k)^2 + penalty / n   (an estimate of F / n),

so the prior is counted once per pass of n ratings, whatever the batch size, and the optimum
of the minibatch runs is the MAP point of the full posterior. ``mu`` is held at the mean of
the fitted ratings (no gradient): the unpenalised-in-expectation biases absorb the rest.
The prior term is dense, so every step updates every row (the exact gradient of F / n).

A fraction of the TRAINING ratings is held out for early stopping; the best epoch's
parameters are returned. The validation RMSE is that of the predictions clipped to the
training rating range, as every score in the project (`probmf.fitters.minibatch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probmf.checkpoint import fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.data.splits import random_split
from probmf.fitters.als import make_priors
from probmf.fitters.minibatch import MinibatchTrace, check_loop_options, minibatch_program, rating_range
from probmf.model import MFParams, init_params, predict
from probmf.objectives import Priors, penalty
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program
from probmf.sharding import device_mesh

OBJECTIVES = ("map", "mle")
OPTIMIZERS = ("adam", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine")


class OptaxResult(NamedTuple):
    """``params``: fitted (best validation epoch) `MFParams`; ``trace``: per-epoch train loss
    (F / n) and validation RMSE; ``best_epoch``: 0-based; ``priors``: the ridge strengths
    (zeros for MLE)."""

    params: MFParams
    trace: MinibatchTrace
    best_epoch: int
    priors: Priors


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (OptaxResult, MinibatchTrace)


def mf_objective(
    params: MFParams,
    batch: tuple[jax.Array, jax.Array, jax.Array],
    weights: jax.Array,
    *,
    priors: Priors,
    num_ratings: int,
    loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """loss_S = sum_k w_k l(r_hat_k, r_k) / sum_k w_k + penalty(params, priors) / n, with
    l(r_hat, r) = 1/2 (r - r_hat)^2 (``loss`` None) or ``loss(r_hat, r)`` (elementwise, (B,)).

    batch: (users, items, ratings) each (B,); weights: (B,) 0/1 mask. ``mu`` gets no gradient.
    """
    users, items, ratings = batch
    params = params._replace(mu=jax.lax.stop_gradient(params.mu))
    pred = predict(params, users, items)
    if loss is None:
        err = ratings - pred
        per_rating = 0.5 * err * err
    else:
        per_rating = loss(pred, ratings)
    data = jnp.sum(weights * per_rating) / jnp.maximum(jnp.sum(weights), 1.0)
    return data + penalty(params, priors) / num_ratings


def make_optimizer(
    name: str | optax.GradientTransformation, learning_rate: float, *, schedule: str = "constant", total_steps: int = 1
) -> optax.GradientTransformation:
    """optax ``adam``/``sgd``/``adagrad`` at ``learning_rate``, constant or cosine-decayed to
    0 over ``total_steps``; an `optax.GradientTransformation` given as ``name`` as it is."""
    if isinstance(name, optax.GradientTransformation):
        return name
    lr = learning_rate if schedule == "constant" else optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    return {"adam": optax.adam, "sgd": optax.sgd, "adagrad": optax.adagrad}[name](lr)


class OptaxConfig(NamedTuple):
    """The optax fitter's options.

    rank: k >= 0 (0: biases only).
    objective: "map" (L2 / Gaussian priors) or "mle" (no prior; lam ignored).
    lam: factor ridge; row i gets lam * n_i ** weight_exponent (n_i its fitted ratings).
    lam_bias: bias ridge.
    weight_exponent: 0 plain L2, 1 ALS-WR style scaling of the factor ridge.
    optimizer: "adam", "sgd" or "adagrad", or any `optax.GradientTransformation` (e.g.
      ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))``), used as given.
    learning_rate: > 0; schedule "constant" or "cosine" (decay to 0 over all steps); both
      apply to a named optimizer only.
    batch_size: ratings per step (the last partial batch is masked, not dropped).
    num_epochs: most passes over the fitted ratings.
    validation_fraction: share of ``train`` held out for early stopping (0: none, run all
      epochs and return the last); scored by the RMSE of the predictions clipped to the
      training rating range.
    patience: epochs without a better validation RMSE before stopping.
    init_scale: sd of the initial factors.
    loss: None, the squared error 1/2 (r - r_hat)^2 of the MLE and MAP objectives; or a
      per-rating loss ``loss(r_hat, r) -> (B,)`` in its place, e.g. ``optax.huber_loss``
      (the prior penalty stays; the objective is then no longer a Gaussian likelihood).
    """

    rank: int = 10
    objective: str = "map"
    lam: float = 1.5
    lam_bias: float = 3.0
    weight_exponent: float = 0.5
    optimizer: str = "adam"
    learning_rate: float = 0.01
    schedule: str = "cosine"
    batch_size: int = 1024
    num_epochs: int = 40
    validation_fraction: float = 0.0
    patience: int = 5
    init_scale: float = 0.1
    loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def validate(self, run: RunOptions = DEFAULT_RUN) -> OptaxConfig:
        """Self, or a ValueError naming the option out of range (``run``'s too)."""
        check_optax_options(**self._asdict(), devices=run.devices, checkpoint=run.checkpoint,
                            checkpoint_every=run.checkpoint_every)  # fmt: skip
        return self


def prepare_optax(rng_key: jax.Array, train: Ratings, config: OptaxConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """The optax `Program` (`probmf.fitters.minibatch.minibatch_program`, one epoch a step):
    validation split, initial parameters and priors from ``rng_key``; it finishes as the
    `OptaxResult`. ``config`` must be validated."""
    c = config
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    device_mesh(run.devices)  # enough devices?
    key_init, key_split, key_shuffle = jax.random.split(rng_key, 3)
    val = None
    fit = train
    if c.validation_fraction > 0 and len(train) >= 2:
        seed = int(jax.random.randint(key_split, (), 0, np.iinfo(np.int32).max))
        fit, held = random_split(train, c.validation_fraction, seed=seed)
        if len(held) > 0 and len(fit) > 0:
            val = (jnp.asarray(held.users), jnp.asarray(held.items), jnp.asarray(held.values))
        else:
            fit = train
    n = len(fit)
    mu = float(np.mean(fit.values, dtype=np.float64))
    params = init_params(key_init, train.num_users, train.num_items, c.rank, scale=c.init_scale, mu=mu)
    if c.objective == "map":
        n_u = jnp.asarray(np.bincount(fit.users, minlength=train.num_users), jnp.float32)
        n_i = jnp.asarray(np.bincount(fit.items, minlength=train.num_items), jnp.float32)
        priors = make_priors(n_u, n_i, lam=c.lam, lam_bias=c.lam_bias, weight_exponent=c.weight_exponent)
    else:
        priors = Priors(*(jnp.float32(0.0),) * 4)

    def loss_fn(p: MFParams, batch: tuple[jax.Array, jax.Array, jax.Array], weights: jax.Array) -> jax.Array:
        return mf_objective(p, batch, weights, priors=priors, num_ratings=n, loss=c.loss)

    steps = c.num_epochs * -(-n // min(c.batch_size, n))
    program = minibatch_program(
        key_shuffle,
        loss_fn,
        params,
        (fit.users, fit.items, fit.values),
        optimizer=make_optimizer(c.optimizer, c.learning_rate, schedule=c.schedule, total_steps=steps),
        batch_size=c.batch_size,
        num_epochs=c.num_epochs,
        val_arrays=val,
        predict_fn=predict,
        patience=c.patience if val is not None else None,
        devices=run.devices,
        rating_range=rating_range(train.values),
    )

    def finish(state: Any) -> OptaxResult:
        result = program.finish(state)
        return OptaxResult(result.params, result.trace, result.best_epoch, priors)

    options = {**c._asdict(), "devices": run.devices, "checkpoint_every": run.checkpoint_every}
    del options["loss"]  # None whenever there is a checkpoint (`check_optax_options`): as before the option
    ckpt = fit_checkpoint(run.checkpoint, run.checkpoint_every, "optax", rng_key, train, options)
    return program._replace(finish=finish, checkpoint=ckpt)


def fit_optax(
    rng_key: jax.Array,
    train: Ratings,
    *,
    rank: int = 10,
    objective: str = "map",
    lam: float = 1.5,
    lam_bias: float = 3.0,
    weight_exponent: float = 0.5,
    optimizer: str = "adam",
    learning_rate: float = 0.01,
    schedule: str = "cosine",
    batch_size: int = 1024,
    num_epochs: int = 40,
    validation_fraction: float = 0.0,
    patience: int = 5,
    init_scale: float = 0.1,
    loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> OptaxResult:
    """Fit the biased MF model by minibatch gradient descent on the MLE or MAP objective:
    `prepare_optax` run by `probmf.program.run_program`.

    The options ``rank`` .. ``loss`` are `OptaxConfig`'s fields (``optimizer`` may be any optax
    `GradientTransformation`, ``loss`` any per-rating loss).

    Args:
      rng_key: PRNG key (initialisation, validation split, shuffles).
      train: training `Ratings` (every id known).
      devices: D devices, data parallel (`probmf.fitters.minibatch`); ``batch_size`` must
        divide by D. The result equals the 1-device fit up to float rounding.
      checkpoint: folder to save the epochs in and resume from (None: no checkpoints); the
        result is the same with or without.
      checkpoint_every: epochs between saves.
    Returns:
      `OptaxResult(params, trace, best_epoch, priors)`.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> res = fit_optax(jax.random.PRNGKey(0), train, rank=2, num_epochs=3, batch_size=256)
      >>> res.params.W.shape, res.trace.train_loss.shape
      ((60, 2), (3,))
    """
    config = OptaxConfig(rank, objective, lam, lam_bias, weight_exponent, optimizer, learning_rate, schedule,
                         batch_size, num_epochs, validation_fraction, patience, init_scale, loss)  # fmt: skip
    run = RunOptions(devices, checkpoint, checkpoint_every)
    return run_program(prepare_optax(rng_key, train, config.validate(run), run))


def check_optax_options(
    *,
    rank: int,
    objective: str,
    lam: float,
    lam_bias: float,
    weight_exponent: float,
    optimizer: str | optax.GradientTransformation,
    learning_rate: float,
    schedule: str,
    batch_size: int,
    num_epochs: int,
    validation_fraction: float,
    patience: int,
    init_scale: float,
    loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> None:
    """Reject out-of-range options before anything is compiled."""
    custom = isinstance(optimizer, optax.GradientTransformation)
    if loss is not None and not callable(loss):
        raise ValueError(f"loss must be None or a function loss(r_hat, r), got {loss!r}")
    if checkpoint is not None and (custom or loss is not None):
        # A checkpoint resumes only the run that saved it, and it cannot tell two optimisers
        # or loss functions apart: resuming under a different one would mix two fits.
        raise ValueError("checkpoints need a named optimizer and the default loss: a custom optax "
                         "GradientTransformation or loss function cannot be fingerprinted")  # fmt: skip
    if int(rank) != rank or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be >= 0, got {lam!r}")
    if not (np.isfinite(lam_bias) and lam_bias >= 0):
        raise ValueError(f"lambda_bias must be >= 0, got {lam_bias!r}")
    if not np.isfinite(weight_exponent):
        raise ValueError(f"weight_exponent must be finite, got {weight_exponent!r}")
    if not custom and optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS} or pass an optax.GradientTransformation"
        )
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(num_epochs) != num_epochs or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if patience is not None and (int(patience) != patience or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if not (np.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
    check_loop_options(batch_size=batch_size, devices=devices, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
