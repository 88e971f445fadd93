"""Saved models: round trips for every fitter, corruption and version checks, atomic writes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.fitters import FITTERS
from probmf.fitters.run import predictor_of, resolve_options
from probmf.metrics import predict_ratings
from probmf.persistence import FORMAT_VERSION, FittedModel, ModelFileError, load_model, save_model

QUICK = {
    "baseline": {},
    "svd": {"rank": 2},
    "als": {"rank": 2, "num_sweeps": 3},
    "optax": {"rank": 2, "num_epochs": 2},
    "gibbs": {"rank": 2, "num_warmup": 2, "num_samples": 3},
    "autorec-i": {"hidden": 4, "num_epochs": 2},
    "mlp": {"rank": 2, "hidden": (4,), "num_epochs": 2},
    "residual": {"hidden": (4,), "num_epochs": 2, "num_folds": 2},
    "svi": {"rank": 2, "num_epochs": 2, "num_samples": 5},
}


@pytest.fixture(scope="module")
def data():
    ratings, _ = synthetic_preset("tiny", seed=3)
    return ratings


def _fit(model, ratings):
    options = resolve_options(model, QUICK[model])
    result = FITTERS[model](jax.random.PRNGKey(0), ratings, **options)
    return FittedModel.from_training(model, options, predictor_of(model, result, ratings), ratings)


# The MF + ANN hybrid's round trip (15 s: its cross-fitted bases) runs with the slow checks.
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "residual" else m
                                   for m in sorted(QUICK)])  # fmt: skip
def test_round_trip_gives_identical_predictions(tmp_path, data, model):
    fm = _fit(model, data)
    save_model(tmp_path / "m", fm)
    back = load_model(tmp_path / "m")
    assert back.model == model and back.user_ids == data.user_ids and back.item_ids == data.item_ids
    assert back.options == json.loads(json.dumps(fm.options))
    np.testing.assert_array_equal(predict_ratings(back.fitted, data), predict_ratings(fm.fitted, data))
    np.testing.assert_array_equal(back.rated(3), np.sort(data.items[data.users == 3]))


def test_corrupt_arrays_are_detected(tmp_path, data):
    save_model(tmp_path / "m", _fit("als", data))
    npz = tmp_path / "m" / "arrays.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "m")


def test_format_version_and_shapes_are_checked(tmp_path, data):
    save_model(tmp_path / "m", _fit("als", data))
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="format version 99"):
        load_model(tmp_path / "m")
    meta["format_version"] = FORMAT_VERSION
    meta["arrays"]["fitted.fitted.W"][1] = [1, 1]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="fitted.fitted.W"):
        load_model(tmp_path / "m")


def test_a_version_1_point_model_loads_as_a_one_draw_predictor(tmp_path, data):
    """Version 1 stored a point fit bare, its plug-in sd in model.json (or not at all)."""
    saved = _fit("als", data)
    save_model(tmp_path / "m", saved)
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"], meta["structure"] = 1, meta["structure"]["fields"]["fitted"]
    for noise_sd, want in ((0.75, 0.75), (None, np.nan)):
        meta_file.write_text(json.dumps({**meta, "noise_sd": noise_sd}))
        loaded = load_model(tmp_path / "m")
        np.testing.assert_array_equal(loaded.fitted.params.W, saved.fitted.params.W)
        users, items = jnp.arange(3), jnp.arange(3)
        mean, sd = loaded.fitted.predictive(users, items)
        np.testing.assert_array_equal(mean, saved.fitted.predict(users, items))
        np.testing.assert_array_equal(sd, np.full(3, want, np.float32))


def test_only_allow_listed_types_are_rebuilt(tmp_path, data):
    save_model(tmp_path / "m", _fit("als", data))
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["structure"]["type"] = "os.system"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="bad structure"):
        load_model(tmp_path / "m")


def test_failed_save_keeps_the_previous_model(tmp_path, data):
    good = _fit("als", data)
    save_model(tmp_path / "m", good)
    before = (tmp_path / "m" / "arrays.npz").read_bytes()
    bad = FittedModel(
        "als",
        {},
        good.fitted._replace(fitted=good.fitted.params._replace(W=np.array([object()]))),
        good.user_ids,
        good.item_ids,
        (1, 5),
    )
    with pytest.raises(TypeError):
        save_model(tmp_path / "m", bad)
    assert (tmp_path / "m" / "arrays.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
    load_model(tmp_path / "m")


def test_refuses_to_overwrite_a_folder_that_is_not_a_model(tmp_path, data):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "m", _fit("baseline", data))
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="not a saved probmf model"):
        load_model(tmp_path)


def test_summary_only_posterior_and_dataset_round_trip(tmp_path, data):
    """A Gibbs fit that kept only predictive moments saves and loads like any other."""
    from probmf.fitters.gibbs import fit_gibbs

    pairs = (data.users[:20], data.items[:20])
    res = fit_gibbs(jax.random.PRNGKey(0), data, rank=2, num_warmup=2, num_samples=3, keep_draws=False,
                    predict_pairs=pairs)  # fmt: skip
    save_model(tmp_path / "m", FittedModel.from_training("gibbs", {}, res, data, dataset="ml-100k"))
    back = load_model(tmp_path / "m")
    assert back.dataset == "ml-100k" and back.fitted.posterior is None
    np.testing.assert_array_equal(np.asarray(back.fitted.predictive(*pairs)), np.asarray(res.predictive(*pairs)))


def test_the_allow_list_comes_from_the_registry():
    """persistence names no fitter module: a new fitter's types reach it through the registry."""
    import re
    from pathlib import Path

    import probmf.persistence as persistence
    from probmf.fitters import FITTERS, saved_types

    assert not re.search(r"from probmf\.fitters\.\w+ import", Path(persistence.__file__).read_text())
    assert {t.__name__ for t in saved_types()} <= set(persistence.TYPES)
    assert len(saved_types()) >= len({f.__module__ for f in FITTERS.values()}) - 1  # baseline shares ALS's
