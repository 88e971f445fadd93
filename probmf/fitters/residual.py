"""The residual hybrid r_hat = MF(x) + ANN(x): a network trained on what a fitted MF leaves.

``fit_residual``: a biased MF model (ALS by default) is fitted first and a network is trained
on what it leaves, r - MF(x); the prediction is the sum,

    r_hat_ij = MF_ij + g(z_ij),      z_ij = [e_i; e'_j; x_ij],
    x_ij = (MF_ij - mu, b_i, c_j, w_i . u_j, |w_i|, |u_j|, log(1 + n_i) / 5, log(1 + n_j) / 5),

with e_i, e'_j embeddings of the network's own, w_i, u_j the MF factors (held fixed), x_ij
features of the MF that do not change under a rotation of its factors (`mf_features`), and
n_i, n_j the rating counts the MF was fitted on: the network can bend the MF score
(calibration), use the factors non-linearly, and correct what depends on how much data a
row had (ridge shrinkage). With ``joint=True`` the MF parameters are trained together with
the network on the full rating, starting from the MF fit. g is a `probmf.nn.tower`, trained
as the embedding MLP is (`probmf.fitters.mlp`: minibatch Adam on a per-rating estimate of
F / n, early stopping on the clipped validation RMSE).

Fairness of the residual fit: MF residuals on the ratings MF was fitted on are optimistic.
So a validation share of the TRAINING ratings is held out first (`probmf.fitters.holdout`);
the MF base and the network are fitted on the rest, the network on out-of-fold residuals
(``num_folds`` cross-fitting), and it is early-stopped on the held-out share, whose
residuals are honest. If the best validation RMSE (clipped to the rating range) of MF + ANN
is not below that of the MF alone, the network is dropped (``use_network=False``) and the
result is the MF alone, refitted on all training ratings (it then equals ``fit_als`` with the
same key). Otherwise, with ``refit=True``, the MF is refitted on all training ratings and the
network retrained on their residuals for the chosen number of epochs.

Predictions for a user or item that is unknown (-1) or has no fitted rating use the MF part
only: the network's term is masked, and every gather uses a safe index, never JAX's clamping.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from probmf.checkpoint import fit_checkpoint
from probmf.data.ratings import Ratings
from probmf.fitters.als import fit_als
from probmf.fitters.holdout import folds, key_seed, known, validation_split
from probmf.fitters.minibatch import MinibatchResult, MinibatchTrace, clipped_rmse, rating_range, train_minibatch
from probmf.fitters.mlp import Hyper, batch_key, batch_mean, check_common_options, compiled_epoch, ridge_weights, salts
from probmf.fitters.optax_mf import fit_optax
from probmf.model import MFParams, predict, predict_with_fallback
from probmf.nn import Dense, as_hidden, init_layers, l2, tower
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program, staged_program
from probmf.sharding import device_mesh

BASES = ("als", "optax")
_NUM_FEATURES = 8  # see mf_features
_MF_LAM = 1.5  # the factor ridge of both bases' defaults, lam n^0.5 (fit_als, fit_optax)


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
def mf_features(
    mf: MFParams, users: jax.Array, items: jax.Array, lc_user: jax.Array, lc_item: jax.Array
) -> tuple[jax.Array, jax.Array]:
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


def net_inputs(net: NetParams, users: jax.Array, items: jax.Array, x: jax.Array) -> jax.Array:
    """z (B, 2d + 8) = [e_i; e'_j; x] for MF features x (B, 8) (`mf_features`)."""
    return jnp.concatenate([net.E[users], net.F[items], x], axis=-1)


def residual_apply(
    mf: MFParams,
    net: NetParams,
    users: jax.Array,
    items: jax.Array,
    log_counts: tuple[jax.Array, ...],
    *,
    dropout: float = 0.0,
    rng_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """r_hat = MF_ij + g(z_ij) for in-range (B,) ``users``/``items``; ``log_counts`` =
    (log(1 + n_users) (num_users,), log(1 + n_items) (num_items,)). Returns (r_hat, MF_ij)."""
    base, x = mf_features(mf, users, items, log_counts[0][users], log_counts[1][items])
    return base + tower(net.layers, net_inputs(net, users, items, x), dropout=dropout, rng_key=rng_key), base


# ---- objectives: per-rating estimates of F / n (`probmf.fitters.mlp`) ---------------------
def residual_objective(net: NetParams, batch: tuple[jax.Array, ...], weights: jax.Array, *, hyper: Hyper) -> jax.Array:
    """loss_S of the network on MF residuals; batch = (users, items, residuals, a_user,
    a_item, salt, x (B, 8)): the MF enters only through its features x (`mf_features`)."""
    users, items, resid, a_u, a_i, salt, x = batch
    z = net_inputs(net, users, items, x)
    err = resid - tower(net.layers, z, dropout=hyper.dropout, rng_key=batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(net.E[users] ** 2, -1) + a_i * jnp.sum(net.F[items] ** 2, -1))
    return batch_mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * l2(net.layers) / hyper.num_ratings


def joint_objective(
    params: JointParams, batch: tuple[jax.Array, ...], weights: jax.Array, *, hyper: Hyper, mf_lam: float
) -> jax.Array:
    """loss_S of MF + network on the full rating; batch = (users, items, ratings, a_user,
    a_item, salt, a_mf_user, a_mf_item, a_bias_user, a_bias_item, log(1 + n_user),
    log(1 + n_item)); the MF ridge is ALS's, mf_lam n^0.5 on factors and lam_bias on biases."""
    users, items, ratings, a_u, a_i, salt, m_u, m_i, c_u, c_i, lc_u, lc_i = batch
    mf, net = params.mf._replace(mu=jax.lax.stop_gradient(params.mf.mu)), params.net
    base, x = mf_features(mf, users, items, lc_u, lc_i)
    z = net_inputs(net, users, items, x)
    err = ratings - base - tower(net.layers, z, dropout=hyper.dropout, rng_key=batch_key(salt))
    ridge = hyper.lam * (a_u * jnp.sum(net.E[users] ** 2, -1) + a_i * jnp.sum(net.F[items] ** 2, -1))
    ridge += mf_lam * (m_u * jnp.sum(mf.W[users] ** 2, -1) + m_i * jnp.sum(mf.U[items] ** 2, -1))
    ridge += hyper.lam_bias * (c_u * mf.b[users] ** 2 + c_i * mf.c[items] ** 2)
    return batch_mean(weights, 0.5 * err * err + 0.5 * ridge) + 0.5 * hyper.lam_net * l2(net.layers) / hyper.num_ratings


@jax.jit
def _residual_predict(
    params: JointParams, users: jax.Array, items: jax.Array, log_counts: tuple[jax.Array, jax.Array]
) -> jax.Array:
    return residual_apply(params.mf, params.net, users, items, log_counts)[0]


# ---- the result ---------------------------------------------------------------------------
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

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        """(n,) means MF_ij + g(z_ij) for int (n,) ``users``/``items``; where an id is unknown
        (-1) or unfitted, or without the network, the MF's prediction with fallback."""
        users, items = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
        base = predict_with_fallback(self.mf, users, items)
        if not self.use_network:
            return base
        warm = known(users, self.seen_users) & known(items, self.seen_items)
        params = JointParams(self.mf, self.net)
        pred = _residual_predict(params, jnp.where(warm, users, 0), jnp.where(warm, items, 0), self.log_counts)
        return jnp.where(warm, pred, base)


# ---- fitting ------------------------------------------------------------------------------

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (Dense, NetParams, JointParams, ResidualResult, MinibatchTrace)


def _fit_base(rng_key: jax.Array, part: Ratings, base: str) -> MFParams:
    return (fit_als if base == "als" else fit_optax)(rng_key, part).params


class ResidualConfig(NamedTuple):
    """The options of `fit_residual` (it documents each); `validate` checks them."""

    base: str = "als"
    joint: bool = False
    embedding_dim: int = 0
    num_folds: int = 5
    hidden: tuple | int = (64, 32)
    dropout: float = 0.1
    lam: float = 0.05
    lam_net: float = 1.0
    lam_bias: float = 3.0
    weight_exponent: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 1024
    num_epochs: int = 80
    patience: int = 5
    validation_fraction: float = 0.1
    refit: bool = True

    def validate(self, run: RunOptions = DEFAULT_RUN) -> ResidualConfig:
        """The config with ``hidden`` a tuple, or a ValueError naming the option out of range."""
        c = self._replace(hidden=as_hidden(self.hidden))
        check_residual_options(**{k: v for k, v in c._asdict().items() if k not in ("joint", "refit")},
                               devices=run.devices, checkpoint=run.checkpoint,
                               checkpoint_every=run.checkpoint_every)  # fmt: skip
        return c


def prepare_residual(
    rng_key: jax.Array, train: Ratings, config: ResidualConfig, run: RunOptions = DEFAULT_RUN
) -> Program:
    """The hybrid as a one-step `Program` of stages (the cross-fitted MF bases, the network's
    early-stopped epochs, the refit), each of which checkpoints itself."""
    return staged_program(lambda: _residual(rng_key, train, config, run), "MF + ANN")


def fit_residual(
    rng_key: jax.Array,
    train: Ratings,
    *,
    base: str = "als",
    joint: bool = False,
    embedding_dim: int = 0,
    num_folds: int = 5,
    hidden: int | tuple[int, ...] = (64, 32),
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
      learning_rate: Adam's step size.
      batch_size: ratings per step.
      num_epochs: most epochs.
      patience: epochs without a better validation RMSE before training stops.
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
    config = ResidualConfig(base, joint, embedding_dim, num_folds, hidden, dropout, lam, lam_net, lam_bias,
                            weight_exponent, learning_rate, batch_size, num_epochs, patience,
                            validation_fraction, refit)  # fmt: skip
    run = RunOptions(devices, checkpoint, checkpoint_every)
    return run_program(prepare_residual(rng_key, train, config.validate(run), run))


def _residual(rng_key: jax.Array, train: Ratings, config: ResidualConfig, run: RunOptions) -> ResidualResult:
    (base, joint, embedding_dim, num_folds, hidden, dropout, lam, lam_net, lam_bias, weight_exponent,
     learning_rate, batch_size, num_epochs, patience, validation_fraction, refit) = config  # fmt: skip
    devices, checkpoint, checkpoint_every = run.devices, run.checkpoint, run.checkpoint_every
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
    fit, val = validation_split(key_split, train, validation_fraction)
    if val is None:
        raise ValueError(
            f"{train.source or 'training ratings'}: validation_fraction={validation_fraction!r} holds out none of "
            f"the {len(train)} ratings, and the network is chosen on the held-out ones"
        )
    num_users, num_items = train.num_users, train.num_items
    keys = jax.random.split(key_init, 3)
    net0 = NetParams(
        E=0.1 * jax.random.normal(keys[0], (num_users, embedding_dim), jnp.float32),
        F=0.1 * jax.random.normal(keys[1], (num_items, embedding_dim), jnp.float32),
        layers=init_layers(keys[2], 2 * embedding_dim + _NUM_FEATURES, as_hidden(hidden)),
    )

    def log_counts_of(part: Ratings) -> tuple[np.ndarray, np.ndarray]:
        n_u = np.bincount(part.users, minlength=num_users)
        n_i = np.bincount(part.items, minlength=num_items)
        return np.log1p(n_u).astype(np.float32), np.log1p(n_i).astype(np.float32)

    def arrays_for(part: Ratings, mf: MFParams) -> tuple:
        """The trainer's columns for ``part``, and the MF fitted on all of it."""
        a_u, a_i, n_u, n_i = ridge_weights(part, num_users, num_items, weight_exponent)
        salt = salts(key_drop, len(part))
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
        for fold_fit, fold_out in folds(part, num_folds, seed=key_seed(jax.random.fold_in(key_split, len(part)))):
            mf_f = _fit_base(rng_key, part.take(fold_fit), base)
            lcu, lci = log_counts_of(part.take(fold_fit))
            u, i = jnp.asarray(part.users[fold_out]), jnp.asarray(part.items[fold_out])
            pred, x = mf_features(mf_f, u, i, jnp.asarray(lcu)[u], jnp.asarray(lci)[i])
            resid[fold_out] = part.values[fold_out] - np.asarray(pred)
            feats[fold_out] = np.asarray(x)
        return (part.users, part.items, resid, a_u, a_i, salt, feats)

    def run_stage(
        part: Ratings, mf: MFParams, epochs: int, val_ratings: Ratings | None, stage: str
    ) -> tuple[JointParams, tuple[jax.Array, ...], MinibatchResult]:
        hyper = Hyper(float(lam), float(lam_bias), float(lam_net), float(dropout), len(part))
        objective, constants = (joint_objective, {"mf_lam": _MF_LAM}) if joint else (residual_objective, {})
        loss_fn, optimizer, epoch = compiled_epoch(objective, hyper, float(learning_rate), **constants)
        log_counts = tuple(jnp.asarray(c) for c in log_counts_of(part))
        val_arrays, predict_fn = None, None
        if val_ratings is not None:
            val_arrays = tuple(jnp.asarray(a) for a in (val_ratings.users, val_ratings.items, val_ratings.values))

            def predict_val(p: Any, vu: jax.Array, vi: jax.Array) -> jax.Array:
                full = p if joint else JointParams(mf, p)
                return residual_apply(full.mf, full.net, vu, vi, log_counts)[0]

            predict_fn = predict_val

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
    fitted, log_counts, result = run_stage(fit, mf_fit, num_epochs, val, "residual")
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
            fitted, log_counts, _ = run_stage(train, mf_all, result.best_epoch + 1, None, "residual-refit")
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


# ---- options ------------------------------------------------------------------------------
def check_residual_options(
    *, base: str, embedding_dim: int, num_folds: int, validation_fraction: float, **common: Any
) -> None:
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
    check_common_options(validation_fraction=validation_fraction, **common)
