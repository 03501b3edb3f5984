"""``python -m deconvlab``: the same as the ``deconvlab`` command."""

import sys

from .cli import main

sys.exit(main())
