"""Shared core: types, errors, codec registry, layer codecs, metrics and transports."""
