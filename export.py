"""``python export.py ...`` from a checkout: the ``synthseg-lite-export`` command, same config.

The code lives in :mod:`synthseg_lite.commands.export`; ``import export`` gives that module.
"""

import sys

from synthseg_lite.commands import export as _command

if __name__ == "__main__":
    _command.main()
else:
    sys.modules[__name__] = _command
