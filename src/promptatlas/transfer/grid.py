"""Old import path of :mod:`promptatlas.studies.grid`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.studies import grid as _module
from promptatlas.studies.grid import *  # noqa: F403

sys.modules[__name__] = _module
