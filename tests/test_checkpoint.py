"""Checkpoint/resume of ALS and Gibbs runs: a run killed by SIGKILL and resumed equals an
uninterrupted run bit for bit; a damaged or foreign checkpoint is never used silently."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from probmf.checkpoint import CheckpointError, restore
from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs

FITS = {
    "als": (fit_als, {"rank": 3, "num_sweeps": 9, "checkpoint_every": 2}),
    "gibbs": (fit_gibbs, {"rank": 3, "num_warmup": 4, "num_samples": 6, "thin": 2, "checkpoint_every": 3}),
    "gibbs-implicit": (
        fit_gibbs,
        {"rank": 2, "num_warmup": 3, "num_samples": 4, "implicit": True, "checkpoint_every": 3},
    ),
    "gibbs-chains": (fit_gibbs, {"rank": 2, "num_warmup": 3, "num_samples": 4, "num_chains": 2, "checkpoint_every": 3}),
    "gibbs-implicit-cg": (
        fit_gibbs,
        {
            "rank": 2,
            "num_warmup": 3,
            "num_samples": 4,
            "implicit": True,
            "implicit_solver": "cg",
            "checkpoint_every": 3,
        },
    ),  # fmt: skip
}

KILLED_RUN = r"""
import os, signal, sys
import jax
import probmf.checkpoint as ckpt
from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs

saves, real_save = [], ckpt.save

def save_then_die(*args, **kwargs):
    real_save(*args, **kwargs)
    saves.append(1)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

ckpt.save = save_then_die
fit, options = {"als": fit_als, "gibbs": fit_gibbs}[sys.argv[1].split("-")[0]], eval(sys.argv[2])
train, _ = synthetic_preset("tiny")
fit(jax.random.PRNGKey(3), train, checkpoint=sys.argv[3], **options)
print("finished without being killed")
"""


def _leaves(result):
    return [np.asarray(x) for x in jax.tree.leaves(result)]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("gibbs") else n for n in sorted(FITS)]
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(name, tmp_path):
    fit, options = FITS[name]
    train, _ = synthetic_preset("tiny")
    whole = fit(jax.random.PRNGKey(3), train, checkpoint=str(tmp_path / "whole"), **options)

    folder = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, name, repr(options), str(folder)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    (path,) = folder.glob(f"{name.split('-')[0]}-*.npz")
    with np.load(path) as f:
        assert int(f["step"]) == 2 * options["checkpoint_every"]  # killed right after the second save

    resumed = fit(jax.random.PRNGKey(3), train, checkpoint=str(folder), **options)
    for a, b in zip(_leaves(whole), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # Checkpointing does not change the result, only where it can restart from.
    plain = fit(jax.random.PRNGKey(3), train, **{k: v for k, v in options.items() if k != "checkpoint_every"})
    for a, b in zip(_leaves(whole), _leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_another_run_never_resumes_from_a_checkpoint(tmp_path):
    train, _ = synthetic_preset("tiny")
    fit_als(jax.random.PRNGKey(0), train, rank=2, num_sweeps=4, checkpoint=str(tmp_path), checkpoint_every=2)
    fit_als(jax.random.PRNGKey(0), train, rank=2, num_sweeps=4, lam=0.5, checkpoint=str(tmp_path), checkpoint_every=2)
    fit_als(jax.random.PRNGKey(1), train, rank=2, num_sweeps=4, checkpoint=str(tmp_path), checkpoint_every=2)
    assert len(list(tmp_path.glob("als-*.npz"))) == 3


def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path):
    train, _ = synthetic_preset("tiny")
    kwargs = dict(rank=2, num_sweeps=4, checkpoint=str(tmp_path), checkpoint_every=2)
    fit_als(jax.random.PRNGKey(0), train, **kwargs)
    (path,) = tmp_path.glob("als-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(path.name)):
        fit_als(jax.random.PRNGKey(0), train, **kwargs)


def test_a_checkpoint_of_another_shape_is_an_error(tmp_path):
    train, _ = synthetic_preset("tiny")
    fit_als(jax.random.PRNGKey(0), train, rank=2, num_sweeps=4, checkpoint=str(tmp_path), checkpoint_every=2)
    (path,) = tmp_path.glob("als-*.npz")
    from probmf.checkpoint import Checkpoint

    with pytest.raises(CheckpointError, match="expected"):
        restore(Checkpoint(path, 2), (np.zeros((3, 3), np.float32),) * 6)


@pytest.mark.parametrize("name", ["als", "gibbs", "optax", "svi"])
def test_a_progress_bar_shows_and_changes_no_bit(name, capsys):
    """With the bar on, the bar goes to stderr and every leaf of the result equals the
    quiet run's (the bar must never change the chunks)."""
    from probmf.checkpoint import show_progress
    from probmf.fitters import fit_optax, fit_svi

    fit, options = {
        "als": (fit_als, {"rank": 3, "num_sweeps": 9}),
        "gibbs": (fit_gibbs, {"rank": 2, "num_warmup": 4, "num_samples": 5}),
        "optax": (fit_optax, {"rank": 2, "num_epochs": 5}),
        "svi": (fit_svi, {"rank": 2, "num_epochs": 5, "num_samples": 4}),
    }[name]
    train, _ = synthetic_preset("tiny")
    with show_progress(False):
        quiet = fit(jax.random.PRNGKey(1), train, **options)
    assert "step/s" not in capsys.readouterr().err
    with show_progress(True):
        shown = fit(jax.random.PRNGKey(1), train, **options)
    assert "step/s" in capsys.readouterr().err
    for a, b in zip(_leaves(quiet), _leaves(shown), strict=True):
        np.testing.assert_array_equal(a, b)
