import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ml100k_dir():
    """$PROBMF_DATA_DIR/ml-100k, or skip with the reason."""
    root = os.environ.get("PROBMF_DATA_DIR")
    if not root:
        pytest.skip("PROBMF_DATA_DIR is not set; MovieLens 100K tests need $PROBMF_DATA_DIR/ml-100k")
    path = Path(root) / "ml-100k"
    if not (path / "u1.base").is_file():
        pytest.skip(f"MovieLens 100K not found in {path}")
    return path
