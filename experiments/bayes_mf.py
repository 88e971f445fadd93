"""MLE vs MAP vs Bayesian: one biased MF model fitted three ways, across ranks K.

    python experiments/bayes_mf.py                 # ML-100K u1, K in 1 2 5 10 20 50 (~3-4 min, 2 cores)
    python experiments/bayes_mf.py --quick         # K in 1 5 10, fewer draws (~2 min)
    python experiments/bayes_mf.py --smoke         # tiny synthetic data, K = 2 (for tests; see below)
    python experiments/bayes_mf.py --train a.csv --test b.csv

Methods (all the same likelihood r_ij ~ N(w_i.u_j + b_i + c_j + mu, sigma^2)):
  mle-als    ALS with lam = lam_bias = 0 (maximum likelihood)
  mle-optax  minibatch Adam on the negative log-likelihood
  map-als    ALS with Gaussian priors, lam chosen on a validation split of the TRAINING data
  map-optax  minibatch Adam on the negative log posterior, same lam
  gibbs      the full posterior by blocked Gibbs sampling (BPMF)
  svi        variational posterior (when probmf provides it)
Expected (Salakhutdinov & Mnih 2008): MLE overfits as K grows, MAP much less, the Bayesian
posterior hardly at all.

Beside RMSE, the Bayesian criterion: the expected log predictive density of the held-out
ratings, from `probmf.to_inference_data`'s log-likelihood (one value per rating and draw;
a point fit is one draw of N(r_hat, s^2), s its plug-in sd):
  elpd            sum_p log mean_s p(r_p | draw s), measured directly on the held-out ratings
                  (elpd_per_rating: divided by their number; for a point fit it is -nll
                  where no prediction is clipped: nll is scored at the clipped mean, elpd at
                  the model's own)
  elpd_loo        ArviZ's PSIS-LOO (``az.loo``) of the TRAINING ratings' log-likelihood, with its
                  se and p_loo (elpd_loo_per_rating: per training rating): the fit's own estimate
                  of how it predicts a rating it has not seen, from the draws alone (Vehtari et
                  al. 2017), next to the held-out elpd that measures it; loo_bad_k: the share of
                  ratings whose Pareto k exceeds 0.7 (where the estimate is unreliable). Posterior
                  methods only: a point fit has one draw to reweight, so its "LOO" would be its
                  in-sample fit (null).
  loo_rank, elpd_diff, loo_weight   ``az.compare`` of the posterior methods at each K (stacking)
Needs arviz for these columns (null without it).

Writes to ``--out`` (default results/bayes_mf/): results.csv and results.jsonl (one row per
method and K, the `probmf evaluate` schema plus train_rmse and the elpd columns),
rmse_vs_rank.png, calibration.png, sd_vs_error.png and report.md; prints the table.

Durations on 2 CPU cores: the full run took 3 min 9 s. ``--smoke`` checks the pipeline, not
the science: one rank, a few sweeps, epochs and draws of each method on 800 synthetic
ratings (60 users, 40 items). It takes about 30 s of CPU (45 s on a busy machine), nearly
all of it importing JAX, NumPyro and matplotlib and compiling each fitter's programs once;
the sampling and fitting themselves take well under a second. It compiles with XLA's
backend optimisation off (``XLA_FLAGS``, unless already set), as the test suite does.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from statistics import NormalDist

if __name__ == "__main__" and "--smoke" in sys.argv[1:]:
    # Tiny programs that run once: LLVM at -O0 compiles them faster, with the same results up to
    # float rounding (tests/conftest.py does the same). Set before JAX starts; a user's own win.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import warnings

import jax.numpy as jnp
import numpy as np

from probmf.data.splits import random_split
from probmf.evaluate import evaluate_fold, folds, score
from probmf.fitters import FITTERS
from probmf.fitters.run import fit_model
from probmf.inference_data import to_inference_data
from probmf.metrics import predict_ratings, rmse

LEVELS = np.linspace(0.05, 0.95, 19)  # nominal central-interval levels for the calibration curve


def methods(quick: bool, smoke: bool) -> dict[str, tuple[str, dict]]:
    """name -> (fitter, options except rank and lam)."""
    # Smoke: the Gibbs chain starts from as many ALS sweeps as the ALS methods run, so that
    # ALS program is compiled once, not twice; 25 draws are the fewest arviz >= 1's PSIS takes
    # (a Pareto tail of at least 5 draws).
    draws = (
        {"num_warmup": 10, "num_samples": 25, "init_sweeps": 5} if smoke else ({"num_samples": 100} if quick else {})
    )
    out = {
        "mle-als": ("als", {"lam": 0.0, "lam_bias": 0.0, "num_sweeps": 5 if smoke else 15}),
        "mle-optax": ("optax", {"objective": "mle", "num_epochs": 3 if smoke else 40}),
        "map-als": ("als", {"num_sweeps": 5 if smoke else 15}),
        "map-optax": ("optax", {"objective": "map", "num_epochs": 3 if smoke else 40}),
        "gibbs": ("gibbs", draws),
    }
    if "svi" in FITTERS:
        out["svi"] = ("svi", {"num_epochs": 2} if smoke else {})
    return out


def choose_lambda(train, rank: int, grid, seed: int, sweeps: int) -> float:
    """The ALS ridge strength with the lowest RMSE on a random 10% of the training ratings."""
    fit, val = random_split(train, 0.1, seed=seed)
    scores = [
        evaluate_fold("als", fit, val, options={"rank": rank, "lam": lam, "num_sweeps": sweeps})["rmse"] for lam in grid
    ]
    return float(grid[int(np.argmin(scores))])


def calibration(model, test) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed coverage of central intervals at each nominal level, predictive sd and |error|."""
    mean, sd = model.predictive(jnp.asarray(test.users), jnp.asarray(test.items))
    mean, sd = np.asarray(mean, np.float64), np.asarray(sd, np.float64)
    z = np.abs(test.values - mean) / sd
    # The standard normal quantile from the standard library: importing scipy.stats took about
    # 4 s of CPU, more than all the sampling and fitting of the smoke run.
    observed = np.array([np.mean(z <= NormalDist().inv_cdf(0.5 + level / 2)) for level in LEVELS])
    return observed, sd, np.abs(test.values - mean)


ELPD_FIELDS = ("elpd", "elpd_per_rating", "elpd_loo", "elpd_loo_se", "elpd_loo_per_rating", "p_loo", "loo_bad_k",
               "loo_rank", "elpd_diff", "loo_weight")  # fmt: skip


def elpd(model, train, test, seed: int):
    """(elpd fields of one fit, its training ``az.loo`` result or None: a point fit, or no
    arviz); see the module docstring."""
    try:
        import arviz as az
    except ImportError:
        return dict.fromkeys(ELPD_FIELDS), None
    flat = _log_likelihood(to_inference_data(model, test, seed=seed))
    lppd = float(np.sum(np.logaddexp.reduce(flat, axis=0) - np.log(flat.shape[0])))
    row = {**dict.fromkeys(ELPD_FIELDS), "elpd": lppd, "elpd_per_rating": lppd / flat.shape[1]}
    if flat.shape[0] == 1:
        return row, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a high Pareto k is reported as loo_bad_k instead
        loo = az.loo(to_inference_data(model, train, seed=seed), pointwise=True)
    k = np.asarray(loo.pareto_k)
    # arviz >= 1 names the fields elpd and p.
    loo_elpd, p_loo = map(float, (loo.elpd_loo, loo.p_loo) if hasattr(loo, "elpd_loo") else (loo.elpd, loo.p))
    row.update(elpd_loo=loo_elpd, elpd_loo_se=float(loo.se), elpd_loo_per_rating=loo_elpd / k.size,
               p_loo=p_loo, loo_bad_k=float(np.mean(k > 0.7)))  # fmt: skip
    return row, loo


def _log_likelihood(idata) -> np.ndarray:
    """(draws, ratings) log-likelihood of an InferenceData's ``rating`` variable."""
    ll = idata.log_likelihood["rating"]
    return ll.values.reshape(ll.sizes["chain"] * ll.sizes["draw"], -1)


def compare(rows: list[dict], loos: dict) -> None:
    """``az.compare`` of the posterior methods fitted at each rank, written into their rows."""
    if not loos:
        return
    import arviz as az

    for k in dict.fromkeys(r["rank"] for r in rows):
        at_k = {r["method"]: loos[(r["method"], k)] for r in rows if r["rank"] == k and (r["method"], k) in loos}
        if len(at_k) < 2:
            continue
        # arviz >= 1 compares by LOO only and has no ic argument.
        table = az.compare(at_k) if int(az.__version__.split(".")[0]) >= 1 else az.compare(at_k, ic="loo")
        for r in rows:
            if r["rank"] == k and r["method"] in table.index:
                got = table.loc[r["method"]]
                r.update(loo_rank=int(got["rank"]), elpd_diff=float(got["elpd_diff"]), loo_weight=float(got["weight"]))


def run(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_name = "synthetic:tiny" if args.smoke else args.data
    dataset, split, train, test = next(
        iter(folds(data_name, args.split, train_file=args.train, test_file=args.test, seed=args.seed))
    )
    print(f"data: {dataset} split {split}: {len(train):,} training / {len(test):,} held-out ratings", flush=True)
    ranks = args.ranks or ([2] if args.smoke else [1, 5, 10] if args.quick else [1, 2, 5, 10, 20, 50])
    grid = [0.5, 1.5, 4.0] if (args.quick or args.smoke) else [0.5, 1.0, 1.5, 2.5, 4.0]
    rows, curves, loos = [], {}, {}
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        tqdm = None
    jobs = [(k, name) for k in ranks for name in methods(args.quick, args.smoke)]
    bar = tqdm(total=len(jobs), desc="fits", file=sys.stderr) if tqdm else None
    for k in ranks:
        lam = choose_lambda(train, k, grid, args.seed, 5 if args.smoke else 15)
        for name, (fitter, options) in methods(args.quick, args.smoke).items():
            opts = {"rank": k, **options, **({"lam": lam} if name.startswith("map") else {})}
            fitted, opts, seconds = fit_model(fitter, train, options=opts, seed=args.seed)
            row = {"dataset": dataset, "split": split, "method": name, "model": fitter, **score(fitted, train, test)}
            row.update(
                train_rmse=rmse(predict_ratings(fitted, train), train.values),
                fit_seconds=round(seconds, 3),
                lam_chosen=lam if name.startswith("map") else None,
                options={kk: v for kk, v in opts.items() if kk != "rank"},
            )
            scores, loo = elpd(fitted, train, test, args.seed)
            row.update(scores)
            if loo is not None:
                loos[(name, k)] = loo
            rows.append(row)
            if fitted.posterior is not None and k in (10, ranks[-1]):
                curves[(name, k)] = calibration(fitted, test)
            if bar:
                bar.update()
                bar.set_postfix_str(f"K={k} {name} test {row['rmse']:.4f}")
    if bar:
        bar.close()
    compare(rows, loos)
    _write(out, rows, curves)
    return rows


def _write(out: Path, rows: list[dict], curves: dict) -> None:
    with (out / "results.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    fields = [
        "method",
        "rank",
        "rmse",
        "train_rmse",
        "mae",
        "coverage_50",
        "coverage_90",
        "nll",
        "lam_chosen",
        "fit_seconds",
        *ELPD_FIELDS,
    ]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    table = [
        "| method | K | test RMSE | train RMSE | coverage 90% | NLL | elpd / rating | LOO elpd / rating "
        "| elpd_loo (se) | p_loo | LOO rank | weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['method']} | {r['rank']} | {r['rmse']:.4f} | {r['train_rmse']:.4f} | "
        f"{r['coverage_90']:.3f} | {r['nll']:.3f} | {_fmt(r['elpd_per_rating'], '.4f')} | "
        f"{_fmt(r['elpd_loo_per_rating'], '.4f')} | "
        f"{_fmt(r['elpd_loo'], '.1f')} ({_fmt(r['elpd_loo_se'], '.1f')}) | {_fmt(r['p_loo'], '.1f')} | "
        f"{_fmt(r.get('loo_rank'), 'd')} | {_fmt(r.get('loo_weight'), '.2f')} |"
        for r in rows
    ]
    print("\n".join(table))
    _plots(out, rows, curves)
    report = [
        "# MLE vs MAP vs Bayesian matrix factorization",
        "",
        f"Data: {rows[0]['dataset']}, split {rows[0]['split']}; {rows[0]['n_train']:,} training and "
        f"{rows[0]['n_test']:,} held-out ratings. Test RMSE on held-out ratings only.",
        "",
        "![RMSE vs rank](rmse_vs_rank.png)",
        "",
        *table,
        "",
        "elpd / rating: the held-out ratings' log predictive density, sum_p log mean_s p(r_p | draw s), per "
        "rating (a point fit: -NLL, but at the unclipped mean). LOO elpd / rating: ArviZ's PSIS-LOO of the "
        "training ratings' log-likelihood, the fit's own estimate of the held-out elpd per rating (posterior "
        "methods; a point fit has no draws to reweight). LOO rank and weight: "
        "`az.compare` at each K (stacking).",
        "",
        "Calibration of the posterior predictive: ![calibration](calibration.png)",
        "",
        "Predictive sd against the absolute error: ![sd vs error](sd_vs_error.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    print(f"wrote {out}/results.csv, results.jsonl, report.md and plots", flush=True)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _plots(out: Path, rows: list[dict], curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ks = [r["rank"] for r in rs]
        axes[0].plot(ks, [r["rmse"] for r in rs], marker="o", label=method)
        axes[1].plot(ks, [r["train_rmse"] for r in rs], marker="o", label=method)
    for ax, title in zip(axes, ("test RMSE", "train RMSE"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("rank K")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "rmse_vs_rank.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="ideal")
    for (method, k), (observed, _, _) in curves.items():
        ax.plot(LEVELS, observed, marker=".", label=f"{method} K={k}")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, k), (_, sd, err) in curves.items():
        order = np.argsort(sd)
        bins = np.array_split(order, 20)
        ax.plot(
            [sd[b].mean() for b in bins],
            [np.sqrt(np.mean(err[b] ** 2)) for b in bins],
            marker="o",
            label=f"{method} K={k}",
        )
    lim = ax.get_xlim()
    ax.plot(lim, lim, color="grey", linestyle="--", label="RMSE = sd")
    ax.set_xlabel("predictive sd (binned)")
    ax.set_ylabel("RMSE in the bin")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sd_vs_error.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--split", default="u1")
    p.add_argument("--train")
    p.add_argument("--test")
    p.add_argument("--ranks", type=int, nargs="+")
    p.add_argument("--quick", action="store_true", help="fewer ranks and draws (~2 minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and one rank, for tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bayes_mf")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
