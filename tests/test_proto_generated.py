"""The committed generated code must match proto/layercast.proto (regenerate with the command in proto/__init__.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from layercast.common import registry
from layercast.proto import pb

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) generates protobuf code")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        str(ROOT / "proto" / "layercast.proto"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for name in ("layercast_pb2.py", "layercast_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "proto" / name).read_text()
        assert fresh == committed, f"proto/{name} is stale: regenerate it (see proto/__init__.py)"


def test_registry_ids_match_proto_enum() -> None:
    # written out by hand in the registry: ids are explicit and append-only
    assert (
        registry.PROMPT_UTF8,
        registry.PROMPT_CTX,
        registry.EDGES_CTX,
        registry.COLORMAP_PRED,
        registry.POSE_KEYPOINTS,
    ) == (1, 2, 3, 4, 5)
    codecs = registry.all_codecs()
    declared = {v for v in pb.CodecId.values() if v}
    assert set(codecs) == declared
    for cid, codec in codecs.items():
        assert codec.codec_id == cid
    assert registry.PROMPT_UTF8 == pb.CODEC_ID_PROMPT_UTF8
    assert registry.PROMPT_CTX == pb.CODEC_ID_PROMPT_CTX
    assert registry.EDGES_CTX == pb.CODEC_ID_EDGES_CTX
    assert registry.COLORMAP_PRED == pb.CODEC_ID_COLORMAP_PRED
    assert registry.POSE_KEYPOINTS == pb.CODEC_ID_POSE_KEYPOINTS


def test_every_proto_field_is_commented() -> None:
    lines = (ROOT / "proto" / "layercast.proto").read_text().splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.endswith(";") and "=" in s and not s.startswith(("syntax", "package", "option", "//")):
            assert "//" in line, f"proto line {i + 1} has no comment: {s}"
