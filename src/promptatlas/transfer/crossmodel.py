"""Old import path of :mod:`promptatlas.runs.crossmodel`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.runs import crossmodel as _module
from promptatlas.runs.crossmodel import *  # noqa: F403

sys.modules[__name__] = _module
