"""core/compat: the version gates of every touch of library internals fail loudly outside what they were written for."""

from __future__ import annotations

import importlib.metadata

import pytest

from peftsft.core import compat
from peftsft.core.errors import UserError


@pytest.mark.parametrize("package, version", [("trl", "0.29.0"), ("trl", "2.0.1"), ("transformers", "4.57.1")])
def test_unsupported_versions_fail_loudly(monkeypatch, package, version):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == package else real(name))
    with pytest.raises(UserError, match=f"{package} {version} is not supported"):
        compat.check_versions()


def test_installed_versions_are_supported():
    assert set(compat.check_versions()) == {"trl", "transformers"}


def test_a_lever_gate_names_what_needs_the_version(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "6.1.0" if name == "transformers" else real(name))
    with pytest.raises(UserError, match="reading the attention backend was written for 5.0 to 5.x"):
        compat.attention_implementation(object())
