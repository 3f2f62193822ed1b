"""``python evaluate.py ...`` from a checkout: the ``synthseg-lite-evaluate`` command, same config.

The code lives in :mod:`synthseg_lite.commands.evaluate`; ``import evaluate`` gives that module.
"""

import sys

from synthseg_lite.commands import evaluate as _command

if __name__ == "__main__":
    _command.main()
else:
    sys.modules[__name__] = _command
