"""The minibatch fitters' checkpoints (resume after a kill equals the uninterrupted run) and
data-parallel training across devices (equals the one-device run up to float rounding)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import probmf.checkpoint
from probmf.checkpoint import CheckpointError
from probmf.data.synthetic import synthetic_preset
from probmf.fitters import autorec, optax_mf, residual
from probmf.fitters.autorec import fit_autorec_i
from probmf.fitters.mlp import fit_mlp
from probmf.fitters.optax_mf import fit_optax
from probmf.fitters.run import fitter_options

KEY = jax.random.PRNGKey(0)
ROOT = Path(__file__).resolve().parents[1]
# 6 epochs with a validation split, so that the early-stopping record is part of the state.
OPTAX = dict(rank=3, num_epochs=6, batch_size=128, validation_fraction=0.2, patience=50)
AUTOREC = dict(hidden=8, num_epochs=8, patience=1, batch_size=8, learning_rate=5e-2, lam=0.1)


@pytest.fixture(scope="module")
def tiny():
    return synthetic_preset("tiny")[0]


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class Interrupted(Exception):
    pass


def _record_saves(monkeypatch, fail_after=None):
    """Record the steps saved; with ``fail_after``, stop the run (after a complete save) there."""
    steps, save, count = [], probmf.checkpoint.save, [0]

    def recording(checkpoint, step, state):
        save(checkpoint, step, state)
        steps.append(step)
        count[0] += 1
        if count[0] == fail_after:
            raise Interrupted

    monkeypatch.setattr(probmf.checkpoint, "save", recording)
    return steps


def test_resume_after_a_kill_equals_the_uninterrupted_run(tiny, tmp_path, monkeypatch):
    whole = fit_optax(KEY, tiny, checkpoint=str(tmp_path / "a"), checkpoint_every=1, **OPTAX)
    # Checkpoints change nothing: the run equals one without them.
    _assert_same(whole, fit_optax(KEY, tiny, **OPTAX))

    folder = tmp_path / "b"
    script = f"""
        import os, signal
        import jax
        import probmf.checkpoint
        from probmf.data.synthetic import synthetic_preset
        from probmf.fitters.optax_mf import fit_optax
        save, saves = probmf.checkpoint.save, []
        def killing_save(checkpoint, step, state):
            save(checkpoint, step, state)
            saves.append(step)
            if len(saves) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        probmf.checkpoint.save = killing_save
        fit_optax(jax.random.PRNGKey(0), synthetic_preset("tiny")[0], checkpoint={str(folder)!r},
                  checkpoint_every=1, **{OPTAX!r})
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    (path,) = folder.glob("optax-*.npz")
    with np.load(path) as f:
        assert int(f["step"]) == 3

    steps = _record_saves(monkeypatch)
    resumed = fit_optax(KEY, tiny, checkpoint=str(folder), checkpoint_every=1, **OPTAX)
    assert steps == [4, 5, 6]  # resumed from epoch 3, not restarted
    _assert_same(resumed, whole)


def test_early_stopping_is_the_same_with_checkpoints(tiny, tmp_path, monkeypatch):
    """MLE at rank 8 overfits: training stops early; the stopped run is saved as finished."""
    options = dict(rank=8, objective="mle", learning_rate=0.01, schedule="constant", num_epochs=40, batch_size=64,
                   validation_fraction=0.2, patience=2)  # fmt: skip
    plain = fit_optax(KEY, tiny, **options)
    done = len(plain.trace.train_loss)
    assert 6 < done < 40
    steps = _record_saves(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        fit_optax(KEY, tiny, checkpoint=str(tmp_path), checkpoint_every=2, **options)
    steps.clear()
    resumed = fit_optax(KEY, tiny, checkpoint=str(tmp_path), checkpoint_every=2, **options)
    _assert_same(resumed, plain)
    # Saved every 2 epochs from where it was interrupted, then once as finished when it stopped.
    assert steps == [*range(6, 2 * ((done - 1) // 2) + 1, 2), 40]
    steps.clear()
    _assert_same(fit_optax(KEY, tiny, checkpoint=str(tmp_path), checkpoint_every=2, **options), plain)
    assert steps == []  # finished: nothing to run or save


def test_a_checkpoint_of_another_run_is_not_used(tiny, tmp_path, monkeypatch):
    options = dict(rank=2, num_epochs=3, batch_size=256)
    fit_optax(KEY, tiny, lam=1.5, checkpoint=str(tmp_path), **options)
    steps = _record_saves(monkeypatch)
    other = fit_optax(KEY, tiny, lam=2.0, checkpoint=str(tmp_path), **options)
    assert steps == [1, 2, 3]  # from the start
    assert len(list(tmp_path.glob("optax-*.npz"))) == 2
    _assert_same(other, fit_optax(KEY, tiny, lam=2.0, **options))
    steps.clear()
    fit_optax(jax.random.PRNGKey(1), tiny, lam=2.0, checkpoint=str(tmp_path), **options)  # another seed
    assert steps == [1, 2, 3] and len(list(tmp_path.glob("optax-*.npz"))) == 3


def test_a_corrupt_checkpoint_is_an_error_naming_the_file(tiny, tmp_path):
    options = dict(rank=2, num_epochs=2, batch_size=256, checkpoint=str(tmp_path))
    fit_optax(KEY, tiny, **options)
    (path,) = tmp_path.glob("optax-*.npz")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        fit_optax(KEY, tiny, **options)


def test_autorec_resumes_with_early_stopping_and_refit(tiny, tmp_path, monkeypatch):
    plain = fit_autorec_i(KEY, tiny, **AUTOREC)
    assert len(plain.trace) < AUTOREC["num_epochs"]  # stopped early, then refitted
    _record_saves(monkeypatch, fail_after=1)
    with pytest.raises(Interrupted):
        fit_autorec_i(KEY, tiny, checkpoint=str(tmp_path), checkpoint_every=2, **AUTOREC)
    monkeypatch.undo()
    resumed = fit_autorec_i(KEY, tiny, checkpoint=str(tmp_path), checkpoint_every=2, **AUTOREC)
    _assert_same(resumed.params, plain.params)
    np.testing.assert_array_equal(resumed.trace, plain.trace)
    assert resumed.best_epoch == plain.best_epoch
    assert any("-refit-" in p.name for p in tmp_path.glob("autorec-i-*.npz"))


DEVICES_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from probmf.data.synthetic import synthetic_preset
from probmf.fitters import fit_autorec_i, fit_optax
from probmf.model import predict

train = synthetic_preset("tiny")[0]
u, i = jnp.asarray(train.users), jnp.asarray(train.items)
out = {"device_count": len(jax.devices())}
def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
for name, fit, options, pred in [
    ("optax", fit_optax, dict(rank=3, num_epochs=4, batch_size=128), lambda r: predict(r.params, u, i)),
    ("autorec-i", fit_autorec_i, dict(hidden=16, num_epochs=3, batch_size=16, validation_fraction=0.0),
     lambda r: r.predict(u, i)),
]:
    one, four = (fit(jax.random.PRNGKey(0), train, devices=d, **options) for d in (1, 4))
    pairs = list(zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True))
    out[name] = {"params": max(rel(a, b) for a, b in pairs), "predictions": rel(pred(four), pred(one)),
                 "devices": len(jax.tree.leaves(four.params)[0].sharding.device_set)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_four_devices_equal_one_up_to_rounding():
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", DEVICES_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["device_count"] == 4
    for name in ("optax", "autorec-i"):
        assert out[name]["devices"] == 4, out  # parameters replicated on the 4 devices
        # measured relative differences up to ~7e-7 (float32 rounding of the all-reduced
        # gradients); the bound is ~10x that
        assert out[name]["params"] < 5e-6 and out[name]["predictions"] < 5e-6, out


def _never(*args, **kwargs):
    raise AssertionError("trained before validating the devices option")


@pytest.mark.skipif(len(jax.devices()) > 1, reason="needs a process with one device")
def test_more_devices_than_available_raise_before_training(tiny, monkeypatch):
    monkeypatch.setattr(optax_mf, "minibatch_program", _never)
    monkeypatch.setattr(residual, "fit_als", _never)
    monkeypatch.setattr(autorec, "fit_baseline", _never)
    for fit in (fit_optax, fit_mlp, residual.fit_residual, fit_autorec_i):
        with pytest.raises(ValueError, match="XLA_FLAGS=--xla_force_host_platform_device_count=2"):
            fit(KEY, tiny, devices=2)


def test_a_batch_size_the_devices_do_not_divide_raises_before_compiling(tiny, monkeypatch):
    monkeypatch.setattr(optax_mf, "minibatch_program", _never)
    monkeypatch.setattr(residual, "fit_als", _never)
    monkeypatch.setattr(autorec, "fit_baseline", _never)
    with pytest.raises(ValueError, match=r"batch_size=1000 does not divide by devices=3.* e\.g\. 999 or 1002"):
        fit_optax(KEY, tiny, devices=3, batch_size=1000)
    for fit in (fit_mlp, residual.fit_residual, fit_autorec_i):
        with pytest.raises(ValueError, match="batch_size=6 does not divide by devices=4"):
            fit(KEY, tiny, devices=4, batch_size=6)
    for bad in ({"devices": 0}, {"devices": 1.5}, {"checkpoint_every": 0}, {"checkpoint": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fit_optax(KEY, tiny, **bad)


@pytest.mark.parametrize("model", ["optax", "mlp", "residual", "autorec-i", "autorec-u"])
def test_the_options_are_listed(model):
    options = fitter_options(model)
    assert (options["devices"], options["checkpoint"], options["checkpoint_every"]) == (1, None, 1)
