"""``python -m cirlab.cli``: the same as the ``cirlab`` command."""

import sys

from cirlab.cli import main

sys.exit(main())
