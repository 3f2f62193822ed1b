"""``python infer.py ...`` from a checkout: the ``synthseg-lite-infer`` command, same config.

The code lives in :mod:`synthseg_lite.commands.infer`; ``import infer`` gives that module.
"""

import sys

from synthseg_lite.commands import infer as _command

if __name__ == "__main__":
    _command.main()
else:
    sys.modules[__name__] = _command
