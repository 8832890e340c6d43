"""``python -m trl_formatkit.cli``: the same as the ``trl-formatkit`` command."""

import sys

from . import main

sys.exit(main())
