"""One process per prompt: refuse multi-process launchers.

``accelerate launch``, ``torchrun`` and ``mpirun -n N`` start N copies of the command. Each copy
would train the same prompt with the same seed and race for the same output folder and results
database, so promptatlas refuses to start under them and names what to use instead: grids run one
cell per GPU through the Ray executor (``--executor ray --gpus-per-cell 1``, docs/executors.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from promptatlas.configtools import ConfigError

__all__ = ["LaunchError", "launched_processes", "refuse_multi_process_launch"]

# The process count each launcher puts in the environment of every copy it starts.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class LaunchError(ConfigError):
    """The command was started N > 1 times by a launcher."""


def launched_processes(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """``(variable, N)`` when a launcher started this process as one of N > 1 copies."""
    env = os.environ if environ is None else environ
    for name in _WORLD_SIZE_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 1:
            return name, int(value)
    return None


def refuse_multi_process_launch(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`LaunchError` when this process is one of several identical copies."""
    found = launched_processes(environ)
    if found is None:
        return
    name, n = found
    raise LaunchError(
        f"started as one of {n} processes ({name}={n}, as `accelerate launch`, `torchrun` or "
        f"`mpirun` do): each copy would train the same prompt and write the same outputs. Run "
        "promptatlas as one process (`promptatlas ...`, or `accelerate launch --num_processes 1`"
        "); for one cell per GPU run a grid with `--executor ray --gpus-per-cell 1` "
        "(docs/executors.md)"
    )
