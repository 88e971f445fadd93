"""Neural rating models: the embedding MLP, and the residual hybrid r_hat = MF(x) + ANN(x).

Embedding MLP (``fit_mlp``): user and item embeddings p_i, q_j (dim = rank) are
concatenated and passed through ReLU layers with dropout to a scalar,

    r_hat_ij = mu + b_i + c_j + f([p_i; q_j]),      f = dense_L o relu o ... o relu o dense_1.

Residual hybrid (``fit_residual``): a biased MF model (ALS by default) is fitted first and a
network is trained on what it leaves, r - MF(x); the prediction is the sum,

    r_hat_ij = MF_ij + g(z_ij),
    z_ij = [e_i; e'_j; w_i; u_j; w_i * u_j; MF_ij - mu; log(1 + n_i) / 5; log(1 + n_j) / 5],

with e_i, e'_j embeddings of the network's own, w_i, u_j the MF factors (held fixed) and
n_i, n_j the rating counts the MF was fitted on: the network can bend the MF score
(calibration), use the factors non-linearly, and correct what depends on how much data a
row had (ridge shrinkage). With ``joint=True`` the MF parameters are trained together with
the network on the full rating, starting from the MF fit.

Both are trained by `probmf.fitters.minibatch.train_minibatch` (Adam, masked last batch,
early stopping on the validation RMSE of the predictions clipped to the training rating range,
the project's clipping rule). Per batch S the objective is the per-rating estimate of F / n,

    loss_S = sum_k w_k [1/2 (t_k - r_hat_k)^2 + lam/2 (a_k |x_{i_k}|^2 + a'_k |y_{j_k}|^2)
             + lam_bias/2 (...)] / sum_k w_k + lam_net/2 |weights|^2 / n,

where row i's ridge is spread over its n_i ratings, a_k = n_i^(alpha - 1), so that summed
over all ratings it is lam n_i^alpha |x_i|^2 (alpha = ``weight_exponent``, as in ALS).

Fairness of the residual fit: MF residuals on the ratings MF was fitted on are optimistic.
So a validation share of the TRAINING ratings is held out first; the MF base and the network
are fitted on the rest, and the network is early-stopped on the held-out share, whose
residuals are honest. If the best validation RMSE (clipped to the rating range) of MF + ANN
is not below that of the MF alone, the network is dropped (``use_network=False``) and the
result is the MF alone, refitted on all training ratings (it then equals ``fit_als`` with the
same key). Otherwise, with ``refit=True``, the MF is refitted on all training ratings and the
network retrained on their residuals for the chosen number of epochs.

Predictions for a user or item that is unknown (-1) or has no fitted rating use the MF part
(residual) or mu + biases (MLP) only: the network's term is masked, and every gather uses a
safe index, never JAX's clamping.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probmf.checkpoint import fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.data.splits import random_split
from probmf.fitters.als import fit_als
from probmf.fitters.minibatch import check_loop_options, clipped_rmse, make_epoch, rating_range, train_minibatch
from probmf.fitters.optax_mf import fit_optax
from probmf.model import MFParams, predict, predict_with_fallback
from probmf.sharding import device_mesh

BASES = ("als", "optax")
_NUM_FEATURES = 8  # see mf_features
_MF_LAM = 1.5  # the factor ridge of both bases' defaults, lam n^0.5 (fit_als, fit_optax)


class Dense(NamedTuple):
    """One layer x -> x W + b: W (d_in, d_out), b (d_out,)."""

    W: jax.Array
    b: jax.Array


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


class NetParams(NamedTuple):
    """Residual network (a pytree): E (num_users, d), F (num_items, d) embeddings of its own,
    layers: dense layers on z_ij (see the module docstring), the last of width 1."""

    E: jax.Array
    F: jax.Array
    layers: tuple


class JointParams(NamedTuple):
    """MF and network trained together (``joint=True``)."""

    mf: MFParams
    net: NetParams


# ---- the model ----------------------------------------------------------------------------
def init_layers(rng_key, in_dim: int, hidden: tuple[int, ...]) -> tuple[Dense, ...]:
    """He-normal ReLU layers of widths ``hidden`` and a zero output layer (width 1): the
    network starts at f = 0, so a model starts at its biases (MLP) or its MF (residual)."""
    keys = jax.random.split(rng_key, len(hidden))
    layers, d = [], in_dim
    for key, width in zip(keys, hidden, strict=True):
        W = jax.random.normal(key, (d, width), jnp.float32) * np.sqrt(2.0 / d)
        layers.append(Dense(W, jnp.zeros((width,), jnp.float32)))
        d = width
    layers.append(Dense(jnp.zeros((d, 1), jnp.float32), jnp.zeros((1,), jnp.float32)))
    return tuple(layers)


def tower(layers: tuple[Dense, ...], x: jax.Array, *, dropout: float = 0.0, rng_key=None) -> jax.Array:
    """f(x) (B,) for inputs x (B, d_in): ReLU hidden layers, inverted dropout at rate
    ``dropout`` after each when ``rng_key`` is given, linear output."""
    *hidden, out = layers
    for layer in hidden:
        x = jax.nn.relu(x @ layer.W + layer.b)
        if rng_key is not None and dropout > 0:
            rng_key, key = jax.random.split(rng_key)
            x = jnp.where(jax.random.bernoulli(key, 1.0 - dropout, x.shape), x / (1.0 - dropout), 0.0)
    return (x @ out.W + out.b)[:, 0]


def init(rng_key, num_users: int, num_items: int, *, rank: int, hidden=(64, 32), mu=0.0, scale=0.1) -> MLPParams:
    """Embeddings ~ N(0, scale^2), biases 0, offset ``mu``, layers by `init_layers`."""
    key_p, key_q, key_l = jax.random.split(rng_key, 3)
    return MLPParams(
        P=scale * jax.random.normal(key_p, (num_users, rank), jnp.float32),
        Q=scale * jax.random.normal(key_q, (num_items, rank), jnp.float32),
        b=jnp.zeros((num_users,), jnp.float32),
        c=jnp.zeros((num_items,), jnp.float32),
        mu=jnp.asarray(mu, jnp.float32),
        layers=init_layers(key_l, 2 * rank, _as_hidden(hidden)),
    )


def apply(params: MLPParams, users, items, *, dropout: float = 0.0, rng_key=None) -> jax.Array:
    """r_hat = mu + b_i + c_j + f([p_i; q_j]) for in-range int (B,) ``users``/``items`` -> (B,)."""
    x = jnp.concatenate([params.P[users], params.Q[items]], axis=-1)
    f = tower(params.layers, x, dropout=dropout, rng_key=rng_key)
    return params.mu + params.b[users] + params.c[items] + f


def mf_features(mf: MFParams, users, items, lc_user, lc_item) -> tuple[jax.Array, jax.Array]:
    """(MF_ij (B,), x (B, 8)) for in-range (B,) ``users``/``items``, with the MF summarised by
    features that do not change under a rotation of its factors (so they mean the same for
    every MF fit): x = (MF_ij - mu, b_i, c_j, w_i . u_j, |w_i|, |u_j|, log(1 + n_i) / 5,
    log(1 + n_j) / 5); lc_user, lc_item (B,): log(1 + n) of the pair's user and item in the
    ratings the MF was fitted on."""
    w, u = mf.W[users], mf.U[items]
    dot = jnp.sum(w * u, axis=-1)
    base = dot + mf.b[users] + mf.c[items] + mf.mu
    norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12)  # noqa: E731
    x = [base - mf.mu, mf.b[users], mf.c[items], dot, norm(w), norm(u)]
    x += [lc_user / 5.0, lc_item / 5.0]
    return base, jnp.stack(x, axis=-1)


def net_inputs(net: NetParams, users, items, x) -> jax.Array:
    """z (B, 2d + 8) = [e_i; e'_j; x] for MF features x (B, 8) (`mf_features`)."""
    return jnp.concatenate([net.E[users], net.F[items], x], axis=-1)


def residual_apply(mf: MFParams, net: NetParams, users, items, log_counts, *, dropout=0.0, rng_key=None):
    """r_hat = MF_ij + g(z_ij) for in-range (B,) ``users``/``items``; ``log_counts`` =
    (log(1 + n_users) (num_users,), log(1 + n_items) (num_items,)). Returns (r_hat, MF_ij)."""
    base, x = mf_features(mf, users, items, log_counts[0][users], log_counts[1][items])
    return base + tower(net.layers, net_inputs(net, users, items, x), dropout=dropout, rng_key=rng_key), base


# ---- objectives: per-rating estimates of F / n (see the module docstring) -----------------
class Hyper(NamedTuple):
    """Hashable training constants; one compiled epoch per distinct value."""

    lam: float
    lam_bias: float
    lam_net: float
    dropout: float
    num_ratings: int


def _batch_key(salt: jax.Array) -> jax.Array:
    # The batch's rows differ every epoch (host shuffle), so two of their random salts seed
    # a fresh dropout key per step, deterministic for a fixed fit key.
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), salt[0]), salt[-1])


def _l2(layers) -> jax.Array:
    return sum(jnp.sum(layer.W * layer.W) for layer in layers)


def _mean(weights, x) -> jax.Array:
    return jnp.sum(weights * x) / jnp.maximum(jnp.sum(weights), 1.0)


def mlp_objective(params: MLPParams, batch, weights, *, hyper: Hyper) -> jax.Array:
    """loss_S of the embedding MLP; batch = (users, items, ratings, a_user, a_item, salt),
    each (B,); ``mu`` gets no gradient."""
    users, items, ratings, a_u, a_i, salt = batch
    params = params._replace(mu=jax.lax.stop_gradient(params.mu))
    err = ratings - apply(params, users, items, dropout=hyper.dropout, rng_key=_batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(params.P[users] ** 2, -1) + a_i * jnp.sum(params.Q[items] ** 2, -1))
    ridge += hyper.lam_bias * (a_u * params.b[users] ** 2 + a_i * params.c[items] ** 2)
    return _mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * _l2(params.layers) / hyper.num_ratings


def residual_objective(net: NetParams, batch, weights, *, hyper: Hyper) -> jax.Array:
    """loss_S of the network on MF residuals; batch = (users, items, residuals, a_user,
    a_item, salt, x (B, 8)): the MF enters only through its features x (`mf_features`)."""
    users, items, resid, a_u, a_i, salt, x = batch
    z = net_inputs(net, users, items, x)
    err = resid - tower(net.layers, z, dropout=hyper.dropout, rng_key=_batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(net.E[users] ** 2, -1) + a_i * jnp.sum(net.F[items] ** 2, -1))
    return _mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * _l2(net.layers) / hyper.num_ratings


def joint_objective(params: JointParams, batch, weights, *, hyper: Hyper, mf_lam: float) -> jax.Array:
    """loss_S of MF + network on the full rating; batch = (users, items, ratings, a_user,
    a_item, salt, a_mf_user, a_mf_item, a_bias_user, a_bias_item, log(1 + n_user),
    log(1 + n_item)); the MF ridge is ALS's, mf_lam n^0.5 on factors and lam_bias on biases."""
    users, items, ratings, a_u, a_i, salt, m_u, m_i, c_u, c_i, lc_u, lc_i = batch
    mf, net = params.mf._replace(mu=jax.lax.stop_gradient(params.mf.mu)), params.net
    base, x = mf_features(mf, users, items, lc_u, lc_i)
    z = net_inputs(net, users, items, x)
    err = ratings - base - tower(net.layers, z, dropout=hyper.dropout, rng_key=_batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(net.E[users] ** 2, -1) + a_i * jnp.sum(net.F[items] ** 2, -1))
    ridge += mf_lam * (m_u * jnp.sum(mf.W[users] ** 2, -1) + m_i * jnp.sum(mf.U[items] ** 2, -1))
    ridge += hyper.lam_bias * (c_u * mf.b[users] ** 2 + c_i * mf.c[items] ** 2)
    return _mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * _l2(net.layers) / hyper.num_ratings


# Compiled epochs, shared by every fit with the same constants (a second fit does not retrace).
_EPOCHS: dict = {}


def _epoch_fn(kind: str, hyper: Hyper, learning_rate: float, mf_lam: float = 0.0):
    """(loss_fn, optimizer, jitted epoch) for ``kind`` in "mlp", "residual", "joint"."""
    key = (kind, hyper, learning_rate, mf_lam)
    if key not in _EPOCHS:
        objective = {"mlp": mlp_objective, "residual": residual_objective}.get(kind)
        if objective is None:
            loss_fn = functools.partial(joint_objective, hyper=hyper, mf_lam=mf_lam)
        else:
            loss_fn = functools.partial(objective, hyper=hyper)
        optimizer = optax.adam(learning_rate)
        _EPOCHS[key] = (loss_fn, optimizer, make_epoch(loss_fn, optimizer))
    return _EPOCHS[key]


@jax.jit
def _mlp_predict(params: MLPParams, users, items) -> jax.Array:
    return apply(params, users, items)


@jax.jit
def _residual_predict(params: JointParams, users, items, log_counts) -> jax.Array:
    return residual_apply(params.mf, params.net, users, items, log_counts)[0]


# ---- results ------------------------------------------------------------------------------
def _known(ids, seen: np.ndarray) -> jax.Array:
    """Known (0 <= id < len(seen)) and fitted (seen[id]); never gathers out of range."""
    ids = jnp.asarray(ids)
    inside = (ids >= 0) & (ids < seen.shape[0])
    return inside & jnp.asarray(seen)[jnp.where(inside, ids, 0)]


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

    def predict(self, users, items) -> jax.Array:
        """(n,) means for int (n,) ``users``/``items``; an unknown (-1) or unfitted id drops
        its embedding and the network: mu + the known biases."""
        users, items = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
        warm = _known(users, self.seen_users) & _known(items, self.seen_items)
        p = self.params
        fallback = predict_with_fallback(MFParams(p.P[:, :0], p.Q[:, :0], p.b, p.c, p.mu), users, items)
        pred = _mlp_predict(p, jnp.where(warm, users, 0), jnp.where(warm, items, 0))
        return jnp.where(warm, pred, fallback)


class ResidualResult(NamedTuple):
    """A fitted MF + ANN hybrid.

    Attributes:
      mf: the MF part (`MFParams`), fitted on all training ratings when ``refit``.
      net: the network (`NetParams`); ignored when ``use_network`` is False.
      use_network: False when the network did not beat the MF on the validation split
        (the prediction is then the MF alone).
      val_rmse_mf, val_rmse_hybrid: clipped validation RMSE of the MF alone and of the best
        epoch of MF + ANN (both fitted without the validation ratings).
      log_counts: (log(1 + n_users), log(1 + n_items)) of the ratings the final MF saw.
      seen_users, seen_items: bool, rows with a fitted rating.
      trace, best_epoch: the network's minibatch trace and the epoch kept (0-based).
      joint: whether MF and network were trained together.
    """

    mf: MFParams
    net: NetParams
    use_network: bool
    val_rmse_mf: float
    val_rmse_hybrid: float
    log_counts: tuple
    seen_users: np.ndarray
    seen_items: np.ndarray
    trace: object
    best_epoch: int
    joint: bool

    @property
    def rank(self) -> int:
        return int(self.mf.W.shape[1])

    @property
    def params(self) -> MFParams:
        return self.mf

    def predict(self, users, items) -> jax.Array:
        """(n,) means MF_ij + g(z_ij) for int (n,) ``users``/``items``; where an id is unknown
        (-1) or unfitted, or without the network, the MF's prediction with fallback."""
        users, items = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
        base = predict_with_fallback(self.mf, users, items)
        if not self.use_network:
            return base
        warm = _known(users, self.seen_users) & _known(items, self.seen_items)
        params = JointParams(self.mf, self.net)
        pred = _residual_predict(params, jnp.where(warm, users, 0), jnp.where(warm, items, 0), self.log_counts)
        return jnp.where(warm, pred, base)


# ---- fitting ------------------------------------------------------------------------------

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (Dense, MLPParams, MLPResult, NetParams, JointParams, ResidualResult)


def _seed(rng_key) -> int:
    return int(jax.random.randint(rng_key, (), 0, np.iinfo(np.int32).max))


def _split(rng_key, train: Ratings, fraction: float):
    """(fit, val) with val None when nothing can be held out."""
    if fraction > 0 and len(train) >= 10:
        fit, val = random_split(train, fraction, seed=_seed(rng_key))
        if len(fit) and len(val):
            return fit, val
    return train, None


def _ridge_weights(part: Ratings, num_users: int, num_items: int, exponent: float):
    """(a_user, a_item) per rating: n^(alpha - 1), so the ridge summed over a row's n ratings
    is lam n^alpha; and (n_users, n_items) counts."""
    n_u = np.bincount(part.users, minlength=num_users).astype(np.float32)
    n_i = np.bincount(part.items, minlength=num_items).astype(np.float32)
    a_u = np.maximum(n_u, 1.0) ** (exponent - 1.0)
    a_i = np.maximum(n_i, 1.0) ** (exponent - 1.0)
    return a_u[part.users], a_i[part.items], n_u, n_i


def _salt(rng_key, n: int) -> np.ndarray:
    return np.asarray(jax.random.randint(rng_key, (n,), 0, np.iinfo(np.int32).max, jnp.int32))


def fit_mlp(
    rng_key,
    train: Ratings,
    *,
    rank: int = 32,
    hidden=(64, 32),
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
      lam, lam_bias: ridge of the embeddings and biases, lam n_i^weight_exponent per row.
      lam_net: L2 of the dense weights (over the whole objective F).
      learning_rate, batch_size, num_epochs, patience: Adam and the trainer; training stops
        after ``patience`` epochs without a better validation RMSE (of the predictions
        clipped to the training rating range).
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
    hidden = _as_hidden(hidden)
    check_mlp_options(
        rank=rank,
        hidden=hidden,
        dropout=dropout,
        lam=lam,
        lam_bias=lam_bias,
        lam_net=lam_net,
        weight_exponent=weight_exponent,
        learning_rate=learning_rate,
        batch_size=batch_size,
        num_epochs=num_epochs,
        patience=patience,
        validation_fraction=validation_fraction,
        init_scale=init_scale,
        devices=devices,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
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
    fit, val = _split(key_split, train, validation_fraction)

    def run(part: Ratings, epochs: int, val_arrays, stage: str):
        a_u, a_i, *_ = _ridge_weights(part, train.num_users, train.num_items, weight_exponent)
        mu = float(np.mean(part.values, dtype=np.float64))
        params = init(key_init, train.num_users, train.num_items, rank=rank, hidden=hidden, mu=mu, scale=init_scale)
        hyper = Hyper(float(lam), float(lam_bias), float(lam_net), float(dropout), len(part))
        loss_fn, optimizer, epoch = _epoch_fn("mlp", hyper, float(learning_rate))
        arrays = (part.users, part.items, part.values, a_u, a_i, _salt(key_drop, len(part)))
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
    result = run(fit, num_epochs, val_arrays, "mlp")
    trace, best_epoch, final = result.trace, result.best_epoch, fit
    if val is not None and refit:
        result, final = run(train, best_epoch + 1, None, "mlp-refit"), train
    return MLPResult(
        result.params,
        np.bincount(final.users, minlength=train.num_users) > 0,
        np.bincount(final.items, minlength=train.num_items) > 0,
        trace,
        best_epoch,
    )


def _fit_base(rng_key, part: Ratings, base: str) -> MFParams:
    return (fit_als if base == "als" else fit_optax)(rng_key, part).params


def fit_residual(
    rng_key,
    train: Ratings,
    *,
    base: str = "als",
    joint: bool = False,
    embedding_dim: int = 0,
    num_folds: int = 5,
    hidden=(64, 32),
    dropout: float = 0.1,
    lam: float = 0.05,
    lam_net: float = 1.0,
    lam_bias: float = 3.0,
    weight_exponent: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int = 1024,
    num_epochs: int = 80,
    patience: int = 5,
    validation_fraction: float = 0.1,
    refit: bool = True,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> ResidualResult:
    """Fit r_hat = MF + ANN (module docstring): MF first, then the network on its residuals
    (or both jointly), early-stopped on held-out training ratings, never kept if it does not
    beat the MF there.

    Args:
      rng_key: PRNG key. The MF base is fitted with ``rng_key`` itself, so a fallback is
        exactly ``fit_als(rng_key, train)`` (or ``fit_optax``).
      train: training `Ratings`.
      base: "als" (`fit_als` with its defaults) or "optax" (`fit_optax` with its defaults).
      joint: train MF and network together on the full rating (from the MF fit) instead of
        the network alone on the residuals.
      embedding_dim: d, the dim of the network's own user/item embeddings (0: none).
      num_folds: folds of the cross-fitting that gives out-of-fold MF residuals (>= 2).
      hidden: widths of the ReLU layers, a tuple (or an int: one layer).
      dropout: rate in [0, 1) after each hidden layer.
      lam: ridge of the network's embeddings, lam n_i^weight_exponent per row; ``joint``
        keeps the base's own factor ridge for the MF (lam 1.5, exponent 0.5 for ALS).
      lam_net: L2 of the dense weights (over the whole objective F).
      lam_bias: ridge of the MF biases when ``joint``.
      learning_rate, batch_size, num_epochs, patience: Adam and the trainer.
      validation_fraction: share of ``train`` held out to stop the network and to decide
        whether to keep it, in (0, 1).
      refit: refit the MF on all of ``train`` and retrain the network on it for the chosen
        number of epochs (False: keep the fits made without the validation ratings).
      devices: D devices for the network's training, data parallel
        (`probmf.fitters.minibatch`); ``batch_size`` must divide by D. The MF fits use one.
      checkpoint: folder to save the network's epochs in and resume from (None: no
        checkpoints); the MF fits are redone on resuming.
      checkpoint_every: epochs between saves.
    Returns:
      `ResidualResult`; ``use_network`` says whether the network was kept.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> res = fit_residual(jax.random.PRNGKey(0), train, hidden=8, num_epochs=2, num_folds=2)
      >>> res.predict(jnp.array([0, -1]), jnp.array([1, 2])).shape
      (2,)
    """
    hidden = _as_hidden(hidden)
    check_residual_options(
        base=base,
        embedding_dim=embedding_dim,
        num_folds=num_folds,
        hidden=hidden,
        dropout=dropout,
        lam=lam,
        lam_net=lam_net,
        lam_bias=lam_bias,
        weight_exponent=weight_exponent,
        learning_rate=learning_rate,
        batch_size=batch_size,
        num_epochs=num_epochs,
        patience=patience,
        validation_fraction=validation_fraction,
        devices=devices,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    if len(train) < 10:
        raise ValueError(f"{train.source or 'training ratings'}: too few ratings to hold out a validation split")
    device_mesh(devices)  # enough devices?
    options = dict(
        base=base, joint=joint, embedding_dim=embedding_dim, num_folds=num_folds, hidden=hidden, dropout=dropout,
        lam=lam, lam_net=lam_net, lam_bias=lam_bias, weight_exponent=weight_exponent, learning_rate=learning_rate,
        batch_size=batch_size, num_epochs=num_epochs, patience=patience, validation_fraction=validation_fraction,
        refit=refit, devices=devices, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    key_init, key_split, key_shuffle, key_drop = jax.random.split(jax.random.fold_in(rng_key, 1), 4)
    bounds = rating_range(train.values)  # the clipping rule: every validation RMSE is clipped to it
    fit, val = _split(key_split, train, validation_fraction)
    num_users, num_items = train.num_users, train.num_items
    keys = jax.random.split(key_init, 3)
    net0 = NetParams(
        E=0.1 * jax.random.normal(keys[0], (num_users, embedding_dim), jnp.float32),
        F=0.1 * jax.random.normal(keys[1], (num_items, embedding_dim), jnp.float32),
        layers=init_layers(keys[2], 2 * embedding_dim + _NUM_FEATURES, hidden),
    )

    def log_counts_of(part: Ratings):
        n_u = np.bincount(part.users, minlength=num_users)
        n_i = np.bincount(part.items, minlength=num_items)
        return np.log1p(n_u).astype(np.float32), np.log1p(n_i).astype(np.float32)

    def arrays_for(part: Ratings, mf: MFParams):
        """The trainer's columns for ``part``, and the MF fitted on all of it."""
        a_u, a_i, n_u, n_i = _ridge_weights(part, num_users, num_items, weight_exponent)
        salt = _salt(key_drop, len(part))
        lc_u, lc_i = np.log1p(n_u)[part.users], np.log1p(n_i)[part.items]
        if joint:
            # ALS's ridge in per-rating form: lam n^0.5 over a row's n ratings is n^-0.5 each,
            # lam_bias is n^-1 each.
            cu, ci = n_u[part.users], n_i[part.items]
            return (part.users, part.items, part.values, a_u, a_i, salt, cu**-0.5, ci**-0.5, 1 / cu, 1 / ci, lc_u,
                    lc_i)  # fmt: skip
        # Out-of-fold residuals: each rating's MF features and residual come from an MF fitted
        # without it, so the network learns the errors MF makes on ratings it has not seen.
        resid = np.zeros(len(part), np.float32)
        feats = np.zeros((len(part), _NUM_FEATURES), np.float32)
        for fold_fit, fold_out in _folds(part, num_folds, seed=_seed(jax.random.fold_in(key_split, len(part)))):
            mf_f = _fit_base(rng_key, part.take(fold_fit), base)
            lcu, lci = log_counts_of(part.take(fold_fit))
            u, i = jnp.asarray(part.users[fold_out]), jnp.asarray(part.items[fold_out])
            pred, x = mf_features(mf_f, u, i, jnp.asarray(lcu)[u], jnp.asarray(lci)[i])
            resid[fold_out] = part.values[fold_out] - np.asarray(pred)
            feats[fold_out] = np.asarray(x)
        return (part.users, part.items, resid, a_u, a_i, salt, feats)

    def run(part: Ratings, mf: MFParams, epochs: int, val_ratings: Ratings | None, stage: str):
        hyper = Hyper(float(lam), float(lam_bias), float(lam_net), float(dropout), len(part))
        loss_fn, optimizer, epoch = _epoch_fn("joint" if joint else "residual", hyper, float(learning_rate), _MF_LAM)
        log_counts = tuple(jnp.asarray(c) for c in log_counts_of(part))
        val_arrays, predict_fn = None, None
        if val_ratings is not None:
            val_arrays = tuple(jnp.asarray(a) for a in (val_ratings.users, val_ratings.items, val_ratings.values))

            def predict_fn(p, vu, vi):
                full = p if joint else JointParams(mf, p)
                return residual_apply(full.mf, full.net, vu, vi, log_counts)[0]

        result = train_minibatch(
            key_shuffle,
            loss_fn,
            JointParams(mf, net0) if joint else net0,
            arrays_for(part, mf),
            optimizer=optimizer,
            batch_size=batch_size,
            num_epochs=epochs,
            val_arrays=val_arrays,
            predict_fn=predict_fn,
            patience=patience if val_arrays is not None else None,
            epoch_fn=epoch,
            devices=devices,
            checkpoint=fit_checkpoint(checkpoint, checkpoint_every, stage, rng_key, train, options),
            rating_range=bounds,
        )
        return (result.params if joint else JointParams(mf, result.params)), log_counts, result

    mf_fit = _fit_base(rng_key, fit, base)
    fitted, log_counts, result = run(fit, mf_fit, num_epochs, val, "residual")
    vu, vi = jnp.asarray(val.users), jnp.asarray(val.items)
    val_mf = float(clipped_rmse(predict(mf_fit, vu, vi), val.values, bounds))
    val_hybrid = float(clipped_rmse(residual_apply(fitted.mf, fitted.net, vu, vi, log_counts)[0], val.values, bounds))
    use_network = bool(val_hybrid < val_mf)
    final = fit
    if refit:
        # The validation ratings only chose the epoch count and the fallback: refit on all.
        final = train
        mf_all = _fit_base(rng_key, train, base)
        if use_network:
            fitted, log_counts, _ = run(train, mf_all, result.best_epoch + 1, None, "residual-refit")
        else:
            fitted, log_counts = JointParams(mf_all, fitted.net), tuple(jnp.asarray(c) for c in log_counts_of(train))
    elif not use_network:
        fitted = JointParams(mf_fit, fitted.net)
    return ResidualResult(
        fitted.mf,
        fitted.net,
        use_network,
        val_mf,
        val_hybrid,
        log_counts,
        np.bincount(final.users, minlength=num_users) > 0,
        np.bincount(final.items, minlength=num_items) > 0,
        result.trace,
        result.best_epoch,
        bool(joint),
    )


def _folds(part: Ratings, num_folds: int, *, seed: int):
    """(fit rows, held-out rows) index pairs of a seeded ``num_folds``-fold partition."""
    fold = np.empty(len(part), np.int64)
    fold[np.random.default_rng(seed).permutation(len(part))] = np.arange(len(part)) % num_folds
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(num_folds)]


# ---- options ------------------------------------------------------------------------------
def _as_hidden(hidden) -> tuple[int, ...]:
    """An int is one layer; a sequence is the widths of the layers."""
    if isinstance(hidden, (int, np.integer)):
        return (int(hidden),)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ValueError(f"hidden must be an int or a tuple of ints, got {hidden!r}") from None
    for w in widths:
        if not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"hidden widths must be positive integers, got {hidden!r}")
    return tuple(int(w) for w in widths)


def _check_common(*, hidden, dropout, lam, lam_net, lam_bias, weight_exponent, learning_rate, batch_size,
                  num_epochs, patience, validation_fraction, devices=1, checkpoint=None,
                  checkpoint_every=1) -> None:  # fmt: skip
    if not _as_hidden(hidden):
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


def check_mlp_options(*, rank, init_scale, **common) -> None:
    """Reject out-of-range options of `fit_mlp` before anything is compiled."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not (np.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
    _check_common(**common)


def check_residual_options(*, base, embedding_dim, num_folds, validation_fraction, **common) -> None:
    """Reject out-of-range options of `fit_residual` before anything is compiled."""
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {BASES}")
    if int(embedding_dim) != embedding_dim or embedding_dim < 0:
        raise ValueError(f"embedding_dim must be a non-negative integer, got {embedding_dim!r}")
    if int(num_folds) != num_folds or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    if not (np.isfinite(validation_fraction) and 0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in (0, 1) (the network is chosen on it), got "
                         f"{validation_fraction!r}")  # fmt: skip
    _check_common(validation_fraction=validation_fraction, **common)
