"""The web server: JSON API and pages over the results store (`autointerp serve`)."""

from autointerp.api.app import create_app

__all__ = ["create_app"]
