"""Shared fixtures: tiny random models (fast) and the real Gemma-3-270M (integration)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_handles() -> dict[str, Any]:
    from promptatlas.models import load_model

    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def gemma() -> Any:
    from promptatlas.models import load_model

    return load_model("gemma-3-270m")


@pytest.fixture(autouse=True)
def _isolated_db(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never write into the user's results database from tests.
    monkeypatch.setenv("PROMPTATLAS_DB", str(tmp_path / "results.sqlite"))
