"""Semantic extractor: prompts and generation parameters from A1111, ComfyUI, InvokeAI, NovelAI, EXIF, XMP."""

from __future__ import annotations

import io
import json
import time
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from layercast.common import limits
from layercast.common.types import Prompt
from layercast.sender.extract_prompt import (
    PROMPT_SEPARATOR,
    SOURCES,
    GenerationInfo,
    extract_generation_info,
    parse_a1111,
    parse_comfyui_prompt,
    prompt_for,
    semantic_layer,
)
from layercast.sender.image_io import load_image

# --- A1111 / Forge -----------------------------------------------------------------------------------

A1111 = (
    "masterpiece, best quality, 1girl, (detailed eyes:1.2), <lora:add_detail:0.5>\n"
    "standing in a field of sunflowers, Steps: a word, not a parameter\n"
    "Negative prompt: (worst quality, low quality:1.4), easynegative,\n"
    "bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3456789012, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54, Seed: 1, Steps: 2", '
    'TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def test_a1111_full_infotext() -> None:
    g = extract_generation_info({"parameters": A1111})
    assert g == GenerationInfo(
        prompt="masterpiece, best quality, 1girl, (detailed eyes:1.2), <lora:add_detail:0.5>\n"
        "standing in a field of sunflowers, Steps: a word, not a parameter",
        negative="(worst quality, low quality:1.4), easynegative,\nbad hands",
        seed=3456789012,  # not the "Seed: 1" inside the quoted Lora hashes
        steps=28,
        sampler="DPM++ 2M Karras",
        cfg_scale=6.5,
        width=512,
        height=768,
        model_hash="6ce0161689",
        model_name="v1-5-pruned-emaonly",
        source="a1111",
    )


def test_a1111_variants() -> None:
    no_neg = parse_a1111("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512")
    assert no_neg is not None
    assert (no_neg.prompt, no_neg.negative, no_neg.seed, no_neg.sampler) == ("a cat", "", 123, "Euler a")
    only_prompt = parse_a1111("  just a prompt, with: a colon\n")
    assert only_prompt == GenerationInfo(prompt="just a prompt, with: a colon", source="a1111")
    neg_only = parse_a1111("Negative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 5")
    assert neg_only is not None and (neg_only.prompt, neg_only.negative, neg_only.seed) == ("", "blurry", 5)
    # Dynamic-prompts templates after the parameters line are not prompt text; CRLF line ends.
    tmpl = parse_a1111("a {red|blue} car\r\nSteps: 20, Sampler: Euler, Seed: 9\r\nTemplate: a {red|blue} car")
    assert tmpl is not None and (tmpl.prompt, tmpl.seed) == ("a {red|blue} car", 9)
    odd = parse_a1111("x\nSteps: many, Sampler: Euler, CFG scale: huge, Seed: -1, Size: 0x99999")
    assert odd is not None
    assert (odd.steps, odd.cfg_scale, odd.seed, odd.width, odd.height) == (None, None, None, None, None)
    assert parse_a1111("   \n  ") is None


# --- ComfyUI -----------------------------------------------------------------------------------------

COMFY_DEFAULT: dict[str, Any] = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
        "_meta": {"title": "KSampler"},
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,",
                   "clip": ["4", 1]},
    },
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}  # fmt: skip


def test_comfyui_default_graph() -> None:
    g = extract_generation_info({"prompt": json.dumps(COMFY_DEFAULT)})
    assert g == GenerationInfo(
        prompt="beautiful scenery nature glass bottle landscape, purple galaxy bottle,",
        negative="text, watermark",
        seed=156680208700286,
        steps=20,
        sampler="euler",
        cfg_scale=8.0,
        width=512,
        height=512,
        model_name="v1-5-pruned-emaonly.safetensors",
        source="comfyui",
    )


def test_comfyui_through_lora_controlnet_and_combine() -> None:
    graph: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
        "2": {"class_type": "LoraLoader",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "detail.safetensors",
                         "strength_model": 0.7}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill", "clip": ["2", 1]}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "dramatic sunset sky", "clip": ["2", 1]}},
        "12": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["10", 0], "conditioning_2": ["11", 0]}},
        "13": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres, blurry", "clip": ["2", 1]}},
        "14": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_canny.pth"}},
        "15": {"class_type": "ControlNetApplyAdvanced",
               "inputs": {"positive": ["12", 0], "negative": ["13", 0], "control_net": ["14", 0],
                          "image": ["16", 0], "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
        "16": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "17": {"class_type": "PrimitiveNode-like Seed", "inputs": {"seed": 42}},
        "20": {"class_type": "KSampler",
               "inputs": {"seed": ["17", 0], "steps": 30, "cfg": 6, "sampler_name": "dpmpp_2m",
                          "scheduler": "karras", "denoise": 1, "model": ["2", 0], "positive": ["15", 0],
                          "negative": ["15", 1], "latent_image": ["21", 0]}},
        "21": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 1}},
    }  # fmt: skip
    g = parse_comfyui_prompt(graph)
    assert g is not None
    assert g.prompt == "a castle on a hill\ndramatic sunset sky"
    assert g.negative == "lowres, blurry"  # ControlNetApplyAdvanced output 1 is the negative
    assert (g.seed, g.steps, g.cfg_scale, g.sampler) == (42, 30, 6.0, "dpmpp_2m karras")
    assert (g.width, g.height, g.model_name) == (768, 512, "dreamshaper_8.safetensors")


def test_comfyui_several_prompts_one_per_line_main_prompt_first() -> None:
    """Several prompts of a graph stay apart (PROMPT_SEPARATOR), so a tight budget can drop repeated ones;
    ConditioningConcat's base (`conditioning_to`) comes before what it appends (`conditioning_from`)."""
    graph: dict[str, Any] = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse on a cliff"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "oil painting style"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "(a lighthouse on a cliff:1.2)"}},
        "4": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["3", 0], "width": 256}},
        "5": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["1", 0], "conditioning_2": ["4", 0]}},
        "6": {"class_type": "ConditioningConcat",
              "inputs": {"conditioning_to": ["5", 0], "conditioning_from": ["2", 0]}},
        "7": {"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["1", 0], "seed": 1}},
    }  # fmt: skip
    g = parse_comfyui_prompt(graph)
    assert g is not None
    assert g.prompt.split(PROMPT_SEPARATOR) == [
        "a lighthouse on a cliff",
        "(a lighthouse on a cliff:1.2)",
        "oil painting style",
    ]


def test_comfyui_sdxl_advanced_sampler_and_text_node() -> None:
    graph: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "30": {"class_type": "String Literal", "inputs": {"string": "an astronaut riding a horse"}},
        "6": {"class_type": "CLIPTextEncodeSDXL",
              "inputs": {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024,
                         "target_height": 1024, "text_g": ["30", 0], "text_l": ["30", 0], "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncodeSDXL",
              "inputs": {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024,
                         "target_height": 1024, "text_g": "ugly", "text_l": "deformed", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "10": {"class_type": "KSamplerAdvanced",
               "inputs": {"add_noise": "enable", "noise_seed": 721897303308196, "steps": 25, "cfg": 8,
                          "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0,
                          "end_at_step": 20, "return_with_leftover_noise": "enable", "model": ["4", 0],
                          "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    }  # fmt: skip
    g = extract_generation_info({"prompt": json.dumps(graph)})
    assert g is not None
    assert (g.prompt, g.negative) == ("an astronaut riding a horse", "ugly\ndeformed")
    assert (g.seed, g.steps, g.width, g.height) == (721897303308196, 25, 1024, 1024)


def test_comfyui_flux_sampler_custom_advanced() -> None:
    graph: dict[str, Any] = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in the snow", "clip": ["11", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 219670278747233}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler",
               "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1, "model": ["12", 0]}},
        "27": {"class_type": "EmptySD3LatentImage",
               "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                      "weight_dtype": "default"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors"}},
        "13": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0],
                          "sigmas": ["17", 0], "latent_image": ["27", 0]}},
    }  # fmt: skip
    g = parse_comfyui_prompt(graph)
    assert g == GenerationInfo(
        prompt="a fox in the snow",
        seed=219670278747233,
        steps=20,
        sampler="euler simple",
        width=1024,
        height=768,
        model_name="flux1-dev.safetensors",
        source="comfyui",
    )


@pytest.mark.parametrize(("chain", "found"), [(60, "seed text"), (500, "")])  # walks stop at depth 64
def test_comfyui_cycles_and_diamonds_terminate(chain: int, found: str) -> None:
    graph: dict[str, Any] = {"0": {"class_type": "CLIPTextEncode", "inputs": {"text": "seed text"}}}
    for i in range(1, chain + 1):  # each combine node takes the previous one twice: 2**chain paths
        graph[str(i)] = {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": [str(i - 1), 0], "conditioning_2": [str(i - 1), 0]},
        }
    graph["a"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["b", 0]}}
    graph["b"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["a", 0]}}
    graph["s"] = {"class_type": "KSampler",
                  "inputs": {"positive": [str(chain), 0], "negative": ["a", 0], "seed": 1}}  # fmt: skip
    t = time.perf_counter()
    g = parse_comfyui_prompt(graph)
    assert time.perf_counter() - t < 1.0
    assert g is not None and (g.prompt, g.negative, g.seed) == (found, "", 1)


COMFY_WORKFLOW: dict[str, Any] = {
    "last_node_id": 9, "last_link_id": 9,
    "nodes": [
        {"id": 7, "type": "CLIPTextEncode", "title": "CLIP Text Encode (Negative)",
         "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6], "slot_index": 0}],
         "widgets_values": ["text, watermark"]},
        {"id": 6, "type": "CLIPTextEncode",
         "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4], "slot_index": 0}],
         "widgets_values": ["a watercolor of a lighthouse at dawn"]},
        {"id": 5, "type": "EmptyLatentImage", "inputs": [],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}], "widgets_values": [640, 448, 1]},
        {"id": 4, "type": "CheckpointLoaderSimple",
         "outputs": [{"name": "MODEL", "links": [1]}, {"name": "CLIP", "links": [3, 5]}],
         "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
        {"id": 3, "type": "KSampler",
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                    {"name": "negative", "type": "CONDITIONING", "link": 6},
                    {"name": "latent_image", "type": "LATENT", "link": 2}],
         "widgets_values": [8566257, "randomize", 25, 7.5, "dpmpp_2m", "karras", 1]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
              [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"]],
    "version": 0.4,
}  # fmt: skip


def test_comfyui_workflow_fallback() -> None:
    g = extract_generation_info({"workflow": json.dumps(COMFY_WORKFLOW), "prompt": "{broken"})
    assert g == GenerationInfo(
        prompt="a watercolor of a lighthouse at dawn",
        negative="text, watermark",
        seed=8566257,
        steps=25,
        sampler="dpmpp_2m",
        cfg_scale=7.5,
        width=640,
        height=448,
        model_name="v1-5-pruned-emaonly.safetensors",
        source="comfyui",
    )
    unwired = {"nodes": [n for n in COMFY_WORKFLOW["nodes"] if n["type"] == "CLIPTextEncode"], "links": []}
    g2 = extract_generation_info({"workflow": json.dumps(unwired)})
    assert g2 is not None
    assert (g2.prompt, g2.negative) == ("a watercolor of a lighthouse at dawn", "text, watermark")


def test_comfyui_webp_exif_form() -> None:
    info = {"Make": "prompt:" + json.dumps(COMFY_DEFAULT), "ImageDescription": "workflow:{}"}
    g = extract_generation_info(info)
    assert g is not None and g.source == "comfyui" and g.negative == "text, watermark"


# --- InvokeAI, NovelAI -------------------------------------------------------------------------------


def test_invokeai_metadata() -> None:
    meta = {
        "generation_mode": "txt2img", "positive_prompt": "a cozy cabin in the woods, winter",
        "negative_prompt": "people", "width": 768, "height": 512, "seed": 2771258374, "rand_device": "cpu",
        "cfg_scale": 7.5, "cfg_rescale_multiplier": 0, "steps": 30, "scheduler": "dpmpp_2m_k",
        "model": {"key": "4a5b", "hash": "blake3:9ea4c0c2", "name": "Juggernaut XL v9", "base": "sdxl",
                  "type": "main"},
        "app_version": "4.2.4",
    }  # fmt: skip
    g = extract_generation_info({"invokeai_metadata": json.dumps(meta), "invokeai_graph": "{}"})
    assert g == GenerationInfo(
        prompt="a cozy cabin in the woods, winter",
        negative="people",
        seed=2771258374,
        steps=30,
        sampler="dpmpp_2m_k",
        cfg_scale=7.5,
        width=768,
        height=512,
        model_hash="blake3:9ea4c0c2",
        model_name="Juggernaut XL v9",
        source="invokeai",
    )


def test_invokeai_legacy_sd_metadata_and_dream() -> None:
    legacy = {
        "model": "stable diffusion", "model_weights": "stable-diffusion-1.5",
        "model_hash": "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516",
        "app_id": "invoke-ai/InvokeAI", "app_version": "2.2.5",
        "image": {"prompt": [{"prompt": "a portrait of an old sailor [blurry] [cartoon]", "weight": 1.0}],
                  "steps": 50, "cfg_scale": 7.5, "threshold": 0, "perlin": 0, "height": 512, "width": 512,
                  "seed": 3357757885, "seamless": False, "type": "txt2img", "sampler": "k_lms",
                  "variations": []},
    }  # fmt: skip
    g = extract_generation_info({"sd-metadata": json.dumps(legacy)})
    assert g is not None
    assert (g.prompt, g.negative) == ("a portrait of an old sailor", "blurry, cartoon")
    assert (g.seed, g.steps, g.sampler, g.cfg_scale, g.model_name) == (
        3357757885, 50, "k_lms", 7.5, "stable-diffusion-1.5")  # fmt: skip
    dream = '"a lighthouse, stormy sea [people]" -s 50 -S 42 -W 640 -H 512 -C 7.5 -A k_lms -I x.png -f 0.7'
    d = extract_generation_info({"Dream": dream})
    assert d == GenerationInfo(
        prompt="a lighthouse, stormy sea",
        negative="people",
        seed=42,
        steps=50,
        sampler="k_lms",
        cfg_scale=7.5,
        width=640,
        height=512,
        source="invokeai",
    )
    unbalanced = extract_generation_info({"Dream": '"a cat -s50 -S7'})
    assert unbalanced is not None and (unbalanced.steps, unbalanced.seed) == (50, 7)


def test_novelai() -> None:
    comment = {
        "prompt": "1girl, solo, silver hair, night sky, stars", "steps": 28, "height": 1216, "width": 832,
        "scale": 5.0, "uncond_scale": 0.0, "cfg_rescale": 0.0, "seed": 3946164531, "n_samples": 1,
        "noise_schedule": "karras", "sampler": "k_euler_ancestral", "sm": False, "sm_dyn": False,
        "uc": "lowres, bad anatomy, bad hands, text, error", "request_type": "PromptGenerateRequest",
    }  # fmt: skip
    info = {
        "Title": "AI generated image", "Description": "1girl, solo, silver hair, night sky, stars",
        "Software": "NovelAI", "Source": "NovelAI Diffusion V3 C1E1DE52", "Generation time": "4.2",
        "Comment": json.dumps(comment),
    }  # fmt: skip
    assert extract_generation_info(info) == GenerationInfo(
        prompt="1girl, solo, silver hair, night sky, stars",
        negative="lowres, bad anatomy, bad hands, text, error",
        seed=3946164531,
        steps=28,
        sampler="k_euler_ancestral",
        cfg_scale=5.0,
        width=832,
        height=1216,
        model_name="NovelAI Diffusion V3 C1E1DE52",
        source="novelai",
    )
    v4 = {"v4_prompt": {"caption": {"base_caption": "a red fox"}},
          "v4_negative_prompt": {"caption": {"base_caption": "blurry"}}, "seed": 1}  # fmt: skip
    g = extract_generation_info({"Software": "NovelAI", "Comment": json.dumps(v4)})
    assert g is not None and (g.prompt, g.negative, g.seed) == ("a red fox", "blurry", 1)
    assert extract_generation_info({"Description": "not NovelAI", "Comment": json.dumps(comment)}) is None


# --- EXIF, XMP ---------------------------------------------------------------------------------------

XMP_PLAIN = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">a koi pond in autumn &amp; maple leaves</rdf:li>
</rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def test_exif_and_xmp_text() -> None:
    a1111_exif = extract_generation_info({"UserComment": A1111, "ImageDescription": "SONY DSC"})
    assert a1111_exif is not None and a1111_exif.source == "a1111" and a1111_exif.seed == 3456789012
    plain = extract_generation_info({"UserComment": "a koi pond, watercolor"})
    assert plain == GenerationInfo(prompt="a koi pond, watercolor", source="exif")
    assert extract_generation_info({"ImageDescription": "OLYMPUS DIGITAL CAMERA"}) is None
    assert extract_generation_info({"XPComment": "   "}) is None
    xmp = extract_generation_info({"XMP": XMP_PLAIN})
    assert xmp == GenerationInfo(prompt="a koi pond in autumn & maple leaves", source="xmp")
    xmp_a1111 = XMP_PLAIN.replace("a koi pond in autumn &amp; maple leaves", xml_escape(A1111))
    g = extract_generation_info({"XMP": xmp_a1111})
    assert g is not None and g.source == "a1111" and g.sampler == "DPM++ 2M Karras"
    bomb = '<!DOCTYPE x [<!ENTITY a "aaaa">]>' + XMP_PLAIN.replace("a koi", "&a; koi")
    assert extract_generation_info({"XMP": bomb}) is None
    jpeg_com = extract_generation_info({"comment": A1111})
    assert jpeg_com is not None and jpeg_com.source == "a1111"
    assert extract_generation_info({"comment": "CREATOR: gd-jpeg v1.0"}) is None


def test_format_precedence() -> None:
    info = {"parameters": "from a1111\nSteps: 1, Sampler: Euler, Seed: 1",
            "prompt": json.dumps(COMFY_DEFAULT), "UserComment": "from exif", "XMP": XMP_PLAIN}  # fmt: skip
    order = []
    for key in ("parameters", "prompt", "UserComment", "XMP"):
        g = extract_generation_info(info)
        assert g is not None
        order.append(g.source)
        info.pop(key)
    assert order == ["a1111", "comfyui", "exif", "xmp"]


@pytest.mark.parametrize(
    "info",
    [
        {},
        {"parameters": ""},
        {"prompt": "{not json"},
        {"prompt": "[1, 2, 3]"},
        {"prompt": '{"3": {"class_type": "KSampler", "inputs": {"positive": ["99", 0]}}}'},
        {"workflow": '{"nodes": [{"id": "x"}], "links": [[1]]}'},
        {"invokeai_metadata": "null"},
        {"sd-metadata": '{"image": 5}'},
        {"Dream": ""},
        {"Software": "NovelAI", "Comment": "[]"},
        {"prompt": "[" * 100_000 + "]" * 100_000},
        {"XMP": "<x:xmpmeta><unclosed"},
    ],
)
def test_malformed_metadata_gives_none(info: dict[str, str]) -> None:
    assert extract_generation_info(info) is None


def test_pathological_lines_are_linear() -> None:
    t = time.perf_counter()
    for text in ("a" * 1_000_000, "a:" * 500_000, "k: v, " * 200_000, '"' + "\\x" * 500_000):
        extract_generation_info({"parameters": text, "UserComment": text, "Dream": text[:70_000]})
    assert time.perf_counter() - t < 10.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)
KEYS = ["parameters", "prompt", "workflow", "invokeai_metadata", "sd-metadata", "Dream", "Software",
        "Description", "Comment", "Source", "UserComment", "ImageDescription", "XPComment", "XMP", "comment",
        "Make"]  # fmt: skip
values = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.sampled_from(["NovelAI", A1111, json.dumps(COMFY_DEFAULT), json.dumps(COMFY_WORKFLOW), XMP_PLAIN, "prompt:{"])
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6))
def test_extract_never_raises(info: dict[str, str]) -> None:
    g = extract_generation_info(info)
    if g is not None:
        assert isinstance(g.prompt, str) and g.source in SOURCES
        g.hints().SerializeToString()  # protobuf accepts every string it carries
        prompt = g.to_prompt()
        assert len(prompt.text.encode()) <= limits.MAX_PROMPT_BYTES


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_comfyui_parser_never_raises_on_arbitrary_graphs(graph: dict[str, Any]) -> None:
    graph["k"] = {"class_type": "KSampler", "inputs": {"positive": [next(iter(graph), "k"), 0]}}
    parse_comfyui_prompt(graph)
    workflow = {"nodes": list(graph.values())}
    extract_generation_info({"prompt": json.dumps(graph), "workflow": json.dumps(workflow)})


# --- prompt_for, semantic_layer, end to end ----------------------------------------------------------


def test_prompt_for_override_metadata_and_nothing() -> None:
    info = {"parameters": A1111}
    prompt, gen = prompt_for(info, "my own words")
    assert prompt == Prompt("my own words") and gen is not None and gen.seed == 3456789012
    prompt, gen = prompt_for(info, None)
    assert prompt.text.startswith("masterpiece") and prompt.negative.endswith("bad hands")
    assert prompt_for({}, None) == (Prompt(""), None)
    huge = "word " * 3000
    prompt, _ = prompt_for({"parameters": huge}, None)
    assert len(prompt.text.encode()) <= limits.MAX_PROMPT_BYTES and huge.startswith(prompt.text)


def test_hints() -> None:
    g = extract_generation_info({"parameters": A1111})
    assert g is not None
    h = g.hints()
    assert (h.steps, h.sampler, h.model_hash, h.model_name) == (28, "DPM++ 2M Karras", "6ce0161689",
                                                                "v1-5-pruned-emaonly")  # fmt: skip
    assert h.cfg_scale == pytest.approx(6.5)
    with pytest.raises(ValueError, match="source"):
        GenerationInfo(prompt="x", source="midjourney")


def _png_with(text: dict[str, str], size: tuple[int, int] = (16, 16)) -> bytes:
    meta = PngImagePlugin.PngInfo()
    for k, v in text.items():
        meta.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


def test_semantic_layer_end_to_end_and_captioner() -> None:
    calls: list[tuple[int, ...]] = []

    def captioner(rgb: np.ndarray) -> str:
        calls.append(rgb.shape)
        return "  a plain blue square  "

    tagged = load_image(_png_with({"parameters": A1111}))
    prompt, gen = semantic_layer(tagged, captioner=captioner)
    assert gen is not None and gen.source == "a1111" and prompt.text.startswith("masterpiece") and not calls
    bare = load_image(_png_with({}, (24, 12)))
    assert semantic_layer(bare) == (Prompt(""), None)
    assert semantic_layer(bare, captioner=captioner) == (Prompt("a plain blue square"), None)
    assert calls == [(12, 24, 3)]
    assert semantic_layer(bare, override="given", captioner=captioner) == (Prompt("given"), None)
    assert len(calls) == 1
    neg_only = load_image(_png_with({"parameters": "Negative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 3"}))
    prompt, gen = semantic_layer(neg_only, captioner=captioner)
    assert prompt == Prompt("a plain blue square", "blurry") and gen is not None and gen.seed == 3


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le"])
def test_a1111_jpeg_webp_user_comment_end_to_end(fmt: str, encoding: str) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode(encoding)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, fmt, exif=exif)
    g = extract_generation_info(load_image(buf.getvalue()).info)
    assert g is not None and g.source == "a1111" and g.seed == 3456789012 and g.negative.endswith("bad hands")


def test_xmp_in_webp_end_to_end() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", xmp=XMP_PLAIN.encode())
    g = extract_generation_info(load_image(buf.getvalue()).info)
    assert g == GenerationInfo(prompt="a koi pond in autumn & maple leaves", source="xmp")
