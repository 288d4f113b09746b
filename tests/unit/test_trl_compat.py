"""trl_compat: the one place that touches TRL internals — checked versions, named fallbacks, restored afterwards."""

from __future__ import annotations

import pytest
import trl.trainer.utils as trl_utils

from peftsft.core.errors import UserError
from peftsft.training import trl_compat


def test_loss_head_sets_trl_internals_and_restores_them():
    chunk, use_triton = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, trl_utils._use_triton
    fallbacks: list[str] = []
    with trl_compat.loss_head(1024, supervised_only=True, fallbacks=fallbacks):
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 1024
        assert trl_utils._use_triton("cpu") is True  # compact scoring: supervised positions only, on any device
    assert (trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, trl_utils._use_triton) == (chunk, use_triton)
    assert fallbacks == []


def test_loss_head_restores_even_when_training_fails():
    chunk = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    with pytest.raises(RuntimeError), trl_compat.loss_head(512, False, []):
        raise RuntimeError("training broke")
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == chunk


def test_a_renamed_trl_attribute_is_a_named_fallback_not_silence(monkeypatch):
    monkeypatch.delattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    fallbacks: list[str] = []
    with pytest.warns(UserWarning, match="_CHUNKED_LOGPROB_CHUNK_SIZE"):
        with trl_compat.loss_head(1024, supervised_only=False, fallbacks=fallbacks):
            assert not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    assert len(fallbacks) == 1 and "_CHUNKED_LOGPROB_CHUNK_SIZE" in fallbacks[0]


@pytest.mark.parametrize("package, version", [("trl", "0.29.0"), ("trl", "2.0.1"), ("transformers", "4.57.1")])
def test_unsupported_versions_fail_loudly(monkeypatch, package, version):
    real = trl_compat.importlib.metadata.version
    monkeypatch.setattr(trl_compat.importlib.metadata, "version", lambda name: version if name == package else real(name))
    with pytest.raises(UserError, match=f"{package} {version} is not supported"):
        trl_compat.check_versions()


def test_installed_versions_are_supported():
    assert set(trl_compat.check_versions()) == {"trl", "transformers"}
