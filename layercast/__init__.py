"""Layercast: layered extreme-compression streaming of AI-generated images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("layercast")
    """The installed distribution's version (one place: pyproject.toml)."""
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
