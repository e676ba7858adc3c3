"""Old import path of :mod:`promptatlas.studies.experiment`, kept for one release.

This name is that module, so monkeypatching either path patches the same module.
"""

import sys

from promptatlas.studies import experiment as _module
from promptatlas.studies.experiment import *  # noqa: F403

sys.modules[__name__] = _module
