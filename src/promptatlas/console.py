"""What reaches the terminal: third-party noise switched off (``--quiet``), and promptatlas's own
warnings as one line each."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

__all__ = ["quiet_libraries", "show_warnings_as_lines"]

_PACKAGE = Path(__file__).resolve().parent
_LIBRARIES = r"(transformers|torch|huggingface_hub|safetensors|peft|accelerate|gguf|tokenizers)"


def quiet_libraries() -> None:
    """Silence the libraries under promptatlas: model-loading and conversion progress bars
    (transformers, the hub, tqdm), transformers' log messages below errors, and the
    FutureWarning/DeprecationWarning/UserWarning they raise. promptatlas's own warnings (e.g. a
    skipped data row, an absurd prompt size) still show.

    Environment switches take effect for libraries imported later (call this first, as the CLI
    does); libraries already imported are switched off directly."""
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is imported
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "tqdm" in sys.modules:  # already imported (e.g. by torch): switch its default off
        import functools

        from tqdm import std

        if not getattr(std.tqdm.__init__, "_promptatlas_quiet", False):
            quiet_init = functools.partialmethod(std.tqdm.__init__, disable=True)
            quiet_init._promptatlas_quiet = True  # type: ignore[attr-defined]
            std.tqdm.__init__ = quiet_init
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=_LIBRARIES + r"(\..*)?$")


def show_warnings_as_lines(stream: TextIO | None = None) -> None:
    """Print warnings raised in promptatlas as ``promptatlas: warning: …`` (one line, no source
    excerpt); other warnings keep Python's format."""
    default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        try:
            ours = Path(filename).resolve().is_relative_to(_PACKAGE)
        except (OSError, ValueError):
            ours = False
        if ours and issubclass(category, UserWarning):
            text = " ".join(str(message).split("\n"))
            print(f"promptatlas: warning: {text}", file=file or stream or sys.stderr)
            return
        default(message, category, filename, lineno, file, line)

    if not getattr(warnings.showwarning, "_promptatlas", False):
        show._promptatlas = True  # type: ignore[attr-defined]
        warnings.showwarning = show
