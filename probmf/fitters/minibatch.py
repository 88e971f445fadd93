"""A minibatch gradient trainer for rating-level models (MF, and any model scored per rating).

An epoch is one jitted `lax.scan` over fixed-shape batches of row indices into the training
arrays, which stay on the device for the whole run:

    for each batch S:  g = grad_theta loss_fn(theta, data[S], weights_S);  theta <- optimizer(theta, g)

The shuffle is drawn on the host with numpy (seeded from the key): a device permutation of
the ratings costs more than a whole epoch of a small model. ``n`` need not divide by the batch
size: the last batch is padded with row 0 at weight 0, so every rating is seen once per epoch
and the padding contributes nothing. Since only the tail is padded, the weights never change
and the epoch compiles once.

``loss_fn(params, batch, weights) -> ()`` sees a batch (a tuple of (B,) arrays) and weights
(B,) in {0, 1}. It should return the per-rating form of the objective, e.g. for
F = sum_k l_k + P (a sum over all n ratings plus a prior term)

    loss_fn = sum_k w_k l_k / sum_k w_k + P / n,

an unbiased estimate of F / n whose gradient is that of F / n up to sampling noise. The
epoch's reported loss is the weighted mean of its batch losses, sum_S |S| loss_S / n, which
at fixed parameters is exactly F / n.

Early stopping: given validation arrays ``(inputs..., targets)`` and ``predict_fn``, the
validation RMSE is computed after every epoch; training stops after ``patience`` epochs
without improvement and the parameters of the best epoch are returned.

Clipping rule (the whole project's): every prediction that is scored or used to make a choice
is first clipped to the training rating range [min, max] of the training ratings' values:
test RMSE and MAE, the predictive mean behind coverage and NLL, and every validation RMSE
that stops training or picks a model inside a fitter. So a rating model passes
``rating_range=(lo, hi)`` here and its validation RMSE is `clipped_rmse`, the same number the
test score would give for those predictions. ``rating_range=None`` leaves predictions as they
are, for targets that are not ratings.

Several devices (``devices`` = D > 1, `probmf.sharding`): data parallel. Each epoch's
(num_batches, B) index and weights are split along the batch axis (B must divide by D), the
parameters, optimiser state and training arrays are replicated, and the same jitted epoch runs
under GSPMD: each device computes its share of a batch and the gradient's sum over the batch
becomes an all-reduce. Results equal the single-device run up to float summation order.

Checkpoints (`probmf.checkpoint`): the epochs run in `probmf.fitters.epochs.epoch_program`,
whose state carries the host shuffle generator's, so a resumed run equals the uninterrupted
one, and a run with checkpoints one without, bit for bit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.typing import ArrayLike

from probmf import checkpoint as ckpt
from probmf.checkpoint import Checkpoint
from probmf.fitters.epochs import LoopState, epoch_program
from probmf.program import Program, run_program
from probmf.sharding import check_devices, device_mesh, replicated, split_along


class MinibatchState(NamedTuple):
    """Trainer state: the model parameters (any pytree) and the optimiser's state."""

    params: Any
    opt_state: optax.OptState


class MinibatchTrace(NamedTuple):
    """Per-epoch diagnostics (numpy, one entry per epoch run).

    Attributes:
      train_loss: (epochs,) weighted mean of the batch losses (F / n in the notation above).
      val_rmse: (epochs,) validation RMSE after the epoch, of the predictions clipped to
        ``rating_range`` when given; NaN without validation data.
    """

    train_loss: np.ndarray
    val_rmse: np.ndarray


class MinibatchResult(NamedTuple):
    """Returned parameters (the best epoch's when validating), final state, trace, best epoch
    (0-based; the last epoch without validation)."""

    params: Any
    state: MinibatchState
    trace: MinibatchTrace
    best_epoch: int


def make_epoch(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """The jitted epoch ``epoch(state, data, index, weights) -> (state, mean_loss)``.

    data: tuple of (n, ...) arrays; index: int32 (num_batches, B) rows of ``data``;
    weights: float32 (num_batches, B), 0 on padding. Build it once and pass it to every
    `train_minibatch` call that shares ``loss_fn`` and ``optimizer``: it then compiles
    once per shape.
    """
    grad_fn = jax.value_and_grad(loss_fn)

    def step(
        state: MinibatchState, batch_index: tuple[jax.Array, jax.Array], data: tuple
    ) -> tuple[MinibatchState, jax.Array]:
        index, weights = batch_index
        batch = tuple(a[index] for a in data)
        loss, grads = grad_fn(state.params, batch, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The batch's share of the epoch loss: |S| / n of its mean.
        return MinibatchState(params, opt_state), loss * jnp.sum(weights)

    @jax.jit
    def epoch(
        state: MinibatchState, data: tuple, index: jax.Array, weights: jax.Array
    ) -> tuple[MinibatchState, jax.Array]:
        state, losses = lax.scan(lambda s, x: step(s, x, data), state, (index, weights))
        return state, jnp.sum(losses) / jnp.sum(weights)

    return epoch


def rating_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the training ratings' ``values``: the bounds of the clipping rule."""
    values = np.asarray(values)
    return float(values.min()), float(values.max())


def clipped_rmse(pred: ArrayLike, targets: ArrayLike, rating_range: tuple[float, float] | None) -> jax.Array:
    """RMSE of ``pred`` against ``targets`` with ``pred`` clipped to ``rating_range`` = (lo, hi)
    first (the clipping rule, module docstring); None: unclipped. Works inside `jax.jit`."""
    pred = jnp.asarray(pred)
    if rating_range is not None:
        pred = jnp.clip(pred, rating_range[0], rating_range[1])
    err = pred - jnp.asarray(targets)
    return jnp.sqrt(jnp.mean(err * err))


def _rmse_fn(predict_fn: Callable, rating_range: tuple[float, float] | None = None) -> Callable:
    """The jitted validation score ``val_rmse(params, (inputs..., targets))``: `clipped_rmse`
    of ``predict_fn(params, *inputs)``."""

    @jax.jit
    def val_rmse(params: Any, val_arrays: tuple[jax.Array, ...]) -> jax.Array:
        *inputs, targets = val_arrays
        return clipped_rmse(predict_fn(params, *inputs), targets, rating_range)

    return val_rmse


def padded_index(num_rows: int, batch_size: int) -> tuple[int, np.ndarray]:
    """(num_batches, weights): ceil(n / B) batches and float32 (num_batches, B) weights that
    are 1 on the n real rows and 0 on the padding of the last batch."""
    num_batches = -(-num_rows // batch_size)
    weights = (np.arange(num_batches * batch_size) < num_rows).astype(np.float32)
    return num_batches, weights.reshape(num_batches, batch_size)


def check_loop_options(*, batch_size: int, devices: int, checkpoint: str | None, checkpoint_every: int) -> None:
    """Validate ``devices`` (B = ``batch_size`` must divide by it) and the checkpoint options
    without touching any device."""
    devices = check_devices(devices)
    if int(batch_size) == batch_size and batch_size >= 1 and batch_size % devices:
        below = batch_size // devices * devices
        fits = f"{below} or {below + devices}" if below else f"{devices}"
        raise ValueError(
            f"batch_size={batch_size} does not divide by devices={devices} (each device takes an equal share of "
            f"a batch); use a multiple of {devices}, e.g. {fits}"
        )
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a folder (str or path) or None, got {checkpoint!r}")
    ckpt.check_every(checkpoint_every)


def train_minibatch(
    rng_key: jax.Array,
    loss_fn: Callable,
    params: Any,
    train_arrays: tuple,
    *,
    checkpoint: Checkpoint | None = None,
    **options: Any,
) -> MinibatchResult:
    """Minimise ``loss_fn`` over ``train_arrays`` by minibatch steps: `minibatch_program`
    (the same arguments) run by `probmf.program.run_program`, saving to ``checkpoint``
    (`probmf.checkpoint.checkpoint_for`; None: no checkpoints; the result is the same either
    way). Returns its `MinibatchResult`."""
    program = minibatch_program(rng_key, loss_fn, params, train_arrays, **options)
    return run_program(program._replace(checkpoint=checkpoint))


def minibatch_program(
    rng_key: jax.Array,
    loss_fn: Callable,
    params: Any,
    train_arrays: tuple,
    *,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    num_epochs: int,
    val_arrays: tuple | None = None,
    predict_fn: Callable | None = None,
    patience: int | None = None,
    epoch_fn: Callable | None = None,
    devices: int = 1,
    rating_range: tuple[float, float] | None = None,
) -> Program:
    """The `Program` that minimises ``loss_fn`` over ``train_arrays`` by minibatch steps of
    ``optimizer``, one epoch a step.

    Args:
      rng_key: PRNG key; seeds the host shuffles (one permutation per epoch).
      loss_fn: ``loss_fn(params, batch, weights) -> ()``, see the module docstring.
      params: initial parameters (a pytree).
      train_arrays: tuple of (n, ...) arrays, e.g. (users, items, ratings).
      optimizer: an optax `GradientTransformation`.
      batch_size: B >= 1 rows per step; the last partial batch is padded and masked.
      num_epochs: most epochs to run.
      val_arrays: ``(inputs..., targets)`` for the validation RMSE of
        ``predict_fn(params, *inputs)``; None skips validation.
      patience: stop after this many epochs without a better validation RMSE (None: run
        every epoch). With validation the best epoch's parameters are returned.
      epoch_fn: a prebuilt `make_epoch(loss_fn, optimizer)`, to share its compilation.
      devices: D >= 1 devices, data parallel (module docstring); the batch size used,
        min(B, n rounded up to a multiple of D), must divide by D.
      rating_range: (lo, hi), the training ratings' range (`rating_range`): the predictions are
        clipped to it before the validation RMSE (the clipping rule, module docstring); every
        rating model passes it. None: unclipped, for targets that are not ratings.
    Returns:
      The program; it finishes as `MinibatchResult(params, state, trace, best_epoch)`, whose
      ``trace.val_rmse`` holds the clipped validation RMSE.
    """
    n = int(train_arrays[0].shape[0])
    if n == 0:
        raise ValueError("no training rows")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(num_epochs) != num_epochs or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    if patience is not None and (int(patience) != patience or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if val_arrays is not None and predict_fn is None:
        raise ValueError("val_arrays needs predict_fn")
    if rating_range is not None:
        lo, hi = (float(b) for b in rating_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"rating_range must be finite (lo, hi) with lo <= hi, got {rating_range!r}")
        rating_range = (lo, hi)
    devices = check_devices(devices)
    # A batch larger than the data would be all padding; with D devices, round n up to D's multiple.
    batch_size = min(int(batch_size), -(-n // devices) * devices)
    check_loop_options(batch_size=batch_size, devices=devices, checkpoint=None, checkpoint_every=1)
    mesh = device_mesh(devices)
    epoch = epoch_fn or make_epoch(loss_fn, optimizer)
    val_rmse = _rmse_fn(predict_fn, rating_range) if val_arrays is not None and predict_fn is not None else None

    num_batches, weights = padded_index(n, batch_size)
    weights = split_along(mesh, jnp.asarray(weights), 1)
    data = replicated(mesh, tuple(jnp.asarray(a) for a in train_arrays))
    if val_arrays is not None:
        val_arrays = replicated(mesh, tuple(val_arrays))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng_key)).ravel())
    index = np.zeros(num_batches * batch_size, np.int32)  # the tail stays 0: padding rows

    def epoch_step(params: Any, opt_state: Any, e: int, rng: np.random.Generator) -> tuple[Any, Any, jax.Array]:
        index[:n] = rng.permutation(n)
        batches = split_along(mesh, jnp.asarray(index.reshape(num_batches, batch_size)), 1)
        state, loss = epoch(MinibatchState(params, opt_state), data, batches, weights)
        return state.params, state.opt_state, loss

    epochs = epoch_program(
        epoch_step,
        params,
        optimizer.init(params),
        int(num_epochs),
        rng,
        score_fn=None if val_rmse is None else lambda p: val_rmse(p, val_arrays),
        patience=patience,
        place=None if mesh is None else functools.partial(replicated, mesh),
    )

    def finish(loop: LoopState) -> MinibatchResult:
        loop = epochs.finish(loop)
        state, done = MinibatchState(loop.params, loop.opt_state), int(loop.epochs_run)
        trace = MinibatchTrace(loop.train_loss[:done].copy(), loop.val_rmse[:done].copy())
        if val_rmse is None:
            return MinibatchResult(state.params, state, trace, done - 1)
        return MinibatchResult(loop.best_params, state, trace, int(loop.best_epoch))

    return epochs._replace(finish=finish)
