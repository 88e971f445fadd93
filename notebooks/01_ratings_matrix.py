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
# # 1. The ratings matrix
#
# A recommender starts from a **ratings matrix** $R \in \mathbb{R}^{N \times M}$: $N$ users, $M$ items,
# and $r_{ij}$ the rating user $i$ gave item $j$. Almost all of it is missing. We only observe the
# set of pairs $\Omega = \{(i, j) : r_{ij} \text{ observed}\}$, and every model and metric in probmf
# works on $\Omega$ alone; the dense $N \times M$ matrix is never built.
#
# This notebook looks at MovieLens 100K (ML-100K): how sparse $R$ is, how the ratings are
# distributed, how unevenly they spread over users and items, the formats the data can take,
# and the official train/test split `u1` used in the later notebooks.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from probmf.data import DatasetNotFoundError, Ratings, load_movielens, load_split, random_split, synthetic_preset

# %% tags=["parameters"]
QUICK = os.environ.get("PROBMF_NOTEBOOK_QUICK") == "1"  # tiny settings, for the test suite
DATASET = "ml-100k"  # found in $PROBMF_DATA_DIR/ml-100k or the cache; else synthetic data
SPLIT = "u1"  # the official split shown at the end
DOWNLOAD = not QUICK  # fetch ML-100K from GroupLens when it is not on disk
SEED = 0
NUM_EXAMPLES = 5  # rows printed from each format

# %%
try:
    ratings = load_movielens(DATASET, download=DOWNLOAD)
    ON_MOVIELENS = True
    print(f"data: MovieLens {DATASET} from {ratings.source}")
except DatasetNotFoundError:
    ratings, _ = synthetic_preset("ml100k", seed=SEED)
    ON_MOVIELENS = False
    print(f"data: MovieLens {DATASET} not found (set PROBMF_DATA_DIR to the folder that holds {DATASET}/)")
    print("      using synthetic ratings shaped like ML-100K instead (synthetic_preset('ml100k'))")
print(ratings)

# %% [markdown]
# ## Size and sparsity
#
# The **density** is the observed share of the matrix, $|\Omega| / (N M)$, and the sparsity is
# one minus it. ML-100K has 100,000 ratings of 1,682 movies by 943 users (each user has at
# least 20 ratings): about 6% of the cells are filled.

# %%
N, M, n = ratings.num_users, ratings.num_items, len(ratings)
density = n / (N * M)
print(f"users N = {N:,}, items M = {M:,}, ratings |Omega| = {n:,}")
print(f"density = {density:.4f}, sparsity = {1 - density:.4f}")
print(f"a dense float32 matrix would take {N * M * 4 / 2**20:.1f} MiB for {n * 4 / 2**20:.2f} MiB of ratings")
assert 0 < density < 1

# %% [markdown]
# ## The rating distribution
#
# Ratings are integer stars $1, \dots, 5$. Their mean $\bar r$ is the simplest possible
# predictor, and their standard deviation is the RMSE that predictor makes on the training
# data: every model later has to beat it. The distribution is skewed to the high end (people
# mostly rate what they chose to watch).

# %%
values = ratings.values
print(f"mean rating {values.mean():.3f}, sd {values.std():.3f}")
fig, ax = plt.subplots(figsize=(5, 3))
if np.all(values == np.round(values)):
    stars, counts = np.unique(values, return_counts=True)
    ax.bar(stars, counts / n)
    for s, c in zip(stars, counts, strict=True):
        print(f"  rating {s:.0f}: {c / n:6.1%}")
else:
    ax.hist(values, bins=40, density=True)
ax.set_xlabel("rating")
ax.set_ylabel("share of ratings")
ax.set_title("rating distribution")
plt.show()

# %% [markdown]
# ## The long tail
#
# Let $n_i = |\{j : (i, j) \in \Omega\}|$ be user $i$'s number of ratings and $m_j$ item $j$'s.
# Both are very uneven: a few popular movies collect a large share of the ratings and many
# movies have only a handful (the *long tail*). A model learns little about a row with few
# ratings, which is why regularisation, and later the posterior's uncertainty, matter most
# there.

# %%
n_user = np.bincount(ratings.users, minlength=N)
n_item = np.bincount(ratings.items, minlength=M)
for name, counts in (("user", n_user), ("item", n_item)):
    q = np.percentile(counts, [0, 25, 50, 75, 100])
    print(f"ratings per {name}: min {q[0]:.0f}, quartiles {q[1]:.0f} / {q[2]:.0f} / {q[3]:.0f}, max {q[4]:.0f}")
top = np.sort(n_item)[::-1]
share_top = top[: max(1, M // 10)].sum() / n
print(f"the 10% most rated items hold {share_top:.1%} of all ratings")
print(f"items with fewer than 5 ratings: {np.mean(n_item < 5):.1%}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, counts, name in ((axes[0], n_user, "users"), (axes[1], n_item, "items")):
    ranked = np.sort(counts)[::-1]
    ax.loglog(np.arange(1, ranked.size + 1), np.maximum(ranked, 1))
    ax.set_xlabel(f"{name} ranked by number of ratings")
    ax.set_ylabel("number of ratings")
    ax.set_title(f"ratings per {name[:-1]}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Formats
#
# The same set of observed triples $(i, j, r_{ij})$ can be stored in several ways:
#
# * a **dict** $(i, j) \mapsto r_{ij}$: natural, but one Python object per rating;
# * **COO** (coordinate) format: three arrays `row`, `col`, `data` of length $|\Omega|$; this is what
#   `Ratings` holds (`users`, `items`, `values`, with dense indices $0..N-1$ and $0..M-1$ and
#   id maps back to the raw MovieLens ids);
# * **CSR** (compressed sparse rows): the ratings sorted by user, with `indptr` of length $N + 1$
#   so that user $i$'s items are `indices[indptr[i]:indptr[i+1]]`: a row is a slice, which is
#   what row-wise solvers like ALS need.

# %%
as_dict = {(int(u), int(i)): float(r) for u, i, r in zip(ratings.raw_users(), ratings.raw_items(), values, strict=True)}
print("dict (raw user id, raw item id) -> rating, first entries:")
for key in list(as_dict)[:NUM_EXAMPLES]:
    print(f"  {key} -> {as_dict[key]}")
assert len(as_dict) == n  # no (user, item) pair is rated twice

coo = ratings.to_coo()
print(f"\nCOO: {coo.shape}, nnz = {coo.nnz}")
print("  row  ", coo.row[:NUM_EXAMPLES], "\n  col  ", coo.col[:NUM_EXAMPLES], "\n  data ", coo.data[:NUM_EXAMPLES])

csr = ratings.to_csr()
user = 0
start, stop = csr.indptr[user], csr.indptr[user + 1]
print(f"\nCSR: indptr {csr.indptr[:NUM_EXAMPLES]}...; user index {user} (raw id {ratings.user_ids.raw[user]})")
print(f"  has {stop - start} ratings; first items {csr.indices[start:stop][:NUM_EXAMPLES]}")
print(f"  and ratings {csr.data[start:stop][:NUM_EXAMPLES]}")
coo_bytes = sum(a.nbytes for a in (coo.row, coo.col, coo.data))
csr_bytes = sum(a.nbytes for a in (csr.indptr, csr.indices, csr.data))
print(f"  memory: COO {coo_bytes:,} B, CSR {csr_bytes:,} B")

back = Ratings.from_scipy(csr, user_ids=ratings.user_ids, item_ids=ratings.item_ids)
assert len(back) == n and np.isclose(back.values.sum(), values.sum())

# %% [markdown]
# ## The official `u1` split
#
# To measure how well a model predicts *unseen* ratings, we fit it on a training set and score
# it on a held-out test set, only on pairs in $\Omega_{\text{test}}$:
#
# $$\mathrm{RMSE} = \sqrt{\frac{1}{|\Omega_{\text{test}}|}
#   \sum_{(i,j) \in \Omega_{\text{test}}} (r_{ij} - \hat r_{ij})^2}.$$
#
# ML-100K ships five 80/20 splits `u1`..`u5` whose test sets are disjoint (5-fold cross-validation).
# `load_split` expresses the test ratings in the training set's id space; a test user or item
# never seen in training gets the index $-1$ (a *cold* pair, predicted from biases only).
# Note that `u1.test` is not a uniform sample of users: it holds ratings of the first half of
# the user ids only.

# %%
if ON_MOVIELENS:
    train, test = load_split(DATASET, SPLIT, download=DOWNLOAD)
else:
    train, test = random_split(ratings, 0.2, seed=SEED)
    test = test.reindex(train.user_ids, train.item_ids)
    print("(synthetic data: a random 80/20 split stands in for u1)")
cold = ~test.known
print(f"train: {len(train):,} ratings, {train.num_users} users, {train.num_items} items")
print(f"test:  {len(test):,} ratings, {np.unique(test.users[~cold]).size} users; cold pairs: {cold.sum()}")
print(f"test share: {len(test) / (len(train) + len(test)):.1%}")
test_users_raw = train.user_ids.raw[test.users[test.users >= 0]]
print(f"raw ids of the test users range over {test_users_raw.min()}..{test_users_raw.max()}")

global_mean_rmse = float(np.sqrt(np.mean((test.values - train.values.mean()) ** 2)))
print(f"\nRMSE of the global training mean on the test set: {global_mean_rmse:.4f}")
assert np.isfinite(global_mean_rmse) and global_mean_rmse > 0
