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
# # 3. MLE, MAP and the Bayesian posterior
#
# One model, $r_{ij} \sim \mathcal{N}(\hat r_{ij}(\theta), \sigma^2)$ with
# $\hat r_{ij} = w_i^\top u_j + b_i + c_j + \mu$ and $\theta = (W, U, b, c)$, fitted three ways.
#
# **Maximum likelihood (MLE).** $\hat\theta_{\text{MLE}} = \arg\max_\theta \log p(R \mid \theta)
# = \arg\min_\theta \tfrac12 \sum_{\Omega} (r_{ij} - \hat r_{ij})^2$. A user with $n_i \le k$
# ratings has more free parameters than data, so the MLE fits those ratings exactly and
# extrapolates badly: training error falls and test error rises with the rank $k$.
#
# **Maximum a posteriori (MAP).** Add Gaussian priors $w_i, u_j \sim \mathcal{N}(0, \lambda^{-1} I)$:
# $\hat\theta_{\text{MAP}} = \arg\max_\theta \log p(R \mid \theta) + \log p(\theta)$, the ridge
# objective of notebook 2. Still one point $\hat\theta$, and no statement of how sure it is.
#
# **Bayesian.** Keep the whole posterior $p(\theta \mid R) \propto p(R \mid \theta)\, p(\theta)$ and
# average predictions over it. The posterior predictive of a held-out rating, from $S$ draws
# $(\theta_s, \tau_s = 1/\sigma_s^2)$, is a mixture of Gaussians with
#
# $$\mathbb{E}[r^*_{ij}] = \frac1S \sum_s \hat r_{ij}(\theta_s), \qquad
# \operatorname{Var}[r^*_{ij}] = \operatorname{Var}_s\!\left[\hat r_{ij}(\theta_s)\right]
#   + \frac1S \sum_s \tau_s^{-1}:$$
#
# noise plus the disagreement between plausible parameters, which is large exactly where the
# data say little (users and movies with few ratings).

# %% [markdown]
# Two ways to get the posterior:
#
# * **Gibbs sampling** (`fit_gibbs`, BPMF of Salakhutdinov and Mnih, 2008). With hyperpriors on
#   the prior means and precisions, every conditional is conjugate: given the items, user $i$'s
#   $[w_i; b_i]$ is Gaussian with precision $\Lambda + \tau \sum_{j \in \Omega_i} a_j a_j^\top$ (the
#   ALS system, scaled by $\tau$), and the hyper-parameters and $\tau$ have Normal-Wishart and Gamma
#   conditionals. A sweep costs about as much as an ALS sweep.
# * **Stochastic variational inference** (`fit_svi`). Choose $q_\phi(\theta) = \prod_m
#   \mathcal{N}(\theta_m; m_m, s_m^2)$ (mean-field) and maximise the evidence lower bound
#   $\mathrm{ELBO}(\phi) = \mathbb{E}_{q_\phi}[\log p(R, \theta) - \log q_\phi(\theta)]$ by Adam on
#   minibatches. Mean-field tends to underestimate the posterior's spread.
#
# **Scoring uncertainty.** A central interval at level $\alpha$ is $\text{mean} \pm z_{(1+\alpha)/2}\,
# \text{sd}$; it is *calibrated* when it covers a share $\alpha$ of the held-out ratings. A point
# estimate becomes a predictive $\mathcal{N}(\hat r_{ij}, s^2)$ with $s$ its training RMS residual
# (the plug-in, one-draw "posterior"). The negative log density (NLL) scores mean and sd together.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import norm

import probmf
from probmf.data import load_split_or_synthetic
from probmf.metrics import interval_scores, predict_ratings, rmse

# %% tags=["parameters"]
QUICK = os.environ.get("PROBMF_NOTEBOOK_QUICK") == "1"  # tiny settings, for the test suite
DATASET, SPLIT = "ml-100k", "u1"
DOWNLOAD = not QUICK  # fetch ML-100K from GroupLens when it is not on disk
SEED = 0
RANKS = (2,) if QUICK else (2, 10)  # the calibration plot uses the last one
ALS_SWEEPS = 10 if QUICK else 15
LAM, LAM_BIAS = 1.5, 3.0  # MAP priors (ALS's cross-validated defaults)
ADAM_EPOCHS = 3 if QUICK else 40  # MLE by minibatch Adam (fit_optax)
GIBBS = dict(num_warmup=5, num_samples=10) if QUICK else dict(num_warmup=50, num_samples=200)  # after ALS_SWEEPS of MAP
SVI = dict(num_epochs=1, num_samples=10) if QUICK else dict()  # fit_svi defaults: 120 epochs, 100 draws
NUM_PAIRS = 5  # test pairs whose predictive distribution is printed

# %%
train, test, ON_MOVIELENS = load_split_or_synthetic(DATASET, SPLIT, download=DOWNLOAD, seed=SEED)
if ON_MOVIELENS:
    print(f"data: MovieLens {DATASET}, split {SPLIT}")
else:
    print(f"data: MovieLens {DATASET} not found (set PROBMF_DATA_DIR to the folder that holds {DATASET}/)")
    print("      using synthetic ratings shaped like ML-100K, split 80/20 at random")
print(f"train {len(train):,} ratings, test {len(test):,}")
CLIP = (float(train.values.min()), float(train.values.max()))
users, items = jnp.asarray(test.users), jnp.asarray(test.items)

# %% [markdown]
# ## Fitting the five estimators
#
# MLE twice (ALS with $\lambda = \lambda_b = 0$, and Adam on the negative log-likelihood), MAP by
# ALS, and the posterior by Gibbs and by SVI, at each rank.

# %%
METHODS = {
    "MLE (ALS)": ("als", dict(lam=0.0, lam_bias=0.0, num_sweeps=ALS_SWEEPS)),
    "MLE (Adam)": ("optax", dict(objective="mle", num_epochs=ADAM_EPOCHS)),
    "MAP (ALS)": ("als", dict(lam=LAM, lam_bias=LAM_BIAS, num_sweeps=ALS_SWEEPS)),
    "Bayes (Gibbs)": ("gibbs", dict(init_sweeps=ALS_SWEEPS, **GIBBS)),
    "Bayes (SVI)": ("svi", SVI),
}


def predictive(predictor):
    """(mean, sd) of the predictive distribution of every test rating: a posterior's mixture
    over its draws, a point fit's N(r_hat, s^2) with s its clipped training RMS residual."""
    mean, sd = predictor.predictive(users, items)
    return np.asarray(mean, np.float64), np.asarray(sd, np.float64)


def train_rmse(predictor):
    return rmse(predict_ratings(predictor, train, clip=CLIP), train.values)


rows, fits = [], {}
key = jax.random.PRNGKey(SEED)
for k in RANKS:
    for name, (model, options) in METHODS.items():
        result = probmf.fit(model, train, rng_key=key, rank=k, progress=False, **options).predictor
        mean, sd = predictive(result)
        fits[name, k] = (result, mean, sd)
        scores = interval_scores(mean, sd, test.values)
        rows.append(
            dict(method=name, rank=k, train=train_rmse(result), test=rmse(np.clip(mean, *CLIP), test.values), **scores)
        )

print(f"{'method':<14} {'k':>3} {'train RMSE':>10} {'test RMSE':>10} {'cov 50%':>8} {'cov 90%':>8} {'NLL':>7}")
for r in rows:
    print(
        f"{r['method']:<14} {r['rank']:>3} {r['train']:>10.4f} {r['test']:>10.4f} "
        f"{r['coverage_50']:>8.3f} {r['coverage_90']:>8.3f} {r['nll']:>7.3f}"
    )

for r in rows:
    assert np.isfinite(r["test"]) and np.isfinite(r["nll"])
    assert 0.0 <= r["coverage_50"] <= r["coverage_90"] <= 1.0
    if r["method"] == "Bayes (Gibbs)":  # the posterior predictive is calibrated, even from few draws
        assert 0.8 < r["coverage_90"] < 0.97, r
if ON_MOVIELENS:  # on ML-100K the prior helps at every rank
    for k in RANKS:
        by = {r["method"]: r["test"] for r in rows if r["rank"] == k}
        assert by["MAP (ALS)"] < by["MLE (ALS)"], "the prior should help on held-out ratings"

# %% [markdown]
# ## MLE overfits, the prior and the posterior do not
#
# Training RMSE against test RMSE: the MLE's gap between the two grows with the rank; MAP's and
# the posterior's stay small.

# %%
names = list(METHODS)
fig, axes = plt.subplots(1, len(RANKS), figsize=(6 * len(RANKS), 3.4), squeeze=False)
for ax, k in zip(axes[0], RANKS, strict=True):
    by = {r["method"]: r for r in rows if r["rank"] == k}
    x = np.arange(len(names))
    ax.bar(x - 0.2, [by[m]["train"] for m in names], 0.4, label="train")
    ax.bar(x + 0.2, [by[m]["test"] for m in names], 0.4, label="test")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0.8 * min(min(by[m]["train"], by[m]["test"]) for m in names), None)
    ax.set_ylabel("RMSE")
    ax.set_title(f"rank {k}")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The posterior predictive
#
# `result.predictive(users, items)` returns the predictive mean and sd of each pair. The sd is
# larger for movies with few training ratings.

# %%
K = RANKS[-1]
gibbs, mean, sd = fits["Bayes (Gibbs)", K]
print(f"Gibbs, rank {K}: {gibbs.posterior.num_samples} draws")
n_item = np.bincount(train.items, minlength=train.num_items)
n_of = np.where(test.items >= 0, n_item[np.maximum(test.items, 0)], 0)
for t in np.linspace(0, len(test) - 1, NUM_PAIRS).astype(int):
    print(
        f"  user {test.users[t]:>4}, item {test.items[t]:>4} ({n_of[t]:>3} ratings): "
        f"{mean[t]:.2f} +- {sd[t]:.2f}, true {test.values[t]:.0f}"
    )
assert np.all(np.isfinite(sd)) and np.all(sd > 0)
few = n_of < 10
print(f"mean sd: items with < 10 training ratings {sd[few].mean():.3f}, others {sd[~few].mean():.3f}")

# %% [markdown]
# ## Calibration
#
# Left: the observed coverage of central intervals against their nominal level, at rank $k$ =
# the last of `RANKS`; a calibrated predictive lies on the diagonal. Right: the test pairs
# binned by predicted sd; for a calibrated predictive the RMS error in each bin equals the sd.

# %%
levels = np.linspace(0.05, 0.95, 19)
z_of = norm.ppf(0.5 + levels / 2)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
axes[0].plot([0, 1], [0, 1], color="gray", ls="--")
for name in names:
    _, m, s = fits[name, K]
    z = np.abs(test.values - m) / s
    axes[0].plot(levels, [np.mean(z <= q) for q in z_of], "o-", ms=3, label=name)
axes[0].set_xlabel("nominal level")
axes[0].set_ylabel("observed coverage")
axes[0].set_title(f"interval calibration, rank {K}")
axes[0].legend(fontsize=8)

for name in ("Bayes (Gibbs)", "Bayes (SVI)"):
    _, m, s = fits[name, K]
    edges = np.quantile(s, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
    filled = [b for b in range(10) if np.any(bins == b)]
    pred_sd = [s[bins == b].mean() for b in filled]
    err = [np.sqrt(np.mean((test.values - m)[bins == b] ** 2)) for b in filled]
    axes[1].plot(pred_sd, err, "o-", label=name)
lo, hi = axes[1].get_xlim()
axes[1].plot([lo, hi], [lo, hi], color="gray", ls="--")
axes[1].set_xlabel("predicted sd (bin mean)")
axes[1].set_ylabel("RMS error in the bin")
axes[1].set_title("does the sd track the error?")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# On ML-100K the Gibbs posterior has the lowest test RMSE and its intervals are calibrated (90%
# intervals cover about 90% of the held-out ratings), while the MLE's plug-in intervals, built
# from a training error that is far too optimistic, cover much less.

# %%
best = min(rows, key=lambda r: r["test"])
print(
    f"best test RMSE: {best['method']} at rank {best['rank']}: {best['test']:.4f} "
    f"(90% coverage {best['coverage_90']:.3f})"
)

# %% [markdown]
# ## The same posterior from pandas, on raw ids
#
# `probmf.Recommender` wraps any fitter behind one interface on raw ids: `fit` takes a
# DataFrame (columns `userId, movieId, rating` here; `user, item, rating` and other usual
# names are found too) and checks it as a ratings file is checked; `predict` answers with the
# predictive mean and sd per pair, flagging pairs with an unknown user or item
# (`known=False`); `recommend` ranks the items a user has not rated.

# %%
train_df = train.to_dataframe()
known = np.flatnonzero(test.known)  # test pairs whose ids the training file has
test_df = pd.DataFrame(
    {"userId": train.user_ids.raw[test.users[known]], "movieId": train.item_ids.raw[test.items[known]]}
)
estimator = probmf.Recommender("gibbs", rank=RANKS[-1], seed=SEED, **GIBBS).fit(train_df)
pred = estimator.predict(test_df)
print(pred.head())
print(f"test RMSE through the estimator: {np.sqrt(np.mean((pred['mean'] - test.values[known]) ** 2)):.4f}")
user = train.user_ids.raw[0]
print(estimator.recommend([user], n=5))
