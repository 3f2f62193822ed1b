"""``python train.py ...`` from a checkout: the ``synthseg-lite-train`` command, same config.

The code lives in :mod:`synthseg_lite.commands.train`; ``import train`` gives that module.
"""

import sys

from synthseg_lite.commands import train as _command

if __name__ == "__main__":
    _command.main()
else:
    sys.modules[__name__] = _command
