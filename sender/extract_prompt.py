"""Semantic extractor: the prompt and generation parameters from an AI-generated image's own metadata.

Pure: a text-metadata mapping (``LoadedImage.info``, see :mod:`layercast.sender.image_io` for where each
key comes from) in, a :class:`GenerationInfo` out. Formats, tried in this order:

1. A1111 / Forge: the ``parameters`` PNG text (prompt, ``Negative prompt:``, and a ``Steps: .., Sampler: ..``
   line).
2. ComfyUI: the ``prompt`` API graph (sampler node -> positive/negative links -> text encoders), else the
   ``workflow`` UI graph (text-encoder ``widgets_values``); also ComfyUI WebP's ``prompt:{json}`` EXIF text.
3. InvokeAI: ``invokeai_metadata`` JSON (3.x+), legacy ``sd-metadata`` JSON (2.x), ``Dream`` command line.
4. NovelAI: ``Software`` starting "NovelAI", ``Description`` (prompt), ``Comment`` JSON (uc, seed, ...).
5. EXIF (UserComment, ImageDescription, XPComment), XMP (dc:description, exif:UserComment, ...) and the
   JPEG comment, in that order: A1111 text found there is parsed as A1111; otherwise plain EXIF/XMP text is
   taken as the prompt.

``GenerationInfo.source`` names the *format* recognised ("a1111", "comfyui", "invokeai", "novelai"), or
"exif" / "xmp" for plain free text found there. Malformed input gives None or a best effort, never an
exception.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from layercast.common import limits
from layercast.common.types import Prompt
from layercast.proto import pb

if TYPE_CHECKING:
    import numpy as np

    from layercast.sender.image_io import LoadedImage

SOURCES = ("a1111", "comfyui", "invokeai", "novelai", "exif", "xmp")
"""Values of GenerationInfo.source."""

PROMPT_SEPARATOR = "\n"
"""Joins the several prompts a graph feeds one conditioning (ComfyUI combine/concat nodes, SDXL text_g/text_l,
several encoders), one per line, so the encoder can tell them apart when a budget forces it to drop repeated
ones (see :mod:`layercast.sender.prompt_fit`). A prompt's own lines (A1111 multi-line prompts) stay lines."""

MAX_METADATA_CHARS = 8_000_000
"""Metadata values longer than this are ignored (Pillow already caps a PNG text chunk at 1 MB)."""

_MAX_DEPTH = 64  # graph-walk bound (ComfyUI links can form cycles in malformed files)
_MAX_SEED = 2**64 - 1  # ImageHeader.seed is uint64
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError)


@dataclass(frozen=True, kw_only=True)
class GenerationInfo:
    """What the image's metadata says about how it was generated. Unknown values are None or ""."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    sampler: str = ""
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    model_hash: str = ""
    model_name: str = ""
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"GenerationInfo.source must be one of {SOURCES}, got {self.source!r}")

    def to_prompt(self) -> Prompt:
        """The semantic layer value, each text cut to limits.MAX_PROMPT_BYTES at a character boundary."""
        return Prompt(_fit(self.prompt), _fit(self.negative))

    def hints(self) -> pb.DecoderHints:
        """The generation parameters as the bitstream's DecoderHints (0 / "" = unknown)."""
        return pb.DecoderHints(
            steps=self.steps or 0,
            cfg_scale=self.cfg_scale or 0.0,
            sampler=_clean(self.sampler),
            model_hash=_clean(self.model_hash),
            model_name=_clean(self.model_name),
        )


def extract_generation_info(info: Mapping[str, str]) -> GenerationInfo | None:
    """The generation info found in `info` (image text metadata), or None. Never raises on bad values."""
    meta = {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str)}
    meta = {k: v for k, v in meta.items() if len(v) <= MAX_METADATA_CHARS}
    for parser in _PARSERS:
        try:
            result = parser(meta)
        except _PARSE_ERRORS:
            result = None
        if result is not None and _useful(result):
            return result
    return None


def _useful(g: GenerationInfo) -> bool:
    """A result that says something (a prompt or any parameter), not an empty shell of a format."""
    return bool(g.prompt or g.negative or g.sampler or g.model_name or g.model_hash) or any(
        v is not None for v in (g.seed, g.steps, g.cfg_scale, g.width, g.height)
    )


def prompt_for(info: Mapping[str, str], override: str | None = None) -> tuple[Prompt, GenerationInfo | None]:
    """The semantic layer's Prompt: `override` (``--prompt``) wins, else the metadata's, else Prompt("").

    The GenerationInfo is returned even with an override, so its seed and parameters still travel. An
    override is used as given (the prompt codec rejects one over limits.MAX_PROMPT_BYTES with InputError);
    metadata texts are cut to that size.
    """
    gen = extract_generation_info(info)
    if override is not None:
        return Prompt(override), gen
    if gen is not None:
        return gen.to_prompt(), gen
    return Prompt(""), gen


def semantic_layer(
    image: LoadedImage,
    override: str | None = None,
    captioner: Callable[[np.ndarray], str] | None = None,
) -> tuple[Prompt, GenerationInfo | None]:
    """The semantic layer of an image: like :func:`prompt_for`, then `captioner(image.rgb)` when no prompt.

    `captioner` is the hook for an image-captioning model (the generative decoder issue provides one).
    """
    prompt, gen = prompt_for(image.info, override)
    if override is None and not prompt.text and captioner is not None:
        prompt = Prompt(_fit(captioner(image.rgb).strip()), prompt.negative)
    return prompt, gen


# --- helpers -----------------------------------------------------------------------------------------


def _fit(text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")[: limits.MAX_PROMPT_BYTES]
    return data.decode("utf-8", "ignore")


def _int(value: object, lo: int, hi: int) -> int | None:
    """An integer in [lo, hi] from an int, integral float or numeric string; else None."""
    if isinstance(value, bool):
        return None
    n: int | None = None
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        n = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[+-]?\d{1,30}", s):
            n = int(s)
        elif re.fullmatch(r"[+-]?\d{1,30}\.0*", s):
            n = int(s.split(".")[0])
    return n if n is not None and lo <= n <= hi else None


_NUMBER = re.compile(r"\s*[+-]?(\d{1,20}(\.\d*)?|\.\d+)\s*")


def _float(value: object, lo: float = 0.0, hi: float = 100.0) -> float | None:
    if isinstance(value, bool):
        return None
    numeric = isinstance(value, int | float)
    if not numeric and not (isinstance(value, str) and _NUMBER.fullmatch(value)):
        return None
    f = float(value)  # type: ignore[arg-type]
    return f if math.isfinite(f) and lo <= f <= hi else None


def _str(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _seed(v: object) -> int | None:
    return _int(v, 0, _MAX_SEED)


def _steps(v: object) -> int | None:
    return _int(v, 1, 10_000)


def _side(v: object) -> int | None:
    return _int(v, 1, limits.MAX_IMAGE_SIDE)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _from_fields(
    fields: Mapping[str, Any],
    *,
    prompt: str,
    negative: str,
    source: str,
    sampler: str = "sampler",
    cfg: str = "cfg_scale",
    model_hash: str = "",
    model_name: str = "",
) -> GenerationInfo:
    """The generation info of a flat set of fields (InvokeAI and NovelAI JSON, the Dream options): seed,
    steps, width and height under those names, the sampler and the CFG scale under the keys `sampler`
    and `cfg` (their names differ between tools), each checked as every parser checks it."""
    return GenerationInfo(
        prompt=prompt,
        negative=negative,
        seed=_seed(fields.get("seed")),
        steps=_steps(fields.get("steps")),
        sampler=_str(fields.get(sampler)),
        cfg_scale=_float(fields.get(cfg)),
        width=_side(fields.get("width")),
        height=_side(fields.get("height")),
        model_hash=model_hash,
        model_name=model_name,
        source=source,
    )


def _unique(texts: list[str]) -> list[str]:
    out: list[str] = []
    for t in texts:
        t = t.strip()
        if t and t not in out:
            out.append(t)
    return out


def _join(texts: list[str]) -> str:
    return PROMPT_SEPARATOR.join(_unique(texts))


def _clean(text: str) -> str:
    """`text` without lone surrogates (JSON can carry them; protobuf strings cannot)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "ignore")


# --- A1111 / Forge -----------------------------------------------------------------------------------

_KEY = re.compile(r"\w[\w \-/+.]{0,63}")
_QUOTED = re.compile(r'"(?:\\.|[^\\"])*"')
_PARAM_KEYS = frozenset({"Steps", "Sampler", "CFG scale", "Seed"})
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def _pairs(line: str) -> list[tuple[str, str]]:
    """``Key: value, Key: "quoted, value"`` pairs of a line, in one linear pass (no regex backtracking)."""
    out: list[tuple[str, str]] = []
    i, n, colon = 0, len(line), -1
    while i < n:
        if colon < i:
            colon = line.find(":", i)
            if colon < 0:
                break
        comma = line.find(",", i, colon)
        if comma >= 0:  # no key before the next comma: skip the junk
            i = comma + 1
            continue
        key = line[i:colon].strip()
        j = colon + 1
        while j < n and line[j] == " ":
            j += 1
        quoted = _QUOTED.match(line, j) if j < n and line[j] == '"' else None
        if quoted is not None:
            value, end = quoted.group(), quoted.end()
            end = line.find(",", end)
        else:
            end = line.find(",", j)
            value = line[j : end if end >= 0 else n]
        if _KEY.fullmatch(key):
            out.append((key, value.strip()))
        i = n if end < 0 else end + 1
    return out


def _params(line: str) -> dict[str, str] | None:
    """The key/value pairs of an A1111 parameters line, or None when `line` is not one."""
    pairs = _pairs(line)
    if len(pairs) < 3 or not _PARAM_KEYS.intersection(k for k, _ in pairs):
        return None
    out: dict[str, str] = {}
    for key, value in pairs:
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            decoded = _json(value)
            value = decoded if isinstance(decoded, str) else value[1:-1]
        out.setdefault(key, value)
    return out


def parse_a1111(text: str, source: str = "a1111") -> GenerationInfo | None:
    """Parse A1111/Forge infotext. Without a parameters line the whole text is the prompt (`source`)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    params: dict[str, str] | None = None
    for i in range(len(lines) - 1, -1, -1):
        params = _params(lines[i])
        if params is not None:
            lines = lines[:i]  # lines after it (extension templates) are not prompt text
            break
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    ptext, ntext = "\n".join(prompt).strip(), "\n".join(negative).strip()
    if params is None:
        return GenerationInfo(prompt=ptext, negative=ntext, source=source) if ptext else None
    size = _SIZE.match(params.get("Size", ""))
    sampler = params.get("Sampler", "")
    schedule = params.get("Schedule type", "")
    if sampler and schedule and schedule.lower() != "automatic" and schedule not in sampler:
        sampler = f"{sampler} {schedule}"
    return GenerationInfo(
        prompt=ptext,
        negative=ntext,
        seed=_seed(params.get("Seed")),
        steps=_steps(params.get("Steps")),
        sampler=sampler,
        cfg_scale=_float(params.get("CFG scale")),
        width=_side(size.group(1)) if size else None,
        height=_side(size.group(2)) if size else None,
        model_hash=params.get("Model hash", ""),
        model_name=params.get("Model", ""),
        source="a1111",
    )


def _from_a1111(meta: dict[str, str]) -> GenerationInfo | None:
    text = meta.get("parameters")
    return parse_a1111(text) if text else None


# --- ComfyUI API graph ("prompt") --------------------------------------------------------------------

_TEXT_KEYS = ("text", "text_g", "text_l", "clip_l", "clip_g", "t5xxl", "prompt")
_STRING_KEYS = ("text", "string", "value", "prompt", "text_a", "text_b", "text_c", "text_d")
_MODEL_KEYS = ("ckpt_name", "unet_name", "model_name", "model_path", "base_ckpt_name")


def _cond_order(name: str) -> tuple[bool, str]:
    """Order of a node's conditioning inputs: by name, but ConditioningConcat's appended `conditioning_from`
    after its base `conditioning_to`, so a graph's main prompt comes first (a budget cuts from the end)."""
    return (name == "conditioning_from", name)


def _is_link(v: object) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str | int) and isinstance(v[1], int)


class _Api:
    """A ComfyUI API-format graph: {node_id: {"class_type": str, "inputs": {name: value | [id, slot]}}}."""

    def __init__(self, graph: dict[str, Any]) -> None:
        self.nodes = {
            str(k): v
            for k, v in graph.items()
            if isinstance(v, dict) and isinstance(v.get("class_type"), str) and isinstance(v.get("inputs"), dict)
        }
        # Memo per (node, slot): a DAG of combine nodes is walked once per node, not once per path;
        # an entry is [] while being computed, which also cuts cycles.
        self._texts: dict[tuple[str, int], list[str]] = {}
        self._strings: dict[str, list[str]] = {}

    def node(self, link: object) -> tuple[dict[str, Any], dict[str, Any], int] | None:
        """(node, inputs, output slot) a link points at."""
        if not _is_link(link):
            return None
        assert isinstance(link, list)
        node = self.nodes.get(str(link[0]))
        return (node, node["inputs"], int(link[1])) if node is not None else None

    def samplers(self) -> list[dict[str, Any]]:
        def key(nid: str) -> tuple[int, str]:
            return (int(nid), "") if nid.isdigit() else (1 << 62, nid)

        found = []
        for nid in sorted(self.nodes, key=key):
            node = self.nodes[nid]
            ins = node["inputs"]
            if "sampler" in node["class_type"].lower() and (
                _is_link(ins.get("positive")) or _is_link(ins.get("guider"))
            ):
                found.append(node)
        return found

    def scalar(self, value: object, keys: tuple[str, ...], depth: int = 0) -> object:
        """A widget value, following a link to a primitive/seed node that holds one of `keys`."""
        if not _is_link(value):
            return value
        hit = self.node(value)
        if hit is None or depth > _MAX_DEPTH:
            return None
        _, ins, _ = hit
        for k in keys:
            if k in ins:
                return self.scalar(ins[k], keys, depth + 1)
        return None

    def string(self, value: object, depth: int = 0) -> list[str]:
        """Text from a string widget, or a link to a text node (concatenations followed)."""
        if isinstance(value, str):
            return [value]
        hit = self.node(value)
        if hit is None or depth > _MAX_DEPTH:
            return []
        assert isinstance(value, list)
        key = str(value[0])
        if key not in self._strings:
            self._strings[key] = []
            _, ins, _ = hit
            out: list[str] = []
            for k in _STRING_KEYS:
                if k in ins:
                    out += self.string(ins[k], depth + 1)
            self._strings[key] = _unique(out)
        return self._strings[key]

    def texts(self, link: object, depth: int = 0) -> list[str]:
        """Prompt texts feeding a conditioning link, through combine / ControlNet / guidance nodes."""
        hit = self.node(link)
        if hit is None or depth > _MAX_DEPTH:
            return []
        node, ins, slot = hit
        assert isinstance(link, list)
        key = (str(link[0]), slot)
        if key not in self._texts:
            self._texts[key] = []
            self._texts[key] = _unique(self._walk_texts(node, ins, slot, depth))
        return self._texts[key]

    def _walk_texts(self, node: dict[str, Any], ins: dict[str, Any], slot: int, depth: int) -> list[str]:
        ctype = node["class_type"]
        if ctype == "ConditioningZeroOut":
            return []
        text_inputs = [k for k in _TEXT_KEYS if k in ins and (isinstance(ins[k], str) or _is_link(ins[k]))]
        if "TextEncode" in ctype or (text_inputs and not any("cond" in k for k in ins)):
            out: list[str] = []
            for k in text_inputs:
                out += self.string(ins[k], depth + 1)
            return out
        if _is_link(ins.get("positive")) and _is_link(ins.get("negative")):  # e.g. ControlNetApplyAdvanced
            return self.texts(ins["positive" if slot == 0 else "negative"], depth + 1)
        out = []
        for k in sorted(ins, key=_cond_order):
            if "cond" in k.lower() and _is_link(ins[k]):
                out += self.texts(ins[k], depth + 1)
        return out

    def follow(self, link: object, want: tuple[str, ...], through: tuple[str, ...]) -> dict[str, Any] | None:
        """The first node along `through` inputs (from `link`) holding any input in `want`."""
        for _ in range(_MAX_DEPTH):
            hit = self.node(link)
            if hit is None:
                return None
            _, ins, _ = hit
            if any(k in ins and not _is_link(ins[k]) for k in want):
                return ins
            link = next((ins[k] for k in through if _is_link(ins.get(k))), None)
        return None


def parse_comfyui_prompt(graph: object) -> GenerationInfo | None:
    """Parse a ComfyUI API graph (the ``prompt`` PNG text)."""
    if not isinstance(graph, dict):
        return None
    api = _Api(graph)
    samplers = api.samplers()
    if not samplers:
        return None
    results = [_comfy_sampler(api, s["inputs"]) for s in samplers]
    return next((r for r in results if r.prompt), results[0])


def _comfy_sampler(api: _Api, ins: dict[str, Any]) -> GenerationInfo:
    guider = api.node(ins.get("guider"))
    gins = guider[1] if guider is not None else ins
    pos_link = next((gins[k] for k in ("positive", "conditioning", "cond1") if _is_link(gins.get(k))), None)
    positive = _join(api.texts(pos_link))
    negative = _join(api.texts(gins.get("negative")))
    seed = api.scalar(ins.get("seed", ins.get("noise_seed")), ("seed", "noise_seed", "value", "int"))
    if seed is None and (noise := api.node(ins.get("noise"))) is not None:
        seed = api.scalar(noise[1].get("noise_seed"), ("noise_seed", "seed", "value", "int"))
    sched = api.node(ins.get("sigmas"))
    sched_ins = sched[1] if sched is not None else ins
    steps = api.scalar(ins.get("steps", sched_ins.get("steps")), ("steps", "value", "int"))
    select = api.node(ins.get("sampler"))
    sampler = _str(api.scalar((select[1] if select else ins).get("sampler_name"), ("sampler_name", "value")))
    scheduler = _str(api.scalar(sched_ins.get("scheduler", ins.get("scheduler")), ("scheduler", "value")))
    if sampler and scheduler and scheduler != "normal":
        sampler = f"{sampler} {scheduler}"
    latent = api.follow(ins.get("latent_image"), ("width", "height"), ("samples", "latent", "latent_image"))
    model = api.follow(gins.get("model", ins.get("model")), _MODEL_KEYS, ("model",))
    return GenerationInfo(
        prompt=positive,
        negative=negative,
        seed=_seed(seed),
        steps=_steps(steps),
        sampler=sampler,
        cfg_scale=_float(api.scalar(gins.get("cfg"), ("cfg", "value", "float"))),
        width=_side(api.scalar(latent.get("width"), ("width", "value", "int"))) if latent else None,
        height=_side(api.scalar(latent.get("height"), ("height", "value", "int"))) if latent else None,
        model_name=next((_str(model[k]) for k in _MODEL_KEYS if model and _str(model.get(k))), ""),
        source="comfyui",
    )


# --- ComfyUI UI workflow ("workflow") ----------------------------------------------------------------


def parse_comfyui_workflow(wf: object) -> GenerationInfo | None:
    """Parse a ComfyUI UI workflow (the ``workflow`` PNG text): text-encoder ``widgets_values``."""
    if not isinstance(wf, dict) or not isinstance(wf.get("nodes"), list):
        return None
    nodes: dict[int, dict[str, Any]] = {}
    for n in wf["nodes"]:
        if isinstance(n, dict) and isinstance(n.get("id"), int) and isinstance(n.get("type"), str):
            nodes[n["id"]] = n
    links: dict[int, tuple[int, int]] = {}
    for link in wf.get("links") or []:
        if isinstance(link, list) and len(link) >= 5 and all(isinstance(x, int) for x in link[:5]):
            links[link[0]] = (link[1], link[2])
        elif isinstance(link, dict) and isinstance(link.get("id"), int):
            o, s = link.get("origin_id"), link.get("origin_slot")
            if isinstance(o, int) and isinstance(s, int):
                links[link["id"]] = (o, s)

    def inputs(node: dict[str, Any]) -> dict[str, int]:
        out = {}
        for i in node.get("inputs") or []:
            if isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("link"), int):
                out[i["name"]] = i["link"]
        return out

    def origin(link_id: int | None) -> tuple[dict[str, Any], int] | None:
        hit = links.get(link_id) if link_id is not None else None
        if hit is None or hit[0] not in nodes:
            return None
        return nodes[hit[0]], hit[1]

    def widgets(node: dict[str, Any]) -> list[Any]:
        w = node.get("widgets_values")
        return w if isinstance(w, list) else []

    memo: dict[tuple[int, int], list[str]] = {}

    def texts(link_id: int | None, depth: int = 0) -> list[str]:
        hit = origin(link_id)
        if hit is None or depth > _MAX_DEPTH:
            return []
        key = (int(hit[0]["id"]), hit[1])
        if key not in memo:
            memo[key] = []  # cuts cycles
            memo[key] = _unique(node_texts(hit[0], hit[1], depth))
        return memo[key]

    def node_texts(node: dict[str, Any], slot: int, depth: int) -> list[str]:
        ins = inputs(node)
        if "TextEncode" in node["type"]:
            own = [w for w in widgets(node) if isinstance(w, str)]
            for k in _TEXT_KEYS:  # a text widget converted to an input, fed by a primitive/text node
                src = origin(ins.get(k))
                if src is not None:
                    own += [w for w in widgets(src[0]) if isinstance(w, str)][:1]
            return own
        if node["type"] == "ConditioningZeroOut":
            return []
        if "positive" in ins and "negative" in ins:
            return texts(ins["positive" if slot == 0 else "negative"], depth + 1)
        out: list[str] = []
        for k in sorted(ins, key=_cond_order):
            if "cond" in k.lower():
                out += texts(ins[k], depth + 1)
        return out

    samplers = [n for _, n in sorted(nodes.items()) if "sampler" in n["type"].lower() and "positive" in inputs(n)]
    for s in samplers:
        ins = inputs(s)
        positive = _join(texts(ins["positive"]))
        if not positive:
            continue
        w = widgets(s)
        seed = steps = cfg = None
        sampler = ""
        if s["type"] == "KSampler" and len(w) >= 6:
            seed, steps, cfg, sampler = w[0], w[2], w[3], _str(w[4])
        elif s["type"] == "KSamplerAdvanced" and len(w) >= 7:
            seed, steps, cfg, sampler = w[1], w[3], w[4], _str(w[5])
        latent = origin(ins.get("latent_image"))
        lw = widgets(latent[0]) if latent and latent[0]["type"].startswith("Empty") else []
        model = origin(ins.get("model"))
        for _ in range(_MAX_DEPTH):
            if model is None or "model" not in inputs(model[0]):
                break
            model = origin(inputs(model[0])["model"])
        model_name = _str(widgets(model[0])[0]) if model and widgets(model[0]) else ""
        return GenerationInfo(
            prompt=positive,
            negative=_join(texts(ins.get("negative"))),
            seed=_seed(seed),
            steps=_steps(steps),
            sampler=sampler,
            cfg_scale=_float(cfg),
            width=_side(lw[0]) if len(lw) >= 2 else None,
            height=_side(lw[1]) if len(lw) >= 2 else None,
            model_name=model_name,
            source="comfyui",
        )
    # No sampler wiring: text encoders by id, a title with "neg" marks the negative one.
    pos: list[str] = []
    neg: list[str] = []
    for _, n in sorted(nodes.items()):
        if "TextEncode" in n["type"]:
            title = n.get("title")
            is_neg = isinstance(title, str) and "neg" in title.lower()
            (neg if is_neg else pos).extend(w for w in widgets(n) if isinstance(w, str))
    if not pos or not _join(pos[:1]):
        return None
    return GenerationInfo(prompt=_join(pos[:1]), negative=_join(neg[:1]), source="comfyui")


def _from_comfyui(meta: dict[str, str]) -> GenerationInfo | None:
    api_text, wf_text = meta.get("prompt"), meta.get("workflow")
    for key in ("Make", "Model", "ImageDescription", "UserComment"):  # ComfyUI WebP: "prompt:{json}" in EXIF
        value = meta.get(key, "")
        if value.startswith("prompt:{") and api_text is None:
            api_text = value[len("prompt:") :]
        elif value.startswith("workflow:{") and wf_text is None:
            wf_text = value[len("workflow:") :]
    result = parse_comfyui_prompt(_json(api_text))
    if result is not None and result.prompt:
        return result
    fallback = parse_comfyui_workflow(_json(wf_text))
    if fallback is not None and result is not None:  # texts from the workflow, numbers from the graph
        return replace(result, prompt=fallback.prompt, negative=fallback.negative or result.negative)
    return fallback or result


# --- InvokeAI ----------------------------------------------------------------------------------------

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def _invoke_legacy_prompt(text: str) -> tuple[str, str]:
    """InvokeAI 2.x prompt syntax: [bracketed] words are the negative prompt."""
    negative = ", ".join(t.strip() for t in _BRACKETS.findall(text) if t.strip())
    return re.sub(r"\s{2,}", " ", _BRACKETS.sub("", text)).strip(" ,"), negative


def parse_invokeai(meta: Mapping[str, str]) -> GenerationInfo | None:
    """InvokeAI: ``invokeai_metadata`` (3.x+), ``sd-metadata`` (2.x) or the ``Dream`` command line."""
    data = _json(meta.get("invokeai_metadata"))
    if isinstance(data, dict):
        model = data.get("model")
        model_name = model_hash = ""
        if isinstance(model, dict):
            model_name = _str(model.get("name")) or _str(model.get("model_name"))
            model_hash = _str(model.get("hash"))
        elif isinstance(model, str):
            model_name = model
        return _from_fields(
            data,
            prompt=_str(data.get("positive_prompt")),
            negative=_str(data.get("negative_prompt")),
            sampler="scheduler",
            model_hash=model_hash,
            model_name=model_name,
            source="invokeai",
        )
    legacy = _json(meta.get("sd-metadata"))
    if isinstance(legacy, dict) and isinstance(legacy.get("image"), dict):
        image = legacy["image"]
        raw = image.get("prompt")
        if isinstance(raw, list):
            raw = " ".join(_str(p.get("prompt")) for p in raw if isinstance(p, dict))
        prompt, negative = _invoke_legacy_prompt(_str(raw))
        return _from_fields(
            image,
            prompt=prompt,
            negative=negative,
            model_hash=_str(legacy.get("model_hash")),
            model_name=_str(legacy.get("model_weights")),
            source="invokeai",
        )
    dream = meta.get("Dream")
    return parse_dream(dream) if dream else None


_DREAM_OPTS = {
    "-s": "steps", "--steps": "steps", "-S": "seed", "--seed": "seed", "-W": "width", "--width": "width",
    "-H": "height", "--height": "height", "-C": "cfg_scale", "--cfg_scale": "cfg_scale", "-A": "sampler",
    "--sampler": "sampler",
}  # fmt: skip


def parse_dream(text: str) -> GenerationInfo | None:
    """InvokeAI 1.x/2.x ``Dream`` text: ``"prompt" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms``."""
    try:
        tokens = shlex.split(text) if len(text) <= 65536 else text.split()
    except ValueError:  # unbalanced quotes
        tokens = text.split()
    i = 0
    while i < len(tokens) and not re.match(r"--?[A-Za-z]", tokens[i]):
        i += 1
    words, opts = tokens[:i], dict[str, str]()
    while i < len(tokens):
        key, eq, inline = tokens[i].partition("=")
        i += 1
        if not eq and not key.startswith("--") and len(key) > 2 and key[:2] in _DREAM_OPTS:
            key, inline = key[:2], key[2:]  # -s50
        name = _DREAM_OPTS.get(key)
        if name is None:
            continue  # an option we do not carry (its value is skipped as a non-option word)
        if not eq and not inline and i < len(tokens):
            inline = tokens[i]
            i += 1
        opts.setdefault(name, inline)
    prompt, negative = _invoke_legacy_prompt(" ".join(words))
    if not prompt:
        return None
    return _from_fields(opts, prompt=prompt, negative=negative, source="invokeai")


# --- NovelAI -----------------------------------------------------------------------------------------


def _caption(v: object) -> str:
    """NovelAI V4 {"caption": {"base_caption": ...}} text."""
    if isinstance(v, dict) and isinstance(v.get("caption"), dict):
        return _str(v["caption"].get("base_caption"))
    return ""


def parse_novelai(meta: Mapping[str, str]) -> GenerationInfo | None:
    """NovelAI PNG text: Software "NovelAI", Description (prompt), Comment JSON, Source (model)."""
    if not meta.get("Software", "").strip().lower().startswith("novelai"):
        return None
    comment = _json(meta.get("Comment"))
    c: dict[str, Any] = comment if isinstance(comment, dict) else {}
    prompt = _str(meta.get("Description")) or _str(c.get("prompt")) or _caption(c.get("v4_prompt"))
    negative = _str(c.get("uc")) or _caption(c.get("v4_negative_prompt"))
    if not prompt and not c:
        return None
    return _from_fields(
        c, prompt=prompt, negative=negative, cfg="scale", model_name=_str(meta.get("Source")), source="novelai"
    )


# --- EXIF / XMP free text ----------------------------------------------------------------------------

_EXIF_KEYS = ("UserComment", "ImageDescription", "XPComment")
_CAMERA_DEFAULTS = frozenset(
    s.casefold()
    for s in (
        "OLYMPUS DIGITAL CAMERA", "SONY DSC", "DIGITAL CAMERA", "KONICA MINOLTA DIGITAL CAMERA",
        "SAMSUNG DIGITAL CAMERA", "DCIM", "default", "Screenshot", "charset=Ascii", "LEAD Technologies",
    )
)  # fmt: skip


def _plain(text: str) -> bool:
    """Free text that may be a prompt (not a camera's default caption, not binary junk)."""
    t = text.strip()
    return bool(t) and t.casefold() not in _CAMERA_DEFAULTS and any(c.isalpha() for c in t)


def xmp_texts(packet: str) -> Iterator[str]:
    """Candidate prompt texts of an XMP packet: parameters, dc:description, exif:UserComment, ...

    A packet with a DTD (never valid XMP; the entity-expansion attack vector) is refused.
    """
    if re.search(r"<!(DOCTYPE|ENTITY)", packet, re.IGNORECASE):
        return
    start = packet.find("<x:xmpmeta")
    if start < 0:
        start = packet.find("<rdf:RDF")
    end_tag = "</x:xmpmeta>" if packet.startswith("<x:xmpmeta", start) else "</rdf:RDF>"
    end = packet.rfind(end_tag)
    if start < 0 or end < 0:
        return
    try:
        root = ET.fromstring(packet[start : end + len(end_tag)])
    except ET.ParseError:
        return
    found: dict[str, list[str]] = {}
    order = ("parameters", "description", "UserComment", "ImageDescription")
    for el in root.iter():
        name = el.tag.rsplit("}", 1)[-1]
        if name in order:
            lis = [li.text or "" for li in el.iter() if li.tag.rsplit("}", 1)[-1] == "li"]
            found.setdefault(name, []).append(_join(lis) if lis else (el.text or ""))
        for attr, value in el.attrib.items():
            if attr.rsplit("}", 1)[-1] in order:
                found.setdefault(attr.rsplit("}", 1)[-1], []).append(value)
    for name in order:
        yield from (t.strip() for t in found.get(name, []) if t.strip())


def _from_a1111_elsewhere(meta: dict[str, str]) -> GenerationInfo | None:
    """A1111 infotext in EXIF (A1111's JPEG/WebP), XMP or the JPEG comment."""
    texts = [meta.get(k, "") for k in _EXIF_KEYS]
    texts += list(xmp_texts(meta.get("XMP", "")))
    texts.append(meta.get("comment", ""))
    for text in texts:
        if text and any(_params(line) is not None for line in text.splitlines()[-8:]):
            return parse_a1111(text)
    return None


def _from_exif_text(meta: dict[str, str]) -> GenerationInfo | None:
    for key in _EXIF_KEYS:
        text = meta.get(key, "")
        if _plain(text) and not text.startswith(("prompt:{", "workflow:{")):
            return parse_a1111(text, source="exif")
    return None


def _from_xmp_text(meta: dict[str, str]) -> GenerationInfo | None:
    for text in xmp_texts(meta.get("XMP", "")):
        if _plain(text):
            return parse_a1111(text, source="xmp")
    return None


_PARSERS: tuple[Callable[[dict[str, str]], GenerationInfo | None], ...] = (
    _from_a1111,
    _from_comfyui,
    parse_invokeai,
    parse_novelai,
    _from_a1111_elsewhere,
    _from_exif_text,
    _from_xmp_text,
)
