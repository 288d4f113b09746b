"""Text files users write (recipes, datasets) read as UTF-8: a UTF-8 byte-order mark is accepted, any other
encoding is one clear error that names it and says how to re-save the file."""

from __future__ import annotations

import codecs
from pathlib import Path

from peftsft.core.errors import UserError

# longest first: UTF-32's little-endian mark begins with UTF-16's
OTHER_ENCODINGS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
                   (codecs.BOM_UTF16_BE, "UTF-16"))  # fmt: skip
HEAD = 200  # bytes looked at for another encoding's marks
RESAVE = "re-save it as UTF-8 (your editor's \"Save with encoding\", or: iconv -f {enc} -t UTF-8 FILE > NEW_FILE)"


def read_utf8(path: Path, what: str) -> str:
    """The text of `path` (a `what`: "recipe", "dataset"); a leading UTF-8 byte-order mark (Windows editors write
    one) is dropped."""
    return decode_utf8(path.read_bytes(), path, what)


def decode_utf8(data: bytes, path: Path, what: str) -> str:
    check_head(data[:HEAD], path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: cannot read {what}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}); the file looks like a legacy code page such as Windows-1252",
                        hint=RESAVE.format(enc="CP1252")) from None


def check_head(head: bytes, path: Path, what: str) -> None:
    """Refuse a file whose first bytes show another Unicode encoding: its byte-order mark, or UTF-16's NUL bytes
    (valid UTF-8 to a decoder, but no text file holds them)."""
    for bom, name in OTHER_ENCODINGS:
        if head.startswith(bom):
            raise UserError(f"{path}: cannot read {what}: the file is {name}-encoded (it starts with a {name} "
                            "byte-order mark); peftsft reads UTF-8", hint=RESAVE.format(enc=name))
    if len(head) >= 4 and head.count(0) * 4 > len(head):
        raise UserError(f"{path}: cannot read {what}: the file looks UTF-16-encoded (every other byte is 0); "
                        "peftsft reads UTF-8", hint=RESAVE.format(enc="UTF-16"))
