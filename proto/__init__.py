"""The Layercast bitstream: the `.proto` specification, its generated code and pure framing.

`layercast.proto` is the one specification; `layercast_pb2` is generated from it with
``python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto proto/layercast.proto``
and committed (tests/test_proto_generated.py fails when it is stale).
"""

from layercast.proto import layercast_pb2 as pb

FORMAT_VERSION = 1
"""The bitstream format version this build writes and reads."""

__all__ = ["FORMAT_VERSION", "pb"]
