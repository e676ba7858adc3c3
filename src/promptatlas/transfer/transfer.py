"""Old import path of :mod:`promptatlas.runs.transfer`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.runs import transfer as _module
from promptatlas.runs.transfer import *  # noqa: F403

sys.modules[__name__] = _module
