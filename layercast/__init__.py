"""Layercast: layered extreme-compression streaming of AI-generated images."""

__version__ = "0.1.0"
