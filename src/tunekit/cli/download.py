"""``tunekit download <repo_id>``: fetch a model from the Hugging Face Hub into the models root.

The default destination is ``<models root>/<repo_id>``, where the models root is
``$TUNEKIT_MODELS_ROOT`` or ``~/.cache/tunekit/models`` (the config's ``paths.models_root``
default, through the same function), so ``checkpointer=hf model=llama2_7b`` finds the download.
The token (``--hf-token`` or ``$HF_TOKEN``) is passed to huggingface_hub only; it is never
printed or written anywhere. This module does not import torch.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODELS_ROOT_ENV", "default_ignore_patterns", "default_models_root", "download", "main"]

from tunekit.config.resolvers import MODELS_ROOT_ENV
from tunekit.config.resolvers import default_models_root as _config_models_root

# The Hub's rule for repo ids (huggingface_hub.utils.validate_repo_id): [owner/]name, each part
# letters, digits, '-', '_', '.', not starting or ending with '-' or '.', at most 96 characters.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")


class DownloadError(Exception):
    """A download that cannot go ahead; the message is the one paragraph shown to the user."""


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub cannot have (before any network access).

    Raises:
        DownloadError: naming the value and the expected form.
    """
    if not _REPO_RE.match(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise DownloadError(
            f"repo_id {repo_id!r} is not a Hugging Face Hub repository id: expected owner/name (or a bare "
            f"name), each part letters, digits, '-', '_' or '.', without spaces or further '/', e.g. "
            f"meta-llama/Llama-2-7b-hf as in its address https://huggingface.co/meta-llama/Llama-2-7b-hf. "
            f"To download a single file or a sub-folder of a repo use --include PATTERN."
        )


def check_output_dir(out: Path) -> None:
    """Refuse to download into a directory holding something other than an earlier download.

    snapshot_download overwrites files of the same name; a run directory, a checkpoint or any
    folder of the user's must never be written into.

    Raises:
        DownloadError: naming the directory and what is in it.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise DownloadError(f"--output-dir {out} exists and is not a directory. Choose a new directory.")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or (out / ".cache" / "huggingface").is_dir():
        return  # empty, or an earlier download (huggingface_hub keeps its metadata there): resumed
    raise DownloadError(
        f"--output-dir {out} already holds files that were not downloaded there by tunekit download "
        f"({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); downloading would overwrite "
        f"files of the same name. Choose a new or empty directory (the default is the models root "
        f"joined with the repo id)."
    )


def _honour_umask(root: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink() and ".cache" not in p.relative_to(root).parts:
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


_OTHER_FRAMEWORKS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "*.mlmodel"]


def default_models_root() -> Path:
    """``$TUNEKIT_MODELS_ROOT`` or ``$XDG_CACHE_HOME/tunekit/models`` (``~/.cache/tunekit/models``).

    The same function backs the config's ``paths.models_root`` default, so the two never disagree.
    """
    return Path(_config_models_root())


def default_ignore_patterns(repo_files: Sequence[str]) -> list[str]:
    """Patterns that skip duplicate weight formats.

    Other frameworks' weights are always skipped; when the repo has safetensors, the same
    weights as ``*.bin`` / ``*.pth`` / ``*.pt`` (including Meta's ``original/consolidated*.pth``)
    are skipped too. A Meta-only repo keeps its ``consolidated.*.pth``.
    """
    ignore = list(_OTHER_FRAMEWORKS)
    if any(fnmatch.fnmatch(f, "*.safetensors") for f in repo_files):
        ignore += ["*.bin", "*.pth", "*.pt"]
    return ignore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit download",
        description="Download a model repository from the Hugging Face Hub (huggingface_hub.snapshot_download).",
    )
    p.add_argument("repo_id", help="e.g. meta-llama/Llama-2-7b-hf")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"destination (default: ${MODELS_ROOT_ENV} or ~/.cache/tunekit/models, joined with repo_id)")
    p.add_argument("--hf-token", default=None,
                   help="Hub access token for gated/private repos (default: $HF_TOKEN or a saved login)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--include", nargs="+", default=None, metavar="PATTERN",
                   help="download only files matching these glob patterns")
    p.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN",
                   help="skip files matching these glob patterns (added to the defaults)")
    p.add_argument("--repo-type", choices=("model", "dataset"), default="model",
                   help="dataset: a data set repo, stored in the Hugging Face cache (HF_HUB_CACHE) where "
                        "dataset.source=OWNER/NAME reads it offline, or in --output-dir if given")
    p.add_argument("--all-formats", action="store_true",
                   help="do not skip duplicate weight formats (*.bin / *.pth beside *.safetensors)")
    return p


def download(
    repo_id: str,
    output_dir: str | Path | None = None,
    *,
    token: str | None = None,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    all_formats: bool = False,
    repo_type: str = "model",
) -> Path:
    """Download ``repo_id`` into ``output_dir`` (default: models root / repo_id).

    Raises:
        DownloadError: a malformed repo id, or an output directory holding other files.
        huggingface_hub errors (GatedRepoError, RepositoryNotFoundError, HfHubHTTPError, ...);
        :func:`main` turns them into one-paragraph messages.
    """
    check_repo_id(repo_id)
    if repo_type == "dataset":
        return _download_dataset(repo_id, output_dir, token=token, revision=revision, include=include,
                                 exclude=exclude)
    out = Path(output_dir).expanduser() if output_dir is not None else default_models_root() / repo_id
    check_output_dir(out)
    from huggingface_hub import HfApi, snapshot_download

    ignore = list(exclude or [])
    if not all_formats and not include:
        info = HfApi(token=token).model_info(repo_id, revision=revision)
        ignore += default_ignore_patterns([s.rfilename for s in (info.siblings or [])])
    path = snapshot_download(
        repo_id,
        revision=revision,
        local_dir=out,
        token=token,
        allow_patterns=list(include) if include else None,
        ignore_patterns=ignore or None,
    )
    _honour_umask(Path(path))
    return Path(path)


def _download_dataset(repo_id: str, output_dir: str | Path | None, *, token: str | None, revision: str | None,
                      include: Sequence[str] | None, exclude: Sequence[str] | None) -> Path:
    """A data set repo into the Hugging Face cache (read offline by ``dataset.source=repo_id``), or
    into ``output_dir`` (an empty or new directory) when given."""
    from huggingface_hub import snapshot_download

    out = None
    if output_dir is not None:
        out = Path(output_dir).expanduser()
        check_output_dir(out)
    path = snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=out, token=token,
                             cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                             allow_patterns=list(include) if include else None,
                             ignore_patterns=list(exclude) if exclude else None)
    if out is not None:
        _honour_umask(Path(path))
    return Path(path)


def _is_network_error(err: BaseException) -> bool:
    seen = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__.split(".")[0]
        if mod.startswith(("httpx", "httpcore", "requests", "urllib3")) and any(
            w in type(e).__name__ for w in ("Connect", "Timeout", "Network", "Proxy", "Protocol", "SSL")
        ):
            return True
        if isinstance(e, (ConnectionError, TimeoutError)) or (
            isinstance(e, OSError) and e.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                    errno.ETIMEDOUT, errno.ECONNRESET)
        ):
            return True
        if type(e).__name__ == "gaierror":
            return True
        e = e.__cause__ or e.__context__
    return False


def _explain(err: Exception, repo_id: str, out: Path | None = None) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"https://huggingface.co/{repo_id}"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if isinstance(err, DownloadError):
        return str(err)
    if isinstance(err, LocalEntryNotFoundError) and isinstance(err.__cause__, HfHubHTTPError):
        err = err.__cause__  # snapshot_download hides the Hub's answer behind a cache miss
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if isinstance(err, OfflineModeIsEnabled) or (isinstance(err, LocalEntryNotFoundError) and offline):
        return (f"Cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE is set), so the Hub is not "
                f"contacted. Unset HF_HUB_OFFLINE to download, or copy the model directory onto this "
                f"machine and point checkpointer.checkpoint_dir at it.")
    if isinstance(err, GatedRepoError):
        return (f"{repo_id} is a gated repository: request access at {url} (accept the licence), then "
                f"pass a token of that account with --hf-token or the HF_TOKEN environment variable.")
    if isinstance(err, RevisionNotFoundError):
        return f"{repo_id} has no such revision; check --revision (a branch, tag or commit of {url})."
    if isinstance(err, RepositoryNotFoundError):
        return (f"{repo_id} was not found on the Hub, or it is private and your token may not read it. "
                f"Check the spelling (owner/name, as in {url}); for a private repo pass a token with "
                f"access via --hf-token or HF_TOKEN.")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return (f"The Hub rejected the token for {repo_id} (401 Unauthorized): it is invalid or expired. "
                    f"Create a new one at https://huggingface.co/settings/tokens.")
        if status == 403:
            return (f"Your token is not authorised to read {repo_id} (403 Forbidden): request access at {url} "
                    f"or use a token with read permission for this repository.")
        return f"The Hub answered {status} for {repo_id}; try again later."
    if isinstance(err, LocalEntryNotFoundError) or _is_network_error(err):
        return (f"Could not reach the Hub at {endpoint} to download {repo_id} (no network connection, a "
                f"proxy or firewall, or a wrong HF_ENDPOINT). Check the connection and run the command "
                f"again (it resumes), or copy the model directory onto this machine and point "
                f"checkpointer.checkpoint_dir at it.")
    if isinstance(err, OSError):
        where = f" into {out}" if out is not None else ""
        return (f"Could not write the download of {repo_id}{where}: {err.strerror or err}"
                f"{f' ({err.filename})' if getattr(err, 'filename', None) else ''}. Free disk space or choose "
                f"another --output-dir (or TUNEKIT_MODELS_ROOT), then run the command again (it resumes).")
    detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
    return f"Download of {repo_id} failed: {type(err).__name__}: {detail}. Run the command again; it resumes."


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunekit download``; returns the exit status."""
    args = _parser().parse_args(argv)
    token = args.hf_token or os.environ.get("HF_TOKEN") or None
    try:
        path = download(
            args.repo_id,
            args.output_dir,
            token=token,
            revision=args.revision,
            include=args.include,
            exclude=args.exclude,
            all_formats=args.all_formats,
            repo_type=args.repo_type,
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one readable paragraph
        out = args.output_dir if args.output_dir is not None else None
        msg = " ".join(_explain(err, args.repo_id, out).split())
        if args.repo_type == "dataset":
            msg = (msg.replace("copy the model directory onto this machine and point checkpointer.checkpoint_dir "
                               "at it", "copy the data files onto this machine and point dataset.source at them")
                   .replace("https://huggingface.co/" + args.repo_id,
                            "https://huggingface.co/datasets/" + args.repo_id))
        if token:
            msg = msg.replace(token, "***")
        print(f"tunekit download: error: {msg}", file=sys.stderr)
        return 1
    if args.repo_type == "dataset":
        where = "" if args.output_dir is not None else " (the Hugging Face cache)"
        print(f"Downloaded the data set {args.repo_id} to {path}{where}; train on it with "
              f"dataset.source={args.output_dir or args.repo_id}")
        return 0
    print(f"Downloaded {args.repo_id} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
