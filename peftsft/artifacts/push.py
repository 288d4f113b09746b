"""`push`: publish a run's verified export to the Hugging Face Hub, with a model card written for that repo.

Only what `export` verified leaves the machine: push takes an existing export of the run (by default
<run>/exports/adapter | merged | <name>.gguf, as `[export] formats` writes them) whose verification record says it
passed and whose files still have the hashes they had when checked; it never exports or converts anything itself,
so what is uploaded is byte for byte what was checked. The folder to upload is staged first (<run>/push/<what>):
`--dry-run` stops there. The token comes from huggingface_hub (HF_TOKEN or a stored login) and goes only to HfApi.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.artifacts.card import CardTarget, write_card
from peftsft.artifacts.export.formats import REGISTRY, format_named
from peftsft.artifacts.export.record import RECORD, artifact_files, read_record, record_path, unverified_reason
from peftsft.artifacts.export.run_models import TrainedRun, open_run
from peftsft.core.errors import UserError
from peftsft.core.rundir import require_parent_folders, write_dir

WHAT = tuple(name for name, fmt in REGISTRY.items() if fmt.pushable)
REPO_ID = re.compile(r"^[A-Za-z0-9](?:[\w-]|\.(?!\.)){0,94}/[A-Za-z0-9](?:[\w-]|\.(?!\.)){0,94}$")
NO_NETWORK = "--dry-run writes the folder that would be uploaded (and lists it) without any network"


@dataclass(frozen=True)
class PushRequest:
    run_dir: Path
    repo: str
    what: str = "adapter"
    private: bool = False
    dry_run: bool = False
    source: Path | None = None  # the export to push; None: the run's exports/ folder
    out: Path | None = None  # the staged folder; None: <run>/push/<what>


def push(request: PushRequest, console: Console) -> Path:
    """Check everything, stage the folder, then (unless a dry run) create the repo and upload it; returns the folder."""
    check_repo_id(request.repo)
    run = open_run(request.run_dir)
    artifact = verified_export(run, request.what, request.source)
    token = None
    if not request.dry_run:
        token = hub_token()
        require_network()
    folder = request.out or run.dir.push_dir / request.what
    check_staging_folder(folder, run, artifact)
    write_dir(folder, lambda tmp: stage(run, artifact, request.what, request.repo, tmp))
    print_folder(console, folder)
    if request.dry_run:
        console.print(f"[green]dry run[/]: nothing uploaded; {folder} is what `push` would upload to {request.repo}")
        return folder
    upload(folder, request, token, run.name)
    console.print(f"[green]pushed[/] {folder} → https://huggingface.co/{request.repo}")
    return folder


def check_repo_id(repo: str) -> None:
    if not REPO_ID.match(repo or "") or repo.endswith((".git", ".")):
        raise UserError(f"--repo {repo!r} is not a Hub repository id",
                        hint="give OWNER/NAME, e.g. --repo my-user/pip-adapter (letters, digits, '-', '_', '.')")


def verified_export(run: TrainedRun, what: str, source: Path | None) -> Path:
    """The export to upload: it exists and is exactly what `export` verified."""
    artifact = source or default_export(run, what)
    if not artifact.exists():
        raise UserError(f"nothing exported yet: no {what} export at {artifact}", hint=export_hint(run, what))
    if (artifact.suffix == ".gguf") != format_named(what).single_file:
        raise UserError(f"{artifact} is not a{'' if what == 'gguf' else 'n'} {what} export", hint="match --what to it")
    if reason := unverified_reason(artifact):
        raise UserError(f"{artifact} is not a verified export: {reason}; nothing was uploaded",
                        hint=export_hint(run, what, force=True))
    return artifact


def default_export(run: TrainedRun, what: str) -> Path:
    folder = run.dir.exports_dir
    if not format_named(what).single_file:
        return folder / format_named(what).default_name(run.name, "f16")
    ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(ggufs) > 1:
        raise UserError(f"{folder} holds several GGUF exports: {', '.join(p.name for p in ggufs)}",
                        hint="pick one with --from PATH")
    return ggufs[0] if ggufs else folder / f"{run.name}.gguf"


def export_hint(run: TrainedRun, what: str, force: bool = False) -> str:
    out = run.dir.exports_dir / format_named(what).default_name(run.name, "f16")
    again = " --force" if force else ""
    return (f"export it first (verified): python -m peftsft export {run.path} --format {what} --out {out}{again} "
            f"(or [export] formats = [\"{what}\"] in the recipe)")


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: nothing was uploaded",
                        hint="set HF_TOKEN or run `hf auth login` (a token with write access); " + NO_NETWORK)
    return token


def check_staging_folder(folder: Path, run: TrainedRun, artifact: Path) -> None:
    """The staging folder is replaced on every push: never a folder holding anything else."""
    target = folder.resolve()
    protected = (run.path.resolve(), run.adapter_dir.resolve(), artifact.resolve())
    if any(target == p or target in p.parents for p in protected):
        raise UserError(f"--out {folder}: would replace the run or its export", hint="choose a new folder")
    require_parent_folders(folder, "--out")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / RECORD).is_file())):
        raise UserError(f"--out {folder} exists and is not an earlier push folder (it would be replaced)",
                        hint="choose a new or empty folder")


def require_network() -> None:
    """Offline mode (HF_HUB_OFFLINE) is known before anything is staged or sent."""
    from peftsft.models import hub_offline

    if hub_offline():
        raise UserError("cannot push: no network (HF_HUB_OFFLINE is set); nothing was uploaded", hint=NO_NETWORK)


def stage(run: TrainedRun, artifact: Path, what: str, repo: str, folder: Path) -> None:
    """The upload folder: the verified files (hard-linked when possible), their record, and the repo's card."""
    for name, path in artifact_files(artifact).items():
        _link_or_copy(path, folder / name)
    shutil.copy2(record_path(artifact), folder / RECORD)
    checks = tuple((read_record(artifact) or {}).get("checks", []))
    gguf_file = artifact.name if format_named(what).single_file else None
    write_card(run.path, folder, CardTarget(what, repo, gguf_file=gguf_file, checks=checks))
    folder.chmod(0o755)


def _link_or_copy(path: Path, target: Path) -> None:
    try:
        os.link(path, target)  # weights can be large; the card is written as a new file, never through a link
    except OSError:
        shutil.copy2(path, target)


def print_folder(console: Console, folder: Path) -> None:
    table = Table("file", "size", title=f"{folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        table.add_row(str(path.relative_to(folder)), human_size(path.stat().st_size))
    table.add_row(f"[bold]{len(files)} files[/]", f"[bold]{human_size(sum(p.stat().st_size for p in files))}[/]")
    console.print(table)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def upload(folder: Path, request: PushRequest, token: str, run_name: str) -> None:
    """create_repo + upload_folder; no network, or a refused token, is one clear error."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(request.repo, repo_type="model", private=request.private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=request.repo, repo_type="model",
                          commit_message=f"peftsft: {request.what} of run {run_name}")
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        raise UserError(f"the Hub refused the push to {request.repo} (HTTP {status})",
                        hint="check that the token has write access to OWNER") from None
    except (ConnectionError, OSError) as exc:
        raise UserError(f"cannot push: huggingface.co is not reachable (no network: {type(exc).__name__})",
                        hint=NO_NETWORK) from None
    except Exception as exc:  # httpx's transport errors are not OSErrors
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpcore", "requests", "urllib3"):
            raise
        raise UserError(f"cannot push: huggingface.co is not reachable (no network: {type(exc).__name__})",
                        hint=NO_NETWORK) from None
