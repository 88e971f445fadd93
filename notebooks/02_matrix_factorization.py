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
# # 2. Matrix factorization
#
# **The model.** Each user $i$ gets a vector $w_i \in \mathbb{R}^k$ and a bias $b_i$, each item $j$ a
# vector $u_j \in \mathbb{R}^k$ and a bias $c_j$, and a rating is their inner product plus the
# biases, a global offset $\mu$ and Gaussian noise:
#
# $$r_{ij} \sim \mathcal{N}\left(w_i^\top u_j + b_i + c_j + \mu,\; \sigma^2\right).$$
#
# In matrix form $\mathbb{E}[R] = W U^\top + b\mathbf{1}^\top + \mathbf{1}c^\top + \mu$ with $W$
# ($N \times k$) and $U$ ($M \times k$): a low-rank matrix plus biases. The biases carry "this
# user rates high" and "this movie is liked"; the factors carry taste, e.g. how much a user
# likes the kind of movie that loads on factor 1.
#
# **Fitting by MAP (regularised least squares).** With Gaussian priors $w_i, u_j \sim
# \mathcal{N}(0, \lambda^{-1} I)$, $b_i, c_j \sim \mathcal{N}(0, \lambda_b^{-1})$ and $\sigma = 1$,
# the negative log posterior is, up to a constant,
#
# $$L = \tfrac12 \sum_{(i,j) \in \Omega} (r_{ij} - \hat r_{ij})^2
#   + \tfrac{\lambda}{2}\left(\|W\|_F^2 + \|U\|_F^2\right) + \tfrac{\lambda_b}{2}\left(\|b\|^2 + \|c\|^2\right).$$
#
# `fit_als` lets the ridge grow with a row's number of ratings, $\lambda_i = \lambda n_i^{\alpha}$
# (`weight_exponent`, default $\alpha = 0.5$).

# %% [markdown]
# **Alternating least squares (ALS).** $L$ is not convex in $(W, U)$ jointly, but with the items
# fixed it is a ridge regression for each user, solved in closed form. With $a_j = [u_j; 1]$:
#
# $$\begin{bmatrix} w_i \\ b_i \end{bmatrix} = \Big(\sum_{j \in \Omega_i} a_j a_j^\top
#   + \operatorname{diag}(\lambda_i I, \lambda_b)\Big)^{-1} \sum_{j \in \Omega_i} (r_{ij} - \mu - c_j)\, a_j ,$$
#
# and symmetrically for the items. Each half-sweep minimises $L$ exactly over one block, so the
# objective can never increase: the trace is monotone, with no step size to tune.
#
# **Truncated SVD (Eckart-Young).** For a *fully observed* matrix $X$ the best rank-$k$
# approximation in Frobenius norm is its truncated SVD, $X_k = U_k S_k V_k^\top$
# (Eckart-Young-Mirsky). `fit_svd` applies it to the bias residuals $x_{ij} = r_{ij} - \mu - b_i - c_j$
# with the *missing entries set to 0*. That is optimal for the wrong problem: it also fits the
# 94% zeros, which shrinks the factors. ALS fits the observed entries only.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from probmf.data import load_split_or_synthetic, load_titles
from probmf.fitters import fit_als, fit_baseline, fit_svd
from probmf.metrics import accuracy, predict_ratings, rmse

# %% tags=["parameters"]
QUICK = os.environ.get("PROBMF_NOTEBOOK_QUICK") == "1"  # tiny settings, for the test suite
DATASET, SPLIT = "ml-100k", "u1"
DOWNLOAD = not QUICK  # fetch ML-100K from GroupLens when it is not on disk
SEED = 0
RANK = 5 if QUICK else 10  # k of the main SVD and ALS fits
RANKS = (RANK,) if QUICK else (1, 2, 5, 10, 20, 50)  # ranks of the RMSE-vs-rank comparison
NUM_SWEEPS = 10 if QUICK else 15  # ALS sweeps
LAM, LAM_BIAS = 1.5, 3.0  # ALS ridge strengths (the cross-validated defaults)
MIN_RATINGS = 20  # items listed by factor loading need this many training ratings
NUM_SHOWN = 5 if QUICK else 8  # movies listed at each end of a factor

# %%
train, test, ON_MOVIELENS = load_split_or_synthetic(DATASET, SPLIT, download=DOWNLOAD, seed=SEED)
if ON_MOVIELENS:
    print(f"data: MovieLens {DATASET}, split {SPLIT}")
else:
    print(f"data: MovieLens {DATASET} not found (set PROBMF_DATA_DIR to the folder that holds {DATASET}/)")
    print("      using synthetic ratings shaped like ML-100K, split 80/20 at random")
print(f"train {len(train):,} ratings, test {len(test):,}")
CLIP = (float(train.values.min()), float(train.values.max()))  # predictions are clipped to the star range

# %% [markdown]
# ## Fitting: baseline, truncated SVD and ALS
#
# The **baseline** is the rank-0 model $\hat r_{ij} = \mu + b_i + c_j$; the global mean $\bar r$
# is an even simpler reference. Every RMSE below is on the held-out test ratings only.

# %%
key = jax.random.PRNGKey(SEED)


def test_rmse(model):
    """RMSE on the test ratings of predictions clipped to the rating range."""
    return accuracy(predict_ratings(model, test, clip=CLIP), test, train=train)["rmse"]


global_mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
baseline = fit_baseline(key, train, lam_bias=LAM_BIAS)
by_rank = {}
for k in RANKS:
    svd_k = fit_svd(key, train, rank=k, lam_bias=LAM_BIAS)
    als_k = fit_als(key, train, rank=k, lam=LAM, lam_bias=LAM_BIAS, num_sweeps=NUM_SWEEPS)
    by_rank[k] = (svd_k, als_k)
svd, als = by_rank[RANK]

results = {
    "global mean": (rmse(np.full(len(train), train.values.mean()), train.values), global_mean_rmse),
    "baseline": (rmse(predict_ratings(baseline.params, train), train.values), test_rmse(baseline.params)),
    f"svd (k={RANK})": (rmse(predict_ratings(svd.params, train), train.values), test_rmse(svd.params)),
    f"als (k={RANK})": (rmse(predict_ratings(als.params, train), train.values), test_rmse(als.params)),
}
print(f"{'model':<16} {'train RMSE':>10} {'test RMSE':>10}")
for name, (train_rmse, rmse_test) in results.items():
    print(f"{name:<16} {train_rmse:>10.4f} {rmse_test:>10.4f}")

# %% [markdown]
# ## The ALS objective trace
#
# `result.trace[s]` is $L$ after sweep $s$. It decreases at every sweep: fast at first, then
# flattening out as ALS reaches a (local) minimum.

# %%
trace = np.asarray(als.trace, np.float64)
print("objective after each sweep:", np.array2string(trace, precision=1, max_line_width=100))
assert np.all(np.diff(trace) <= 1e-5 * np.abs(trace[:-1])), "the ALS objective increased"

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.arange(1, trace.size + 1), trace, "o-")
ax.set_xlabel("sweep")
ax.set_ylabel("objective L")
ax.set_title(f"ALS, rank {RANK}")
plt.show()

# %% [markdown]
# ## Test RMSE against rank
#
# The SVD gains little from extra rank, since it spends it on fitting zeros. ALS with
# the ridge penalty gains up to $k \approx 10$ and then stays flat: the penalty keeps the
# unused directions near zero instead of fitting noise (notebook 3 removes it).
# The singular values of the residual matrix show why a low rank carries most of the signal.

# %%
ranks = np.array(RANKS)
svd_rmse = [test_rmse(by_rank[k][0].params) for k in RANKS]
als_rmse = [test_rmse(by_rank[k][1].params) for k in RANKS]
for k, s_, a_ in zip(RANKS, svd_rmse, als_rmse, strict=True):
    print(f"k = {k:>3}: svd {s_:.4f}, als {a_:.4f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
names = list(results)
axes[0].bar(range(len(names)), [results[m][1] for m in names])
axes[0].set_xticks(range(len(names)), names, rotation=20)
axes[0].set_ylim(0.8 * min(r[1] for r in results.values()), None)
axes[0].set_ylabel("test RMSE")
axes[0].set_title("held-out accuracy")
axes[1].plot(ranks, svd_rmse, "o-", label="truncated SVD")
axes[1].plot(ranks, als_rmse, "o-", label="ALS (MAP)")
axes[1].axhline(results["baseline"][1], color="gray", ls="--", label="baseline")
axes[1].set_xscale("log")
axes[1].set_xlabel("rank k")
axes[1].set_ylabel("test RMSE")
axes[1].legend()
s = svd.singular_values
axes[2].plot(np.arange(1, s.size + 1), s, "o-")
axes[2].set_xlabel("index")
axes[2].set_ylabel("singular value")
axes[2].set_title("residual matrix (missing = 0)")
plt.tight_layout()
plt.show()

assert all(np.isfinite(r[1]) for r in results.values())
assert results[f"als (k={RANK})"][1] < results["baseline"][1] < global_mean_rmse
assert results[f"svd (k={RANK})"][1] < global_mean_rmse

# %% [markdown]
# ## What the factors mean
#
# The factors are only identified up to an invertible $k \times k$ matrix $A$: $W U^\top =
# (W A)(U A^{-\top})^\top$. To name "the first two factors" we rotate ALS's fit to the principal
# axes of its interaction term. With $W = Q_w R_w$, $U = Q_u R_u$ (QR) and
# $R_w R_u^\top = P S V^\top$ (SVD),
#
# $$W U^\top = (Q_w P S^{1/2})\,(Q_u V S^{1/2})^\top ,$$
#
# so the item loadings on axis $f$ are the columns of $Q_u V S^{1/2}$, ordered by the singular
# value $s_f$. The sign of an axis is arbitrary. Below, the movies at both ends of the first two
# axes (among those with at least `MIN_RATINGS` training ratings).

# %%
W = np.asarray(als.params.W, np.float64)
U = np.asarray(als.params.U, np.float64)
q_w, r_w = np.linalg.qr(W)
q_u, r_u = np.linalg.qr(U)
P, S, Vt = np.linalg.svd(r_w @ r_u.T)
item_axes = q_u @ Vt.T * np.sqrt(S)
user_axes = q_w @ P * np.sqrt(S)
assert np.allclose(user_axes @ item_axes.T, W @ U.T, atol=1e-6 * np.abs(W @ U.T).max())
print("share of the interaction term per axis:", np.round(S**2 / np.sum(S**2), 3))

titles = {}
if ON_MOVIELENS:
    titles = load_titles(DATASET, download=DOWNLOAD)  # raw movie id -> title
else:
    print("(synthetic data: there are no titles; items are shown by id)")


def title(j):
    raw = int(train.item_ids.raw[j])
    return titles.get(raw, f"item {raw}")


n_item = np.bincount(train.items, minlength=train.num_items)
eligible = np.flatnonzero(n_item >= MIN_RATINGS)
for f in range(min(2, RANK)):
    order = eligible[np.argsort(item_axes[eligible, f])]
    print(f"\nfactor {f + 1}  (highest loadings)")
    for j in order[::-1][:NUM_SHOWN]:
        print(f"  {item_axes[j, f]:+.2f}  {title(j)}")
    print(f"factor {f + 1}  (lowest loadings)")
    for j in order[:NUM_SHOWN]:
        print(f"  {item_axes[j, f]:+.2f}  {title(j)}")

# %%
if RANK >= 2:
    fig, ax = plt.subplots(figsize=(7, 5.5))
    c = np.asarray(als.params.c)[eligible]
    points = ax.scatter(item_axes[eligible, 0], item_axes[eligible, 1], c=c, s=8, cmap="coolwarm")
    fig.colorbar(points, label="item bias c_j")
    for f in range(2):
        order = eligible[np.argsort(item_axes[eligible, f])]
        for j in (*order[:3], *order[-3:]):
            ax.annotate(title(j)[:28], item_axes[j, :2], fontsize=7)
    ax.set_xlabel("factor 1")
    ax.set_ylabel("factor 2")
    ax.set_title(f"item loadings (items with >= {MIN_RATINGS} ratings)")
    plt.show()

# %% [markdown]
# With the default settings on ML-100K, the first axis sets edgy, critically acclaimed films
# (*Pulp Fiction*, *A Clockwork Orange*, *Leaving Las Vegas*) against mainstream hits
# (*Independence Day*, *Twister*, *Air Force One*), and the second action and teen comedy
# against costume drama and romance (*The English Patient*, *Evita*). Nobody told the model
# about genres: the ratings alone put these movies together.

# %%
print(
    f"test RMSE: global mean {global_mean_rmse:.4f}, baseline {results['baseline'][1]:.4f}, "
    f"svd {results[f'svd (k={RANK})'][1]:.4f}, als {results[f'als (k={RANK})'][1]:.4f}"
)
