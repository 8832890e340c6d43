"""``python -m trl_formatkit``: the ``trl-formatkit`` command, for when the virtualenv's bin is not on the PATH."""

import sys

from .cli import main

sys.exit(main())
