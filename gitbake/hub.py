"""Hugging Face Hub models, through huggingface_hub: the local cache, and downloads into it.

A base model `org/name` (or `org/name@REV`) is a snapshot in the standard Hugging Face cache, so it is
shared with transformers, `hf download` and every other tool, and honours `HF_HOME`, `HF_HUB_CACHE`,
`HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`. Its identity is the commit that a branch or tag resolves
to in that cache: resolving never asks the network, so `git bake status` stays offline and instant, and a
model does not change under a repository until something downloads again (`git bake init`, which
refreshes, or a first use, which downloads only what is missing).

huggingface_hub reads most of its environment once, when it is imported; gitbake passes the cache
directory, the endpoint and the token on every call, so they follow the environment of each command (and
of each test). It is imported only where a hub model is used.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from gitbake.errors import UsageError
from gitbake.reads import note
from gitbake.reporter import Reporter

COMMIT = re.compile(r"[0-9a-f]{40}")  # a git commit of a hub repository, as the cache's snapshots are named
# what a model needs; not the other frameworks' weights, ONNX exports, GGUF files or images
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]
FALLBACK_WEIGHTS = ["pytorch_model*.bin"]  # when a repository has no safetensors
TRUE = ("1", "true", "yes", "on")


class HubError(UsageError):
    """A hub model that cannot be had: not found, not allowed, offline and not cached, disk full (exit 2)."""


def cache_dir() -> Path:
    """The hub cache, as huggingface_hub places it: HF_HUB_CACHE, else HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def repo_dir(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def snapshot(repo_id: str, commit: str) -> Path:
    return repo_dir(repo_id) / "snapshots" / commit


def cached_commit(repo_id: str, ref: str = "main") -> str | None:
    """The commit the local cache resolves `ref` (a branch, tag or commit) to, when that snapshot holds the
    whole model; None otherwise. Never asks the network."""
    if ".." in ref.split("/"):
        return None  # a ref name, never a path out of the cache
    # status's plan cache: the result changes when the ref moves or a download adds a snapshot
    note(repo_dir(repo_id) / "refs" / ref, repo_dir(repo_id) / "snapshots")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir(), revision=ref)
    if not isinstance(found, str):
        return None
    snap = Path(found).parent
    note(snap)
    commit = snap.name
    return commit if COMMIT.fullmatch(commit) and complete(snap) else None


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def complete(snap: Path) -> bool:
    """Whether a snapshot holds a whole model: its config, and weights (every shard its index names). A
    download cut short (a full disk, ^C) leaves a snapshot with some files and not others."""
    for index in WEIGHT_INDEXES:
        if (snap / index).is_file():
            try:
                shards = set(json.loads((snap / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((snap / s).is_file() for s in shards)
    return any(snap.glob("*.safetensors")) or any(snap.glob("pytorch_model*.bin"))


def download(repo_id: str, ref: str = "main", reporter: Reporter | None = None) -> str:
    """Download the model `repo_id` at `ref` into the cache (what is already there is not fetched again;
    an interrupted file resumes) and return the commit it resolved to."""
    reporter = reporter or Reporter()
    if offline():
        commit = cached_commit(repo_id, ref)
        if commit is None:
            raise not_cached(repo_id, ref, "HF_HUB_OFFLINE is set")
        return commit
    reporter.say(f"downloading {repo_id}{'' if ref == 'main' else '@' + ref} from {endpoint()}")
    path = _snapshot_download(repo_id, ref, MODEL_FILES)
    if not any(path.glob("*.safetensors")):
        path = _snapshot_download(repo_id, path.name, FALLBACK_WEIGHTS)
    if not (path / "config.json").is_file():
        raise HubError(
            f"{repo_id} at {path.name[:12]} has no config.json: it is not a transformers model",
            "give the id of a model that AutoModelForCausalLM loads",
        )
    return path.name


def ensure(repo_id: str, ref: str = "main", reporter: Reporter | None = None) -> str:
    """The commit of `repo_id` at `ref`: from the cache when it is there (no request), else downloaded."""
    commit = cached_commit(repo_id, ref)
    return commit if commit is not None else download(repo_id, ref, reporter)


def not_cached(repo_id: str, ref: str, why: str) -> HubError:
    what = repo_id if ref == "main" else f"{repo_id}@{ref}"
    return HubError(
        f"{what} is not in the Hugging Face cache ({cache_dir()}), and {why}",
        f"`hf download {repo_id}{'' if ref == 'main' else ' --revision ' + ref}` where there is network (then "
        "copy the cache here, or set HF_HOME to it), or unset HF_HUB_OFFLINE to let gitbake download it",
    )


def _snapshot_download(repo_id: str, ref: str, patterns: list[str]) -> Path:
    from huggingface_hub import errors, snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=ref,
                cache_dir=cache_dir(),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                token=os.environ.get("HF_TOKEN") or None,
                allow_patterns=patterns,
            )
        )
    except errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is gated: its licence must be accepted on {endpoint()}/{repo_id}",
            "accept it there, then set HF_TOKEN (or `hf auth login`) with that account's token",
        ) from None
    except errors.RepositoryNotFoundError:
        token = "HF_TOKEN is set but does not give access" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
        raise HubError(
            f"no model {repo_id} on {endpoint()}, or it is private and {token}",
            "check the id (org/name); for a private model set HF_TOKEN to a token that can read it",
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision `{ref}` on {endpoint()}", "give a branch, tag or commit") from None
    except errors.LocalEntryNotFoundError as exc:
        raise not_cached(repo_id, ref, f"{endpoint()} could not be reached ({_first_line(exc)})") from None
    except errors.HfHubHTTPError as exc:
        raise HubError(f"{endpoint()} refused {repo_id}: {_first_line(exc)}", "try again later") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _drop_incomplete(repo_id)
            raise HubError(
                f"the disk filled up while downloading {repo_id} into {cache_dir()}; the partial files were removed",
                "free some space (or point HF_HOME at a larger disk) and run the command again",
            ) from None
        raise


def _drop_incomplete(repo_id: str) -> None:
    """Remove the partial downloads of `repo_id`: the cache then holds only whole files."""
    for f in (repo_dir(repo_id) / "blobs").glob("*.incomplete"):
        f.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
