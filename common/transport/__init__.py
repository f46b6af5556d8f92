"""Transports behind one small async interface (see `base.Transport`)."""
