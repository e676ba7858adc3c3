"""``promptatlas.__version__`` is the installed distribution's version, with a fallback."""

from __future__ import annotations

import importlib
from importlib import metadata

import pytest

import promptatlas


def test_version_is_the_installed_distributions() -> None:
    assert promptatlas.__version__ == metadata.version("promptatlas")


def test_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    try:
        assert importlib.reload(promptatlas).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(promptatlas)
    assert promptatlas.__version__ == metadata.version("promptatlas")
