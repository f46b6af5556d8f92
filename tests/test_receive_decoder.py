"""`layercast receive --decoder sd` refuses to start when its models cannot load, unless `--fallback preview`
says to run the CPU preview decoder; with the models present it decodes with Stable Diffusion.

Namespaces come from a real parser built with the CLI's own option helpers (`add_decoder_options` and
`add_fallback_option`, as the receive parser uses them); the SD models are the tiny offline ones of
`tiny_models`, saved here and loaded back through the project's loading code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from layercast.cli import main
from layercast.cli_options import add_decoder_options, add_fallback_option, make_receive_decoder
from layercast.common.errors import InputError, LayercastError, ModelError


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="layercast receive")
    add_decoder_options(p)
    add_fallback_option(p)
    return p.parse_args(list(argv))


def test_fallback_option_defaults_to_none_and_takes_only_known_values() -> None:
    assert parse().fallback == "none"
    assert parse("--fallback", "preview").fallback == "preview"
    with pytest.raises(SystemExit):
        parse("--fallback", "sometimes")


def test_preview_decoder_needs_no_models() -> None:
    decoder, warning = make_receive_decoder(parse())
    assert decoder.name == "preview" and warning is None


def test_missing_model_refuses_with_one_line_naming_it_and_the_fallback(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError) as err:
        make_receive_decoder(parse("--decoder", "sd", "--model", str(missing)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("receive refuses to start")
    assert str(missing) in message and "model_index.json" in message  # what is missing and what to put there
    assert "--fallback preview" in message
    # main() turns it into one error line and exit status 1 (the same LayercastError path every command uses)
    assert isinstance(err.value, LayercastError)


def test_missing_model_named_in_an_sd_config_names_the_config(tmp_path: Path) -> None:
    config = tmp_path / "sd.toml"
    config.write_text(f'[sd]\nmodel = "{tmp_path / "models" / "sd15"}"\n')
    with pytest.raises(
        ModelError,
        match=r"refuses to start: --decoder sd cannot load the models of .*sd\.toml: .*sd15.*--fallback preview",
    ):
        make_receive_decoder(parse("--decoder", "sd", "--sd-config", str(config)))


def test_missing_controlnet_refuses_too(tmp_path: Path) -> None:
    base = tmp_path / "sd"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    args = parse("--decoder", "sd", "--model", str(base), "--controlnet", f"canny={tmp_path / 'cn-canny'}")
    with pytest.raises(ModelError, match=r"ControlNet 'canny' not found at .*cn-canny.*--fallback preview"):
        make_receive_decoder(args)


def test_bad_sd_config_is_an_input_error_even_with_fallback(tmp_path: Path) -> None:
    config = tmp_path / "sd.toml"
    config.write_text('[sd]\nmodle = "typo"\n')
    with pytest.raises(InputError, match="unknown SD config key 'modle'"):
        make_receive_decoder(parse("--decoder", "sd", "--sd-config", str(config), "--fallback", "preview"))


def test_fallback_preview_returns_the_preview_decoder_and_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    decoder, warning = make_receive_decoder(parse("--decoder", "sd", "--model", str(missing), "--fallback", "preview"))
    assert decoder.name == "preview"
    assert warning is not None and "\n" not in warning
    assert str(missing) in warning and "--fallback preview" in warning and "preview decoder" in warning


def test_decode_command_keeps_its_friendly_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from layercast.common.types import Prompt
    from layercast.sender.encode import EncodeOptions, encode_image
    from tests.imaging import scene

    lcs = tmp_path / "x.lcs"
    lcs.write_bytes(encode_image(scene(64, 64, seed=1), Prompt("a house"), options=EncodeOptions(max_bytes=300)).data)
    argv = ["decode", str(lcs), "-o", str(tmp_path / "x.png"), "--decoder", "sd", "--model", str(tmp_path / "nope")]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["decoder"] == "preview" and "warning" in captured.err


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch", reason="the gen extra (torch, diffusers) is not installed")
    import tiny_models

    root = tmp_path_factory.mktemp("receive-sd")
    sd = tiny_models.save_tiny_sd(root / "sd")
    canny = tiny_models.save_tiny_controlnet(root / "cn-canny", seed=1)
    config = root / "sd.toml"
    config.write_text(f'[sd]\nmodel = "{sd}"\ncontrolnets = {{ canny = "{canny}" }}\nsteps = 2\ndevice = "cpu"\n')
    return {"sd": sd, "canny": canny, "config": config}


def test_tiny_models_load_the_sd_decoder(tiny_sd: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    for fallback in ("none", "preview"):
        decoder, warning = make_receive_decoder(
            parse("--decoder", "sd", "--sd-config", str(tiny_sd["config"]), "--fallback", fallback)
        )
        assert decoder.name == "sd" and warning is None
        assert set(decoder.controlnets) == {"canny"} and decoder.config.effective_steps == 2
    # --model on the command line overrides the config file, and the tiny base model alone is enough
    decoder, warning = make_receive_decoder(parse("--decoder", "sd", "--model", str(tiny_sd["sd"]), "--device", "cpu"))
    assert decoder.name == "sd" and warning is None and decoder.controlnets == {}


def test_an_incomplete_model_folder_refuses_after_loading(tmp_path: Path) -> None:
    """The folder exists and has model_index.json, but the export is broken: the loader's error, one line."""
    pytest.importorskip("diffusers", reason="the gen extra (torch, diffusers) is not installed")
    broken = tmp_path / "broken-sd"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ModelError) as err:
        make_receive_decoder(parse("--decoder", "sd", "--model", str(broken), "--device", "cpu"))
    message = str(err.value)
    assert "\n" not in message and "refuses to start" in message and str(broken) in message
    assert "--fallback preview" in message
