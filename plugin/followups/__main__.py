"""``python -m followups``: the same as the ``followups`` command."""

import sys

from .cli import main

sys.exit(main())
