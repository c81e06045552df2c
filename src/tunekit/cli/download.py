"""``tunekit download <repo_id>``: fetch a model from the Hugging Face Hub into the models root.

The default destination is ``<models root>/<repo_id>``, where the models root is
``$TUNEKIT_MODELS_ROOT`` or ``~/.cache/tunekit/models`` (the config's ``paths.models_root``
default, through the same function), so ``checkpointer=hf model=llama2_7b`` finds the download.
The token (``--hf-token`` or ``$HF_TOKEN``) is passed to huggingface_hub only; it is never
printed or written anywhere. This module does not import torch.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODELS_ROOT_ENV", "default_ignore_patterns", "default_models_root", "download", "main"]

from tunekit.config.resolvers import MODELS_ROOT_ENV
from tunekit.config.resolvers import default_models_root as _config_models_root

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
) -> Path:
    """Download ``repo_id`` into ``output_dir`` (default: models root / repo_id).

    Raises:
        huggingface_hub errors (GatedRepoError, RepositoryNotFoundError, HfHubHTTPError, ...);
        :func:`main` turns them into one-paragraph messages.
    """
    from huggingface_hub import HfApi, snapshot_download

    out = Path(output_dir).expanduser() if output_dir is not None else default_models_root() / repo_id
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
    return Path(path)


def _explain(err: Exception, repo_id: str) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"https://huggingface.co/{repo_id}"
    if isinstance(err, LocalEntryNotFoundError) and isinstance(err.__cause__, HfHubHTTPError):
        err = err.__cause__  # snapshot_download hides the Hub's answer behind a cache miss
    if isinstance(err, GatedRepoError):
        return (f"{repo_id} is a gated repository: request access at {url} (accept the licence), then "
                f"pass a token of that account with --hf-token or the HF_TOKEN environment variable.")
    if isinstance(err, RevisionNotFoundError):
        return f"{repo_id} has no such revision; check --revision."
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
    if isinstance(err, LocalEntryNotFoundError):
        return f"Could not reach the Hub to download {repo_id}: check the network connection (or HF_ENDPOINT)."
    return f"Download of {repo_id} failed: {type(err).__name__}: {err}"


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
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one readable paragraph
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        if not isinstance(err, (HfHubHTTPError, LocalEntryNotFoundError, OSError)):
            raise
        msg = _explain(err, args.repo_id)
        if token:
            msg = msg.replace(token, "***")
        print(f"tunekit download: error: {msg}", file=sys.stderr)
        return 1
    print(f"Downloaded {args.repo_id} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
