"""Old import path of :mod:`promptatlas.runs.train`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.runs import train as _module
from promptatlas.runs.train import *  # noqa: F403

sys.modules[__name__] = _module
