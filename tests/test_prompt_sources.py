"""Prompts for images that carry none (prompts file, sidecar, captioner), and the prompt of every generator
format readable from the CLI (`inspect`, `decode --layer semantic`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from layercast.cli import main
from layercast.common.errors import InputError
from layercast.common.types import Prompt
from layercast.sender.prompt_source import load_prompts, parse_prompt_text, read_sidecar
from tests.imaging import scene
from tests.test_extract_prompt import A1111, COMFY_DEFAULT, XMP_PLAIN

AIGI = Path(__file__).resolve().parents[2] / "shared" / "data" / "aigi"


def _bare_png(path: Path, seed: int = 0) -> Path:
    Image.fromarray(scene(seed=seed) if seed else scene()).save(path)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> tuple[dict, str]:
    assert main([*argv, "--json"]) == code
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


# --- the prompts file and sidecars -------------------------------------------------------------------


def test_prompts_file_formats(tmp_path: Path) -> None:
    plain = tmp_path / "p.csv"
    plain.write_text('a.png,"a red bird, on a branch"\nsub/b.png,a cat,blurry\n\n')
    book = load_prompts(plain)
    assert book.get("a.png") == Prompt("a red bird, on a branch")
    assert book.get(tmp_path / "elsewhere" / "b.png") == Prompt("a cat", "blurry")  # by file name
    assert book.get("c.png") is None

    named = tmp_path / "manifest.csv"
    named.write_text("width,Negative_Prompt,file,prompt\n10,ugly,x.png,  a   dog \n")
    assert load_prompts(named).get("x.png") == Prompt("a dog", "ugly")  # columns by header, spaces folded

    lines = tmp_path / "p.jsonl"
    lines.write_text('{"file": "d.png", "prompt": "a fox"}\n\n{"image": "e.png", "text": "owl", "negative": "x"}\n')
    book = load_prompts(lines)
    assert book.get("d.png") == Prompt("a fox") and book.get("e.png") == Prompt("owl", "x")

    twice = tmp_path / "twice.csv"
    twice.write_text("one/a.png,first\ntwo/a.png,second\n")
    book = load_prompts(twice)
    assert book.get("a.png") is None  # the same file name with two prompts: only a full path decides
    assert book.get(tmp_path / "two" / "a.png") == Prompt("second")  # relative to the prompts file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"file": "a.png"}\n', "p.jsonl:1: needs"),
        ('{"file": "a.png", "prompt": 3}\n', "must be text"),
        ("[1, 2]\n", "not a JSON object"),
        ("a.png,x\nonly-one-column\n", "p.csv:2: expected file,prompt"),
        ("", "no prompts found"),
    ],
)
def test_prompts_file_errors_name_the_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / ("p.jsonl" if text.startswith(("{", "[")) else "p.csv")
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        load_prompts(path)
    with pytest.raises(InputError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.csv")


def test_sidecar_is_what_decode_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_prompt_text("a red fox\nin snow\nnegative: blurry,\nlowres\n") == Prompt(
        "a red fox in snow", "blurry, lowres"
    )
    img = _bare_png(tmp_path / "fox.png")
    assert read_sidecar(img) is None
    (tmp_path / "fox.png.txt").write_text("a red fox in snow\n")
    assert read_sidecar(img) == Prompt("a red fox in snow")
    # decode --layer semantic writes a sidecar the encoder reads back
    lcs = tmp_path / "fox.lcs"
    doc, _ = _run(capsys, "encode", str(img), "-o", str(lcs), "--negative", "blurry")
    assert doc["prompt_source"] == "sidecar"
    _run(capsys, "decode", str(lcs), "--layer", "semantic", "-o", str(tmp_path / "fox.txt"))
    (tmp_path / "fox.png.txt").unlink()
    assert read_sidecar(img) == Prompt("a red fox in snow", "blurry")
    doc, _ = _run(capsys, "encode", str(img), "-o", str(lcs), "--no-sidecars")
    assert doc["prompt_source"] == "none"


def test_an_empty_semantic_layer_is_never_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _bare_png(tmp_path / "bare.png")
    doc, err = _run(capsys, "encode", str(img), "-o", str(tmp_path / "bare.lcs"))
    assert doc["prompt_source"] == "none" and "semantic layer is empty" in doc["warnings"][0]
    assert err.startswith("layercast: warning: bare.png: no prompt")
    assert main(["encode", str(img), "-o", str(tmp_path / "b.lcs"), "--prompt", "a scene"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_order_of_prompt_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--prompt, then the prompts file, then the sidecar, then the image's metadata."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", A1111)
    tagged = tmp_path / "tagged.png"
    Image.fromarray(scene()).save(tagged, pnginfo=meta)
    book = tmp_path / "p.csv"
    book.write_text("tagged.png,from the book,book negative\n")
    (tmp_path / "tagged.txt").write_text("from the sidecar")
    out = str(tmp_path / "t.lcs")
    big = ["--max-bytes", "4000"]  # nothing cut: the whole prompt shows which source won
    doc, _ = _run(capsys, "encode", str(tagged), "-o", out, *big, "--prompts", str(book), "--prompt", "given")
    assert doc["prompt_source"] == "option"
    doc, _ = _run(capsys, "encode", str(tagged), "-o", out, *big, "--prompts", str(book))
    assert doc["prompt_source"] == "prompts-file"
    assert _run(capsys, "inspect", out)[0]["negative_prompt"] == "book negative"
    doc, _ = _run(capsys, "encode", str(tagged), "-o", out, *big)
    assert doc["prompt_source"] == "sidecar" and _run(capsys, "inspect", out)[0]["prompt"] == "from the sidecar"
    doc, _ = _run(capsys, "encode", str(tagged), "-o", out, *big, "--no-sidecars")
    assert doc["prompt_source"] == "metadata"
    assert _run(capsys, "inspect", out)[0]["seed"] == 3456789012  # the metadata's seed travels in every case


@pytest.mark.skipif(not AIGI.is_dir(), reason="../shared/data/aigi not present")
def test_the_shared_manifest_is_a_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The 89 shared images carry no metadata; their manifest.csv gives each its prompt."""
    with open(AIGI / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    doc, err = _run(capsys, "encode", str(AIGI), "-o", str(tmp_path / "out"), "--prompts", str(AIGI / "manifest.csv"))
    assert len(doc["images"]) == len(rows) and not doc["failed"] and "warning" not in err
    assert {i["prompt_source"] for i in doc["images"]} == {"prompts-file"}
    want = {r["file"]: r["prompt"] for r in rows}
    for image in doc["images"][:10]:
        shown, _ = _run(capsys, "inspect", image["output"])
        assert shown["prompt"] == want[Path(image["input"]).name]


# --- captioning ----------------------------------------------------------------------------------------


def test_caption_from_local_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    from layercast.sender.caption import load_captioner
    from layercast.sender.image_io import load_image
    from tests.test_neural_extractors import save_tiny_blip

    blip = save_tiny_blip(tmp_path / "blip")
    img = _bare_png(tmp_path / "bare.png")
    doc, err = _run(capsys, "encode", str(img), "-o", str(tmp_path / "c.lcs"), "--caption", str(blip))
    expected = load_captioner(blip, device="cpu")(load_image(img).rgb)
    assert doc["prompt_source"] == "caption" and not doc["warnings"] and "layercast: warning" not in err
    assert _run(capsys, "inspect", str(tmp_path / "c.lcs"))[0]["prompt"] == expected
    # a prompt from anywhere else wins: the captioner runs only for images without one
    doc, _ = _run(capsys, "encode", str(img), "-o", str(tmp_path / "d.lcs"), "--caption", str(blip), "--prompt", "x")
    assert doc["prompt_source"] == "option"


def test_caption_without_weights_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _bare_png(tmp_path / "bare.png")
    doc, err = _run(
        capsys, "encode", str(img), "-o", str(tmp_path / "c.lcs"), "--caption", str(tmp_path / "no"), code=1
    )
    assert doc["error"] == "ModelError" and "captioning model" in doc["message"]
    assert err.count("\n") == 1 and err.startswith("layercast: error:") and "Traceback" not in err


# --- every generator format, read back from the CLI -------------------------------------------------------


def _generator_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """One image file per metadata format the extractor reads, with the prompt it must yield."""
    rgb = scene()
    out: dict[str, tuple[Path, str]] = {}

    def png(name: str, text: dict[str, str], prompt: str) -> None:
        meta = PngImagePlugin.PngInfo()
        for k, v in text.items():
            meta.add_text(k, v)
        Image.fromarray(rgb).save(folder / name, pnginfo=meta)
        out[name] = (folder / name, prompt)

    a1111_prompt = A1111.split("\nNegative prompt:")[0]
    png("a1111.png", {"parameters": A1111}, a1111_prompt)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode("utf-16-be")
    Image.fromarray(rgb).save(folder / "a1111.jpg", exif=exif)
    out["a1111.jpg"] = (folder / "a1111.jpg", a1111_prompt)
    comfy = "beautiful scenery nature glass bottle landscape, purple galaxy bottle,"
    png("comfyui.png", {"prompt": json.dumps(COMFY_DEFAULT)}, comfy)
    cabin = "a cozy cabin in the woods, winter"
    invoke = {"positive_prompt": cabin, "negative_prompt": "people", "seed": 7}
    png("invokeai.png", {"invokeai_metadata": json.dumps(invoke)}, cabin)
    girl = "1girl, solo, silver hair, night sky, stars"
    nai = {"prompt": girl, "uc": "lowres", "seed": 3, "steps": 28}
    png("novelai.png", {"Software": "NovelAI", "Comment": json.dumps(nai), "Description": girl}, girl)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", xmp=XMP_PLAIN.encode())
    (folder / "xmp.webp").write_bytes(buf.getvalue())
    out["xmp.webp"] = (folder / "xmp.webp", "a koi pond in autumn & maple leaves")
    return out


def test_inspect_and_decode_show_the_prompt_of_every_generator_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _generator_files(tmp_path)
    for name, (path, prompt) in files.items():
        lcs = tmp_path / f"{name}.lcs"
        doc, _ = _run(capsys, "encode", str(path), "-o", str(lcs), "--max-bytes", "4000")
        assert doc["prompt_source"] == "metadata", name
        shown, _ = _run(capsys, "inspect", str(lcs))
        assert shown["prompt"] == " ".join(prompt.split()) or shown["prompt"] == prompt, name
        assert main(["inspect", str(lcs)]) == 0
        assert f"prompt:   {shown['prompt']}" in capsys.readouterr().out
        txt = tmp_path / f"{name}.txt"
        _run(capsys, "decode", str(lcs), "--layer", "semantic", "-o", str(txt))
        assert txt.read_text(encoding="utf-8").startswith(shown["prompt"]), name


def test_inspect_shows_every_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _bare_png(tmp_path / "s.png")
    lcs = tmp_path / "s.lcs"
    _run(capsys, "encode", str(img), "-o", str(lcs), "--prompt", "a scene", "--cells", "6")
    doc, _ = _run(capsys, "inspect", str(lcs))
    content = {x["kind"]: x["content"] for x in doc["layers"]}
    assert content["semantic"] == {"prompt": "a scene", "negative_prompt": ""}
    assert content["structure"]["edge_source"] == "canny" and content["structure"]["edge_pixels"] > 0
    cols, rows = (int(v) for v in content["texture"]["grid"].split("x"))
    assert (
        cols == 6 and len(content["texture"]["cells"]) == rows and all(len(r) == 6 for r in content["texture"]["cells"])
    )
    assert main(["inspect", str(lcs)]) == 0
    text = capsys.readouterr().out
    assert f"edge map {content['structure']['edge_map']} (canny)" in text
    assert f"colormap {content['texture']['grid']} cells:" in text and content["texture"]["cells"][0][0] in text


def test_folder_encode_reads_each_sidecar(tmp_path: Path) -> None:
    """A folder of images with sidecars: each image goes out with its own prompt."""
    src = tmp_path / "in"
    src.mkdir()
    for i, words in enumerate(["a red house", "a green tree"]):
        _bare_png(src / f"{i}.png", seed=i + 1)
        (src / f"{i}.txt").write_text(words)
    assert main(["encode", str(src), "-o", str(tmp_path / "out")]) == 0
    from layercast import open as lc_open

    assert [lc_open(tmp_path / "out" / f"{i}.lcs").prompt for i in range(2)] == ["a red house", "a green tree"]
