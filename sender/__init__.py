"""Sender side: extractors (pure), the encode pipeline (no I/O), the async send session."""
