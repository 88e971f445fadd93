"""AutoRec (Sedhain et al. 2015): an autoencoder of each item's (or user's) ratings.

Item-based (I-AutoRec): the input vector r_j in R^num_users is item j's column of ratings;
user-based (U-AutoRec): user i's row, in R^num_items. One hidden layer reconstructs it,

    h(r) = W2^T sigmoid(W1^T r + b1) + b2,      W1 (width, hidden), W2 (hidden, width),

and the objective counts observed cells only (O_r: the observed entries of r):

    J = sum_r sum_{c in O_r} (h(r)_c - r_c)^2 + lam/2 (|W1|^2 + |W2|^2).

A missing cell enters the input as 0 and never the loss. Training is minibatch Adam on J
with input dropout (denoising); every epoch is one jitted `lax.scan` over fixed-size batches
of rows, each densified on the fly from CSR arrays on the device (`probmf.fitters.sparse_rows`),
so memory is O(batch x width), never the num_users x num_items matrix. The epoch with the
lowest RMSE on a validation split carved from the training ratings is kept (the RMSE of the
predictions clipped to the training rating range, as every score in the project).
`fit_autorec_i` and `fit_autorec_u`, the registered fitters, are `fit_autorec` with
``item_based`` True and False, each with its own defaults.

The prediction for (user i, item j) is entry i of h(r_j) (item-based), r_j built from all
training ratings. A pair whose user or item is unknown (-1) or has no training rating falls
back to the bias baseline mu + b_i + c_j (`probmf.fitters.baseline`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from probmf.checkpoint import Checkpoint, fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.data.splits import random_split
from probmf.fitters.baseline import fit_baseline
from probmf.fitters.epochs import LoopState, epoch_program
from probmf.fitters.holdout import warm_pairs
from probmf.fitters.minibatch import check_loop_options, clipped_rmse, rating_range
from probmf.fitters.sparse_rows import RowsCSR, densify, pair_plan, rows_csr
from probmf.model import MFParams, predict_with_fallback
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program, staged_program
from probmf.sharding import device_mesh, replicated, split_along


class AutoRecParams(NamedTuple):
    """Autoencoder weights (a pytree). width = num_users (item-based) or num_items.

    Attributes:
      W1: (width, hidden) encoder; b1: (hidden,).
      W2: (hidden, width) decoder; b2: (width,).
    """

    W1: jax.Array
    b1: jax.Array
    W2: jax.Array
    b2: jax.Array


class AutoRecResult(NamedTuple):
    """A fitted AutoRec model; ``predict(users, items)`` gives (n,) predicted means.

    ``inputs`` are the input vectors (all training ratings), ``seen_rows``/``seen_cols`` mark
    rows/columns with a training rating, ``baseline`` predicts the other pairs, ``trace`` is
    the validation RMSE after each epoch and ``best_epoch`` the epoch kept (0-based).
    """

    params: AutoRecParams
    inputs: RowsCSR
    max_len: int
    seen_rows: np.ndarray
    seen_cols: np.ndarray
    baseline: MFParams
    item_based: bool
    trace: np.ndarray
    best_epoch: int

    @property
    def rank(self) -> int:
        return int(self.params.W1.shape[1])

    @property
    def num_users(self) -> int:
        return self.seen_cols.size if self.item_based else self.seen_rows.size

    @property
    def num_items(self) -> int:
        return self.seen_rows.size if self.item_based else self.seen_cols.size

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        """(n,) means for int (n,) ``users``/``items``; -1 (unknown) or an id without training
        ratings gets the baseline's prediction."""
        users, items = np.asarray(users), np.asarray(items)
        rows, cols = (items, users) if self.item_based else (users, items)
        warm = warm_pairs(rows, cols, self.seen_rows, self.seen_cols)
        fallback = predict_with_fallback(self.baseline, jnp.asarray(users), jnp.asarray(items))
        pred = reconstruct_pairs(self.params, self.inputs, rows, cols, warm, max_len=self.max_len)
        return jnp.where(jnp.asarray(warm), pred, fallback)


# ---- the model ----------------------------------------------------------------------------

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (AutoRecResult, AutoRecParams, RowsCSR)


def init(rng_key: jax.Array, width: int, hidden: int, *, mu: float = 0.0) -> AutoRecParams:
    """W1 ~ N(0, 1/width), W2 ~ N(0, 1/hidden), b1 = 0, b2 = mu (outputs start at the mean)."""
    key_1, key_2 = jax.random.split(rng_key)
    return AutoRecParams(
        W1=jax.random.normal(key_1, (width, hidden), jnp.float32) / np.sqrt(width),
        b1=jnp.zeros((hidden,), jnp.float32),
        W2=jax.random.normal(key_2, (hidden, width), jnp.float32) / np.sqrt(hidden),
        b2=jnp.full((width,), mu, jnp.float32),
    )


def apply(params: AutoRecParams, x: jax.Array) -> jax.Array:
    """Reconstruction h(x) = sigmoid(x W1 + b1) W2 + b2 of input rows x (B, width) -> (B, width)."""
    return jax.nn.sigmoid(x @ params.W1 + params.b1) @ params.W2 + params.b2


def loss(
    params: AutoRecParams,
    x: jax.Array,
    mask: jax.Array,
    *,
    lam: float | jax.Array,
    keep: jax.Array | None = None,
    sse_weight: float | jax.Array = 1.0,
) -> jax.Array:
    """sse_weight * sum_{mask} (h(x_in) - x)^2 + lam/2 (|W1|^2 + |W2|^2).

    x: (B, width) ratings, any filler where ``mask`` (bool (B, width)) is False: the input
    x_in zeroes those cells and the sum skips them. keep: optional (B, width) input-dropout
    multiplier (0 or 1/(1-p)).
    """
    x_in = jnp.where(mask, x, 0.0)
    if keep is not None:
        x_in = x_in * keep
    err = jnp.where(mask, apply(params, x_in) - x, 0.0)
    return sse_weight * jnp.sum(err * err) + 0.5 * lam * (jnp.sum(params.W1**2) + jnp.sum(params.W2**2))


# ---- training -----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("width", "max_len"))
def run_epoch(
    params: AutoRecParams,
    opt_state: Any,
    csr: RowsCSR,
    batches: jax.Array,
    rng_key: jax.Array,
    hyper: tuple[jax.Array, ...],
    *,
    width: int,
    max_len: int,
) -> tuple[AutoRecParams, Any, jax.Array]:
    """One epoch of Adam steps, one per row of ``batches`` (S, B) (-1 pads the last batch).

    hyper: (learning_rate, lam, dropout, num_rows / nnz, 1 / nnz) as float32 scalars. Each step
    follows J / nnz estimated from its B_eff real rows: (N / B_eff) sse_batch + lam/2 |W|^2.
    Returns (params, opt_state, per-step objective (S,)).
    """
    lr, lam, dropout, rows_per_nnz, inv_nnz = hyper
    opt = optax.adam(lr)

    def step(
        carry: tuple[AutoRecParams, Any], inputs: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[AutoRecParams, Any], jax.Array]:
        params, opt_state = carry
        rows, key = inputs
        x, mask = densify(csr, rows, width, max_len)
        keep = jax.random.bernoulli(key, 1.0 - dropout, x.shape) / (1.0 - dropout)
        b_eff = jnp.maximum(jnp.sum(rows >= 0), 1)
        objective = lambda p: loss(p, x, mask, lam=lam * inv_nnz, keep=keep, sse_weight=rows_per_nnz / b_eff)  # noqa: E731
        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    keys = jax.random.split(rng_key, batches.shape[0])
    (params, opt_state), values = lax.scan(step, (params, opt_state), (batches, keys))
    return params, opt_state, values


@functools.partial(jax.jit, static_argnames=("width", "max_len"))
def _reconstruct_planned(
    params: AutoRecParams,
    csr: RowsCSR,
    batches: jax.Array,
    pair_batch: jax.Array,
    pair_pos: jax.Array,
    cols: jax.Array,
    *,
    width: int,
    max_len: int,
) -> jax.Array:
    """h(r_row)[col] for every pair, reconstructing one (B, width) batch of rows per scan step."""

    def step(pred: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        s, rows = inputs
        out = apply(params, densify(csr, rows, width, max_len)[0])
        return jnp.where(pair_batch == s, out[pair_pos, cols], pred), None

    init_pred = jnp.zeros(pair_batch.shape, jnp.float32)
    return lax.scan(step, init_pred, (jnp.arange(batches.shape[0]), batches))[0]


def reconstruct_pairs(
    params: AutoRecParams,
    csr: RowsCSR,
    rows: ArrayLike,
    cols: ArrayLike,
    warm: ArrayLike,
    *,
    max_len: int,
    batch_size: int = 256,
) -> jax.Array:
    """(n,) entry ``cols[k]`` of the reconstruction of row ``rows[k]``; 0 where not ``warm``."""
    rows, cols, warm = np.asarray(rows), np.asarray(cols), np.asarray(warm, bool)
    batches, pair_batch, pair_pos = pair_plan(rows, warm, batch_size)
    safe_cols = np.where(warm, cols, 0).astype(np.int32)
    plan = (jnp.asarray(a) for a in (batches, pair_batch, pair_pos, safe_cols))
    return _reconstruct_planned(params, csr, *plan, width=int(params.b2.shape[0]), max_len=max_len)


class AutoRecConfig(NamedTuple):
    """The options of `fit_autorec` (it documents each); `validate` checks them."""

    item_based: bool = True
    hidden: int = 500
    lam: float = 150.0
    dropout: float = 0.5
    learning_rate: float = 2.5e-4
    batch_size: int = 64
    num_epochs: int = 400
    patience: int = 60
    validation_fraction: float = 0.1
    refit: bool = True
    lam_bias: float = 3.0

    def validate(self, run: RunOptions = DEFAULT_RUN) -> AutoRecConfig:
        """Self, or a ValueError naming the option out of range."""
        c = self
        check_autorec_options(
            hidden=c.hidden, lam=c.lam, dropout=c.dropout, learning_rate=c.learning_rate, batch_size=c.batch_size,
            num_epochs=c.num_epochs, patience=c.patience, validation_fraction=c.validation_fraction,
            devices=run.devices, checkpoint=run.checkpoint, checkpoint_every=run.checkpoint_every,
        )  # fmt: skip
        return c


def prepare_autorec(
    rng_key: jax.Array, train: Ratings, config: AutoRecConfig, run: RunOptions = DEFAULT_RUN
) -> Program:
    """AutoRec (I- or U-, as ``config.item_based``) as a one-step `Program` of two stages,
    each an epoch program that checkpoints itself: the early-stopped fit, the refit."""
    return staged_program(lambda: _autorec(rng_key, train, config, run), "AutoRec")


def fit_autorec(
    rng_key: jax.Array,
    train: Ratings,
    *,
    item_based: bool = True,
    hidden: int = 500,
    lam: float = 150.0,
    dropout: float = 0.5,
    learning_rate: float = 2.5e-4,
    batch_size: int = 64,
    num_epochs: int = 400,
    patience: int = 60,
    validation_fraction: float = 0.1,
    refit: bool = True,
    lam_bias: float = 3.0,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> AutoRecResult:
    """Fit AutoRec by minibatch Adam with early stopping; see the module docstring.

    Defaults (item-based) were chosen by cross-validation on the ML-100K training folds
    (inner 80/20 splits of u1.base and u2.base, as ``experiments/tune.py`` does): hidden 500,
    lam 150, input dropout 0.5, Adam 2.5e-4 for up to 400 epochs, patience 60.

    Args:
      rng_key: PRNG key (initialisation, validation split, shuffling, dropout).
      train: training `Ratings`.
      item_based: True: I-AutoRec (items' columns are the inputs); False: U-AutoRec.
      hidden: hidden units (the result's ``rank``).
      lam: L2 weight decay of W1 and W2 in J (the sum over all observed cells).
      dropout: input-dropout rate in [0, 1) (denoising).
      learning_rate: Adam step size.
      batch_size: rows per step; num_epochs, patience: stop after ``patience`` epochs
        without a better validation RMSE and restore the best epoch's weights.
      validation_fraction: share of the training ratings held out for early stopping (0: none;
        all ``num_epochs`` run).
      refit: after early stopping, retrain on all training ratings for the chosen number of
        epochs (False: keep the best epoch's weights, fitted without the validation part).
      lam_bias: ridge of the fallback baseline's biases.
      devices: D devices, data parallel: each batch of rows is split across them
        (`probmf.fitters.minibatch`); ``batch_size`` must divide by D.
      checkpoint: folder to save the epochs in and resume from (None: no checkpoints); the
        result is the same with or without.
      checkpoint_every: epochs between saves.
    Returns:
      `AutoRecResult`.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> result = fit_autorec(jax.random.PRNGKey(0), train, hidden=8, num_epochs=3)
      >>> result.rank, result.predict(jnp.array([0, -1]), jnp.array([1, 2])).shape
      (8, (2,))
    """
    config = AutoRecConfig(item_based, hidden, lam, dropout, learning_rate, batch_size, num_epochs, patience,
                           validation_fraction, refit, lam_bias)  # fmt: skip
    run = RunOptions(devices, checkpoint, checkpoint_every)
    return run_program(prepare_autorec(rng_key, train, config.validate(run), run))


def _autorec(rng_key: jax.Array, train: Ratings, config: AutoRecConfig, run: RunOptions) -> AutoRecResult:
    (item_based, hidden, lam, dropout, learning_rate, batch_size, num_epochs, patience, validation_fraction, refit,
     lam_bias) = config  # fmt: skip
    devices, checkpoint, checkpoint_every = run.devices, run.checkpoint, run.checkpoint_every
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    mesh = device_mesh(devices)
    options = dict(
        item_based=item_based, hidden=hidden, lam=lam, dropout=dropout, learning_rate=learning_rate,
        batch_size=batch_size, num_epochs=num_epochs, patience=patience, validation_fraction=validation_fraction,
        refit=refit, lam_bias=lam_bias, devices=devices, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    name = "autorec-i" if item_based else "autorec-u"
    ckpt, refit_ckpt = (
        fit_checkpoint(checkpoint, checkpoint_every, stage, rng_key, train, options)
        for stage in (name, f"{name}-refit")
    )
    key_init, key_split, key_shuffle, key_drop = jax.random.split(rng_key, 4)
    baseline = fit_baseline(key_init, train, lam_bias=lam_bias).params
    inputs, width, max_len = rows_csr(train, item_based=item_based)
    if validation_fraction > 0 and len(train) >= 10:
        split_seed = int(jax.random.randint(key_split, (), 0, 2**31 - 1))
        fit_part, val = random_split(train, validation_fraction, seed=split_seed)
    else:
        fit_part, val = train, None
    csr, _, fit_max_len = rows_csr(fit_part, item_based=item_based)
    num_rows = train.num_items if item_based else train.num_users
    epochs = functools.partial(
        _epochs,
        key_init,
        key_shuffle,
        key_drop,
        width=width,
        num_rows=num_rows,
        hidden=hidden,
        hyper=(learning_rate, lam, dropout),
        batch_size=batch_size,
        mesh=mesh,
    )
    if val is None:
        params = epochs(csr, fit_part, fit_max_len, num_epochs, checkpoint=ckpt).params
        return _result(params, train, inputs, max_len, baseline, item_based, np.zeros(0), num_epochs - 1)

    v_rows, v_cols = (val.items, val.users) if item_based else (val.users, val.items)
    seen_r = np.bincount(fit_part.items if item_based else fit_part.users, minlength=num_rows) > 0
    seen_c = np.bincount(fit_part.users if item_based else fit_part.items, minlength=width) > 0
    v_warm = warm_pairs(v_rows, v_cols, seen_r, seen_c)
    plan = tuple(jnp.asarray(a) for a in pair_plan(v_rows, v_warm, 256))
    plan += (jnp.asarray(np.where(v_warm, v_cols, 0).astype(np.int32)),)
    v_truth, v_idx = jnp.asarray(val.values[v_warm]), jnp.asarray(np.flatnonzero(v_warm))
    bounds = rating_range(train.values)

    def score(params: AutoRecParams) -> float:
        # The clipping rule (`probmf.fitters.minibatch`): the validation RMSE of clipped predictions.
        pred = _reconstruct_planned(params, csr, *plan, width=width, max_len=fit_max_len)[v_idx]
        return float(clipped_rmse(pred, v_truth, bounds))

    loop = epochs(csr, fit_part, fit_max_len, num_epochs, score_fn=score, patience=patience, checkpoint=ckpt)
    params, best_epoch = loop.best_params, int(loop.best_epoch)
    trace = loop.val_rmse[: int(loop.epochs_run)]
    if refit:
        # The validation ratings were only for choosing the epoch count: refit on all of them.
        params = epochs(inputs, train, max_len, best_epoch + 1, checkpoint=refit_ckpt).params
    return _result(params, train, inputs, max_len, baseline, item_based, trace, best_epoch)


def _epochs(*args: Any, checkpoint: Checkpoint | None = None, **options: Any) -> LoopState:
    """`_epoch_program` run to its end, saved to ``checkpoint``."""
    return run_program(_epoch_program(*args, **options)._replace(checkpoint=checkpoint))


def _epoch_program(
    key_init: jax.Array,
    key_shuffle: jax.Array,
    key_drop: jax.Array,
    csr: RowsCSR,
    part: Ratings,
    max_len: int,
    num_epochs: int,
    *,
    width: int,
    num_rows: int,
    hidden: int,
    hyper: tuple[float, float, float],
    batch_size: int,
    mesh: Mesh | None = None,
    score_fn: Callable[[AutoRecParams], float] | None = None,
    patience: int | None = None,
) -> Program:
    """Up to ``num_epochs`` epochs of training on ``part`` (its CSR), scored by ``score_fn``,
    stopped after ``patience`` epochs without a better score (`epoch_program`)."""
    learning_rate, lam, dropout = hyper
    params = init(key_init, width, hidden, mu=float(np.mean(part.values, dtype=np.float64)))
    opt_state = optax.adam(learning_rate).init(params)
    nnz = len(part)
    hyper = tuple(jnp.float32(v) for v in (learning_rate, lam, dropout, num_rows / nnz, 1.0 / nnz))
    csr, hyper = replicated(mesh, (csr, hyper))
    # Rows are shuffled on the host: one permutation per epoch, padded with -1 to full batches.
    rng = np.random.default_rng(int(jax.random.randint(key_shuffle, (), 0, 2**31 - 1)))
    num_batches = -(-num_rows // batch_size)

    def epoch_step(
        params: AutoRecParams, opt_state: Any, epoch: int, rng: np.random.Generator
    ) -> tuple[AutoRecParams, Any, None]:
        perm = np.full(num_batches * batch_size, -1, np.int32)
        perm[:num_rows] = rng.permutation(num_rows)
        batches = split_along(mesh, jnp.asarray(perm.reshape(num_batches, batch_size)), 1)
        key = replicated(mesh, jax.random.fold_in(key_drop, epoch))
        params, opt_state, _ = run_epoch(params, opt_state, csr, batches, key, hyper, width=width, max_len=max_len)
        return params, opt_state, None

    place = None if mesh is None else functools.partial(replicated, mesh)
    return epoch_program(epoch_step, params, opt_state, num_epochs, rng, score_fn=score_fn, patience=patience,
                         place=place)  # fmt: skip


def autorec_epochs(rng_key: jax.Array, train: Ratings, config: AutoRecConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """The `Program` of ``config.num_epochs`` epochs on all of ``train``, one epoch a step, as
    the fit runs them without validation (``validation_fraction=0``); it finishes as the
    `LoopState`. For timing epochs (``experiments/bench.py``). ``config`` must be validated."""
    key_init, _, key_shuffle, key_drop = jax.random.split(rng_key, 4)
    c = config
    csr, width, max_len = rows_csr(train, item_based=c.item_based)
    return _epoch_program(
        key_init, key_shuffle, key_drop, csr, train, max_len, c.num_epochs, width=width,
        num_rows=train.num_items if c.item_based else train.num_users, hidden=c.hidden,
        hyper=(c.learning_rate, c.lam, c.dropout), batch_size=c.batch_size, mesh=device_mesh(run.devices),
    )  # fmt: skip


def _result(
    params: AutoRecParams,
    train: Ratings,
    inputs: RowsCSR,
    max_len: int,
    baseline: MFParams,
    item_based: bool,
    trace: ArrayLike,
    best_epoch: int,
) -> AutoRecResult:
    num_rows, width = (train.num_items, train.num_users) if item_based else (train.num_users, train.num_items)
    seen_rows = np.bincount(train.items if item_based else train.users, minlength=num_rows) > 0
    seen_cols = np.bincount(train.users if item_based else train.items, minlength=width) > 0
    return AutoRecResult(
        params, inputs, max_len, seen_rows, seen_cols, baseline, item_based, np.asarray(trace), best_epoch
    )


def fit_autorec_i(
    rng_key: jax.Array, train: Ratings, *, hidden: int = 500, lam: float = 150.0, dropout: float = 0.5,
    learning_rate: float = 2.5e-4, batch_size: int = 64, num_epochs: int = 400, patience: int = 60,
    validation_fraction: float = 0.1, refit: bool = True, lam_bias: float = 3.0, devices: int = 1,
    checkpoint: str | None = None, checkpoint_every: int = 1,
) -> AutoRecResult:  # fmt: skip
    """Item-based AutoRec (I-AutoRec); see `fit_autorec` (``devices``, ``checkpoint``,
    ``checkpoint_every`` as there)."""
    return fit_autorec(
        rng_key, train, item_based=True, hidden=hidden, lam=lam, dropout=dropout, learning_rate=learning_rate,
        batch_size=batch_size, num_epochs=num_epochs, patience=patience, validation_fraction=validation_fraction,
        refit=refit, lam_bias=lam_bias, devices=devices, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
    )  # fmt: skip


def fit_autorec_u(
    rng_key: jax.Array, train: Ratings, *, hidden: int = 500, lam: float = 100.0, dropout: float = 0.5,
    learning_rate: float = 1e-3, batch_size: int = 64, num_epochs: int = 200, patience: int = 20,
    validation_fraction: float = 0.1, refit: bool = True, lam_bias: float = 3.0, devices: int = 1,
    checkpoint: str | None = None, checkpoint_every: int = 1,
) -> AutoRecResult:  # fmt: skip
    """User-based AutoRec (U-AutoRec); see `fit_autorec` (defaults not tuned separately;
    ``devices``, ``checkpoint``, ``checkpoint_every`` as there)."""
    return fit_autorec(
        rng_key, train, item_based=False, hidden=hidden, lam=lam, dropout=dropout, learning_rate=learning_rate,
        batch_size=batch_size, num_epochs=num_epochs, patience=patience, validation_fraction=validation_fraction,
        refit=refit, lam_bias=lam_bias, devices=devices, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
    )  # fmt: skip


def check_autorec_options(
    *,
    hidden: int,
    lam: float,
    dropout: float,
    learning_rate: float,
    batch_size: int,
    num_epochs: int,
    patience: int,
    validation_fraction: float,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> None:
    """Reject out-of-range options before anything is compiled."""
    for name, value in (("hidden", hidden), ("batch_size", batch_size), ("num_epochs", num_epochs)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(patience) != patience or patience < 0:
        raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be >= 0, got {lam!r}")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if not (np.isfinite(dropout) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (np.isfinite(validation_fraction) and 0 <= validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    check_loop_options(batch_size=batch_size, devices=devices, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
