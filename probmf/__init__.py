"""probmf: probabilistic matrix factorization for recommender systems, in pure JAX."""

__version__ = "0.1.0"
