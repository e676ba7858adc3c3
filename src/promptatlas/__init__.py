"""promptatlas: train, transfer and explain soft prompts on frozen causal language models."""

from importlib import metadata as _metadata

try:
    # The installed distribution's version (pyproject.toml), so it cannot drift from it.
    __version__ = _metadata.version("promptatlas")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
