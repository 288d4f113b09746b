"""Who a base model is in public: its Hub id (and license), read from a GGUF's metadata, a Hub source or a local
dir's config — so adapters, cards and merged models name a base that loads on any machine."""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from peftsft.core.errors import UserError
from peftsft.models import resolve_source


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")  # OWNER/NAME, as the Hub spells ids
HUB_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/([\w.-]+/[\w.-]+?)/?$")
GGUF_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d\w*|f16|f32|bf16|fp16)$", re.IGNORECASE)


@dataclass(frozen=True)
class BaseIdentity:
    """Who the base model is in public: its Hub id (None when it cannot be known), where that was read, license."""

    id: str | None
    found_in: str
    license: str | None = None


def is_hub_id(text: str | None) -> bool:
    return bool(text) and HUB_ID.match(text) is not None and ".." not in text and not Path(text).exists()


def detect_base_identity(spec: str) -> BaseIdentity:
    """The public id of a recipe's `[model] source`: a Hub id is itself; a GGUF says it in its header; a local
    dir in its config (or its place in a Hub cache). Never raises: an unknown id is a warning, not an error."""
    try:
        source = resolve_source(spec)
    except UserError:
        return BaseIdentity(None, "the source was not found")
    if source.kind == "hub":
        return BaseIdentity(source.location, "the Hub id in [model] source")
    if source.kind == "gguf":
        return _gguf_identity(Path(source.location))
    return _dir_identity(Path(source.location))


def _gguf_identity(path: Path) -> BaseIdentity:
    # general.base_model.* names the model this one was fine-tuned *from*: the base of our base, so not used.
    meta = gguf_general_metadata(path)
    license_ = meta.get("general.license") if isinstance(meta.get("general.license"), str) else None
    for key in ("general.source.repo_url", "general.source.url"):
        url = HUB_URL.match(str(meta.get(key, "")))
        if url and is_hub_id(url.group(1)):
            return BaseIdentity(url.group(1), f"the GGUF's {key}", license_)
    organization = meta.get("general.organization")
    name = GGUF_QUANT_SUFFIX.sub("", path.stem)  # SmolLM2-135M-Instruct.Q4_1 -> SmolLM2-135M-Instruct
    if isinstance(organization, str) and is_hub_id(f"{organization}/{name}"):
        return BaseIdentity(f"{organization}/{name}", "the GGUF's general.organization + its file name", license_)
    return BaseIdentity(None, f"the GGUF {path.name} names no Hub repository", license_)


def _dir_identity(path: Path) -> BaseIdentity:
    resolved = path.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        hub_id = resolved.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
        if is_hub_id(hub_id):
            return BaseIdentity(hub_id, "its place in a Hugging Face cache (models--OWNER--NAME)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    named = config.get("_name_or_path")
    if isinstance(named, str) and is_hub_id(named):
        return BaseIdentity(named, f"{path / 'config.json'} _name_or_path")
    return BaseIdentity(None, f"{path} names no Hub id (config.json has no _name_or_path)")


def gguf_general_metadata(path: Path) -> dict:
    """The `general.*` key-values of a GGUF header (little-endian, v2+). Our own reader, not gguf.GGUFReader:
    that one maps every array and tensor of the file (9 s for SmolLM2's 49k-token vocabulary); this reads
    only the key-value section and keeps a few strings (~50 ms)."""
    try:
        with path.open("rb") as f:
            magic, version, _tensors, count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version < 2:
                return {}
            found = {}
            for _ in range(count):
                key = _gguf_string(f)
                value = _gguf_value(f, struct.unpack("<I", f.read(4))[0], keep=key.startswith("general."))
                if key.startswith("general."):
                    found[key] = value
            return found
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return {}


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_string(f) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _gguf_value(f, kind: int, keep: bool):
    if kind == 8:
        return _gguf_string(f)
    if kind in _GGUF_SCALARS:
        fmt = "<" + _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind != 9:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, length = struct.unpack("<IQ", f.read(12))
    if item in _GGUF_SCALARS and not keep:
        f.seek(length * struct.calcsize("<" + _GGUF_SCALARS[item]), os.SEEK_CUR)
        return None
    values = [_gguf_value(f, item, keep) for _ in range(length)]
    return values if keep else None
