"""The REST API over the library (FastAPI). ``create_app(Settings(...))`` builds the app.

The library (``deconvlab.*``) knows nothing of HTTP; this package only
translates requests into library calls and library errors into status codes.
"""

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
