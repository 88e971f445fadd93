"""probmf: probabilistic matrix factorization for recommender systems, in pure JAX.

The curated API (``__all__``); each name is imported on first use, so ``import probmf`` (and
``probmf --help``) stays fast:

    fit(model, train, **config) -> FitResult       every fitter, one shape (`probmf.fitters.run`)
    FITTERS                                        name -> fitter
    Recommender, cross_validate                    raw ids and pandas (`probmf.estimator`)
    Ratings, read_ratings, read_dataframe          data in (`probmf.data`)
    MFParams, predict                              the model's parameters and forward pass
    Predictor, PointPredictor                      what every fitted model answers
    Posterior                                      S draws and their predictive
    to_inference_data                              any fit as ArviZ InferenceData (arviz imported on call)
    save_model, load_model                         safe persistence (no pickle)
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "probmf.fitters.run",
    "FitResult": "probmf.fitters.run",
    "Predictor": "probmf.predictor",
    "PointPredictor": "probmf.predictor",
    "FITTERS": "probmf.fitters",
    "Recommender": "probmf.estimator",
    "cross_validate": "probmf.estimator",
    "Ratings": "probmf.data.ratings",
    "read_ratings": "probmf.data.io",
    "read_dataframe": "probmf.data.io",
    "MFParams": "probmf.model",
    "predict": "probmf.model",
    "Posterior": "probmf.posterior",
    "to_inference_data": "probmf.inference_data",
    "save_model": "probmf.persistence",
    "load_model": "probmf.persistence",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probmf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
