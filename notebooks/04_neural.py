# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Neural rating models
#
# Matrix factorization scores a pair by an inner product, $\hat r_{ij} = \mu + b_i + c_j + w_i^\top u_j$:
# a bilinear function of the two embeddings. Neural models replace or extend that score with a
# learned non-linear function. Three of them, against ALS:
#
# **Embedding MLP** (`fit_mlp`). Embeddings $p_i, q_j \in \mathbb{R}^d$ are concatenated and passed
# through ReLU layers $f$:
#
# $$\hat r_{ij} = \mu + b_i + c_j + f([p_i; q_j]).$$
#
# An MLP *can* represent an inner product but learns it poorly from sparse data, so it needs
# regularisation (ridge, dropout) and early stopping on held-out training ratings.
#
# **Residual hybrid** (`fit_residual`). Keep the MF and let a network $g$ correct it:
#
# $$\hat r_{ij} = \mathrm{MF}_{ij} + g(z_{ij}),\qquad z_{ij} = [e_i; e'_j; w_i; u_j; w_i \odot u_j;
# \mathrm{MF}_{ij} - \mu; \log(1 + n_i); \log(1 + n_j)].$$
#
# $g$ is trained on *out-of-fold* residuals $r_{ij} - \mathrm{MF}_{ij}$ (each from an MF fitted
# without that rating; in-sample residuals are too small) and is dropped when it does not beat
# the MF on held-out training ratings.
#
# **AutoRec** (`fit_autorec_i`, Sedhain et al. 2015). An autoencoder of each item's column of
# ratings $r_j \in \mathbb{R}^N$ (missing entries input as 0):
#
# $$h(r_j) = W_2^\top \sigma(W_1^\top r_j + b_1) + b_2, \qquad
# J = \sum_j \sum_{i \in \Omega_j} \big(h(r_j)_i - r_{ij}\big)^2 + \tfrac{\lambda}{2}\big(\|W_1\|^2 + \|W_2\|^2\big),$$
#
# with the loss on observed entries only; the prediction $\hat r_{ij}$ is entry $i$ of $h(r_j)$.
# Each item is described by who rated it and how, with no per-user parameters at all.

# %%
import os
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import probmf
from probmf.data import load_split_or_synthetic
from probmf.metrics import accuracy, predict_ratings, rmse

# %% tags=["parameters"]
QUICK = os.environ.get("PROBMF_NOTEBOOK_QUICK") == "1"  # tiny settings, for the test suite
DATASET, SPLIT = "ml-100k", "u1"
DOWNLOAD = not QUICK  # fetch ML-100K from GroupLens when it is not on disk
SEED = 0
ALS = dict(rank=5, num_sweeps=10) if QUICK else dict()  # fit_als defaults: rank 10, 15 sweeps
MLP = dict(rank=8, hidden=(16,), num_epochs=3) if QUICK else dict()  # defaults: rank 32, (64, 32), <= 60 epochs
RESIDUAL = dict(hidden=(16,), num_epochs=2, num_folds=2, refit=False) if QUICK else dict()  # 5 folds, <= 80 epochs
# fit_autorec_i defaults: 500 hidden units, lam 150, Adam at 2.5e-4 for <= 400 epochs
AUTOREC = dict(hidden=50, lam=50.0, learning_rate=2e-3, num_epochs=20, patience=5) if QUICK else dict()

# %%
train, test, ON_MOVIELENS = load_split_or_synthetic(DATASET, SPLIT, download=DOWNLOAD, seed=SEED)
if ON_MOVIELENS:
    print(f"data: MovieLens {DATASET}, split {SPLIT}")
else:
    print(f"data: MovieLens {DATASET} not found (set PROBMF_DATA_DIR to the folder that holds {DATASET}/)")
    print("      using synthetic ratings shaped like ML-100K, split 80/20 at random")
print(f"train {len(train):,} ratings, test {len(test):,}")
CLIP = (float(train.values.min()), float(train.values.max()))

# %% [markdown]
# ## Fitting
#
# `probmf.fit(name, train, rng_key=..., **options)` runs any fitter and returns its predictor
# (`predictor`) and its own result (`info`: traces, the fitted networks); `predict_ratings`
# handles cold pairs (a user or item without training ratings falls back to the biases) and
# clips to the star range.

# %%
key = jax.random.PRNGKey(SEED)
FITTERS = {
    "ALS (MAP)": ("als", ALS),
    "embedding MLP": ("mlp", MLP),
    "ALS + residual net": ("residual", RESIDUAL),
    "AutoRec (items)": ("autorec-i", AUTOREC),
}
fits, preds, seconds = {}, {}, {}
for name, (model, options) in FITTERS.items():
    t0 = time.perf_counter()
    result = probmf.fit(model, train, rng_key=key, progress=False, **options)
    seconds[name] = time.perf_counter() - t0
    fits[name] = result.info
    preds[name] = predict_ratings(result.predictor, test, clip=CLIP)

global_mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
scores = {name: accuracy(p, test, train=train) for name, p in preds.items()}
print(f"{'model':<20} {'test RMSE':>9} {'MAE':>7} {'fit s':>6}")
print(f"{'global mean':<20} {global_mean_rmse:>9.4f}")
for name, s in scores.items():
    print(f"{name:<20} {s['rmse']:>9.4f} {s['mae']:>7.4f} {seconds[name]:>6.1f}")
residual = fits["ALS + residual net"]
print(
    f"\nresidual net kept: {residual.use_network} (validation RMSE: MF {residual.val_rmse_mf:.4f}, "
    f"MF + net {residual.val_rmse_hybrid:.4f})"
)

for name, s in scores.items():
    assert np.isfinite(s["rmse"]) and s["rmse"] < global_mean_rmse, name

# %% [markdown]
# ## Training curves
#
# The MLP and AutoRec are trained by minibatch Adam and stopped at the epoch with the lowest RMSE
# on a validation share of the *training* ratings (the test set is never looked at).

# %%
curves = {
    "embedding MLP": np.asarray(fits["embedding MLP"].trace.val_rmse),
    "ALS + residual net": np.asarray(residual.trace.val_rmse),
    "AutoRec (items)": np.asarray(fits["AutoRec (items)"].trace),
}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, curve in curves.items():
    if np.isfinite(curve).any():
        axes[0].plot(np.arange(1, curve.size + 1), curve, label=name)
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("validation RMSE")
axes[0].set_xscale("log")
axes[0].legend(fontsize=8)
axes[0].set_title("early stopping")

names = list(scores)
axes[1].barh(names, [scores[m]["rmse"] for m in names])
axes[1].axvline(global_mean_rmse, color="gray", ls="--", label="global mean")
axes[1].set_xlim(0.95 * min(s["rmse"] for s in scores.values()), 1.02 * global_mean_rmse)
axes[1].set_xlabel("test RMSE")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Where the gains come from
#
# The test pairs grouped by how many training ratings their movie has. ALS shrinks a rarely
# rated movie's factors towards zero, a systematic error that depends on the rating counts:
# the residual network sees those counts and gains most on the rare movies. AutoRec describes
# a movie by the whole column of its ratings; most of its gain comes from the movies with many
# ratings, which also hold most of the test pairs. The embedding MLP trails ALS everywhere:
# learning the interaction from scratch takes more data than an inner product does.

# %%
n_item = np.bincount(train.items, minlength=train.num_items)
n_of = np.where(test.items >= 0, n_item[np.maximum(test.items, 0)], 0)
edges = [0, 10, 50, 150, np.inf]
groups = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
print(f"{'item ratings':<14} {'pairs':>6} " + " ".join(f"{m:>18}" for m in names))
table = {}
for lo, hi in groups:
    mask = (n_of >= lo) & (n_of < hi)
    if not mask.any():
        continue
    label = f"{lo:.0f}-{hi:.0f}" if np.isfinite(hi) else f">= {lo:.0f}"
    table[label] = [rmse(preds[m][mask], test.values[mask]) for m in names]
    print(f"{label:<14} {mask.sum():>6} " + " ".join(f"{v:>18.4f}" for v in table[label]))

fig, ax = plt.subplots(figsize=(7, 3.4))
x = np.arange(len(table))
width = 0.8 / len(names)
for k, m in enumerate(names):
    ax.bar(x + (k - (len(names) - 1) / 2) * width, [v[k] for v in table.values()], width, label=m)
ax.set_xticks(x, list(table))
ax.set_xlabel("training ratings of the movie")
ax.set_ylabel("test RMSE")
ax.set_ylim(0.8 * min(min(v) for v in table.values()), None)
ax.legend(fontsize=8)
plt.show()

# %%
best = min(scores, key=lambda m: scores[m]["rmse"])
print(f"best test RMSE: {best} {scores[best]['rmse']:.4f} (ALS {scores['ALS (MAP)']['rmse']:.4f})")
