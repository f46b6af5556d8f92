"""Receiver side: sans-I/O assembler, decoders (CPU preview, diffusers), the async receive session."""
