"""mkdocs hooks: the benchmark results the docs cite become part of the site, and README.md's links are checked."""

# Why a hook: the docs attribute measured figures by linking the file that holds them (../benchmarks/results/…,
# a path that also works when docs/*.md is read on a code host). mkdocs knows only the files under docs/, so
# under --strict such a link is "not found"; telling it to ignore links that leave docs/ would let a renamed result
# file break silently. Registering each result file under the very path the link resolves to hands those links to
# mkdocs' own checks (the file exists; an anchor exists in the page) and serves the files with the site.
# README.md is not a page of the site (it links into docs/ from the repository root), so its links are checked here.

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
from mkdocs.structure.files import File, InclusionLevel

log = logging.getLogger("mkdocs.hooks.peftsft")  # under "mkdocs": a warning here fails a --strict build
OUTSIDE = ("benchmarks/results",)  # repository folders the docs may link into
SUFFIXES = {".md", ".json", ".png"}


def _repo(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    root, docs = _repo(config), Path(config.docs_dir).resolve()
    for folder in OUTSIDE:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES:
                rel = path.relative_to(root).as_posix()
                dest = f"repo/{rel[:-3]}.html" if path.suffix == ".md" else f"repo/{rel}"
                files.append(File(posixpath.relpath(path, docs), str(docs), config.site_dir, config.use_directory_urls,
                                  dest_uri=dest, inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_env(env, config, files):
    """Every relative link and image of README.md must name an existing file, and an anchor into docs/ a heading."""
    root, docs = _repo(config), Path(config.docs_dir).resolve()
    html = markdown.markdown((root / "README.md").read_text(encoding="utf-8"), extensions=["tables", "fenced_code"])
    for target in re.findall(r'(?:href|src)="([^"]+)"', html):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        path = (root / unquote(parts.path)).resolve()
        if not path.exists():
            log.warning(f"README.md links to '{target}', which does not exist")
        elif parts.fragment and path.suffix == ".md" and path.is_relative_to(docs):
            page = files.get_file_from_path(path.relative_to(docs).as_posix()).page
            if parts.fragment not in page.present_anchor_ids:
                log.warning(f"README.md links to '{target}', but {page.file.src_uri} has no anchor '{parts.fragment}'")
    return env
