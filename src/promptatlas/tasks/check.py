"""Old import path of :mod:`promptatlas.evaluation.taskcheck`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.evaluation import taskcheck as _module
from promptatlas.evaluation.taskcheck import *  # noqa: F403

sys.modules[__name__] = _module
