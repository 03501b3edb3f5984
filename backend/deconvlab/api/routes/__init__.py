"""Thin routes: each translates one HTTP request into library calls (see ``api/README.md``)."""
