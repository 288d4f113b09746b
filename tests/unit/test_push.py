"""`push`: only a verified export leaves, staged with its card; a dry run lists it; bad input is one clear error (exit
2) with nothing uploaded. huggingface_hub's HfApi is replaced by a recorder: no test touches the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from rich.console import Console

from peftsft.commands.cli import main
from tests.conftest import TINY_BASE_ID

TOKEN = "hf_test_token_never_written_anywhere"


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls, uploads nothing."""

    calls: list[tuple] = []
    fail_with: Exception | None = None

    def __init__(self, token=None):
        RecordingApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        if RecordingApi.fail_with is not None:
            raise RecordingApi.fail_with
        RecordingApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        RecordingApi.calls.append(("upload_folder", repo_id, files, kwargs))


@pytest.fixture
def hub(monkeypatch):
    """A token, a network (HF_HUB_OFFLINE off) and the recording HfApi."""
    RecordingApi.calls, RecordingApi.fail_with = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return RecordingApi


@pytest.fixture
def run_copy(exported_run, tmp_path) -> Path:
    """A private copy of the exported run (tests tamper with it)."""
    return Path(shutil.copytree(exported_run, tmp_path / "run", ignore=shutil.ignore_patterns("push")))


@pytest.mark.slow
def test_dry_run_stages_the_verified_adapter_with_its_card_and_lists_it(run_copy, hub, capsys):
    from huggingface_hub import ModelCard

    assert main(["push", str(run_copy), "--repo", "someone/tiny-pip", "--dry-run"]) == 0
    out = capsys.readouterr().out
    folder = run_copy / "push" / "adapter"
    names = sorted(p.name for p in folder.iterdir())
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "verification.json", "loss.png",
            "tokenizer.json", "chat_template.jinja"} <= set(names)
    for name in names:
        assert name in out
    assert "files" in out and "KiB" in out and "nothing uploaded" in out
    assert hub.calls == []  # no HfApi at all
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == TINY_BASE_ID and 'from_pretrained("someone/tiny-pip")' in card.text
    staged = (folder / "adapter_model.safetensors").read_bytes()
    assert staged == (run_copy / "exports" / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_push_uploads_the_staged_folder_with_the_token_kept_out_of_files_and_output(run_copy, hub, capsys):
    assert main(["push", str(run_copy), "--repo", "someone/tiny-merged", "--what", "merged", "--private"]) == 0
    out = capsys.readouterr()
    init, create, upload = hub.calls
    assert init == ("init", TOKEN)
    assert create[1] == "someone/tiny-merged" and create[2]["private"] is True and create[2]["exist_ok"] is True
    assert upload[1] == "someone/tiny-merged" and "model.safetensors" in upload[2] and "README.md" in upload[2]
    assert TOKEN not in out.out + out.err
    assert not [p for p in run_copy.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


@pytest.mark.parametrize("repo", ["no-owner", "a/b/c", "-x/y", "x/y.git", "owner/na me", "owner/../x", ""])
@pytest.mark.slow
def test_malformed_repo_is_refused(run_copy, hub, repo, capsys):
    assert main(["push", str(run_copy), f"--repo={repo}"]) == 2
    err = capsys.readouterr().err
    assert "not a Hub repository id" in err and "OWNER/NAME" in err and "Traceback" not in err
    assert hub.calls == [] and not (run_copy / "push").exists()


def _refused(argv: list[str], message: str, hub, capsys, run_dir: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert [c for c in hub.calls if c[0] != "init"] == [] and not (run_dir / "push").exists()
    return err


@pytest.mark.slow
def test_nothing_exported_yet_is_refused_with_the_export_command(run_copy, hub, capsys):
    err = _refused(["push", str(run_copy), "--repo", "o/n", "--what", "gguf"], "nothing exported yet", hub, capsys,
                   run_copy)
    assert "peftsft export" in err and "--format gguf" in err


@pytest.mark.slow
def test_an_artifact_changed_after_verification_is_refused(run_copy, hub, capsys):
    weights = run_copy / "exports" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    _refused(["push", str(run_copy), "--repo", "o/n"], "changed after it was verified", hub, capsys, run_copy)
    (run_copy / "exports" / "adapter" / "verification.json").unlink()
    _refused(["push", str(run_copy), "--repo", "o/n"], "no verification record", hub, capsys, run_copy)


@pytest.mark.slow
def test_an_export_made_without_verification_is_refused(run_copy, hub, capsys):
    from peftsft.artifacts.export.pipeline import ExportJob, export_run

    unverified = run_copy / "unverified"
    export_run(run_copy, [ExportJob("adapter", unverified)], Console(quiet=True), verify=False)
    assert json.loads((unverified / "verification.json").read_text())["verified"] is False
    _refused(["push", str(run_copy), "--repo", "o/n", "--from", str(unverified)], "without verification", hub,
             capsys, run_copy)


@pytest.mark.slow
def test_no_token_is_refused_before_anything_is_staged(run_copy, hub, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    err = _refused(["push", str(run_copy), "--repo", "o/n"], "no Hugging Face token", hub, capsys, run_copy)
    assert "HF_TOKEN" in err and "--dry-run" in err
    assert hub.calls == []


@pytest.mark.slow
def test_offline_names_the_missing_network_and_suggests_a_dry_run(run_copy, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _refused(["push", str(run_copy), "--repo", "o/n"], "no network", hub, capsys, run_copy)
    assert "--dry-run" in err and hub.calls == []


@pytest.mark.slow
def test_an_unreachable_hub_is_one_clear_error(run_copy, hub, capsys):
    import httpx

    hub.fail_with = httpx.ConnectError("Name or service not known")
    assert main(["push", str(run_copy), "--repo", "o/n"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and "--dry-run" in err and "Traceback" not in err
    assert not [c for c in hub.calls if c[0] == "upload_folder"]


@pytest.mark.slow
def test_a_verified_gguf_is_staged_with_its_modelfile_and_a_gguf_card(run_copy, hub, capsys):
    from huggingface_hub import ModelCard

    from peftsft.artifacts.export.record import write_record
    from peftsft.artifacts.export.verify import Check

    gguf = run_copy / "exports" / "tiny.f16.gguf"  # stands in for a GGUF export: push reads only its record
    gguf.write_bytes(b"GGUF" + bytes(60))
    gguf.with_suffix(".Modelfile").write_text("FROM ./tiny.f16.gguf\n")
    write_record(gguf, "gguf", [Check("gguf f16", "float16", 1.0, 1e-4, 1e-5, 1.0, 3, 3)])
    assert main(["push", str(run_copy), "--repo", "someone/tiny-gguf", "--what", "gguf", "--dry-run"]) == 0
    folder = run_copy / "push" / "gguf"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "loss.png", "tiny.f16.Modelfile", "tiny.f16.gguf", "verification.json"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags and card.data.base_model == TINY_BASE_ID
    assert 'gguf_file="tiny.f16.gguf"' in card.text and "| gguf f16 | float16 |" in card.text
    gguf.write_bytes(b"GGUF" + bytes(61))
    assert main(["push", str(run_copy), "--repo", "someone/tiny-gguf", "--what", "gguf", "--dry-run"]) == 2
    assert "changed after it was verified" in capsys.readouterr().err


@pytest.mark.slow
def test_staging_never_replaces_a_folder_holding_something_else(run_copy, hub, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for out, message in ((other, "not an earlier push folder"), (run_copy, "would replace the run")):
        assert main(["push", str(run_copy), "--repo", "o/n", "--dry-run", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    again = ["push", str(run_copy), "--repo", "o/n", "--dry-run", "--out", str(tmp_path / "stage")]
    assert main(again) == 0 and main(again) == 0  # an earlier push folder is replaced
