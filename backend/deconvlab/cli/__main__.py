"""``python -m deconvlab.cli`` (what ``torchrun ... -m deconvlab.cli index`` runs)."""

import sys

from .main import main

sys.exit(main())
