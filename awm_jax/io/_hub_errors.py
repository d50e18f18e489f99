"""Hub download failures as one line each: huggingface_hub and network errors, and passed deadlines,
become :class:`~awm_jax.errors.CheckpointError` s saying what happened and what to do."""

from __future__ import annotations

import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from awm_jax.errors import CheckpointError, UsageError
from awm_jax.io._network import DeadlineExceeded, NetworkLimits, Watch

__all__ = ["hub_errors", "transient"]

_DEFAULT_ENDPOINT = "https://huggingface.co"
_LOGIN_HINT = "log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set HF_TOKEN"


def transient(error: BaseException) -> bool:
    """A failure worth retrying: a timeout, a connection that broke off, a 429 or 5xx answer."""
    if isinstance(error, DeadlineExceeded):
        return False
    if _network_failure(error) == "broken" or "Timeout" in type(error).__name__:
        return True
    status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _network_failure(error: BaseException) -> str | None:
    """``"connect"`` or ``"broken"`` for a network error of the HTTP client huggingface_hub uses, else ``None``."""
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        cls = getattr(sys.modules.get(module), attr, None)
        if isinstance(cls, type) and isinstance(error, cls):
            connecting = type(error).__name__ in {"ConnectError", "ConnectTimeout", "ProxyError", "ConnectionError"}
            return "connect" if connecting else "broken"
    return None


@contextmanager
def hub_errors(hub_id: Any, endpoint: str | None, cache: Path, watch: Watch):
    """Turns huggingface_hub and network errors, and passed deadlines, into one-line :class:`CheckpointError` s."""
    hub = endpoint or _DEFAULT_ENDPOINT
    try:
        yield
    except (CheckpointError, UsageError):
        raise
    except Exception as e:
        reason = str(e) if isinstance(e, DeadlineExceeded) else watch.expired
        if reason is not None:
            raise CheckpointError(
                f"{hub_id}: the download from {hub} {reason}; check the network or proxy (for a slow link raise the "
                "AWM_HUB_* limits, see docs/errors.md), then run the same command again to resume"
            ) from None
        _translate(e, hub_id, hub, cache, watch.limits)


def _translate(error: Exception, hub_id: Any, hub: str, cache: Path, limits: NetworkLimits) -> None:
    """Raises the :class:`CheckpointError` for a huggingface_hub or network error (or ``error`` itself: a bug)."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    unreachable = (
        f"{hub_id}: cannot reach the hub at {hub}; check the network or proxy, set HF_ENDPOINT to a reachable "
        "mirror, or set HF_HUB_OFFLINE=1 to use the local cache only"
    )

    not_a_hub = (
        f"{hub_id}: {hub} did not answer like a Hugging Face Hub (not JSON: a captive portal's login page or a "
        "proxy's error page?); log in to the network, or set HF_ENDPOINT to a hub or mirror"
    )

    def broken(e: BaseException) -> str:
        if "Timeout" in type(e).__name__:
            return (f"{hub_id}: the hub at {hub} did not answer within {limits.timeout_s:g} s (AWM_HUB_TIMEOUT); "
                    "check the network or proxy, or run the same command again later")
        return f"{hub_id}: the connection to {hub} broke off ({_first_line(e)}); run the same command again to resume"

    try:
        raise error
    except OfflineModeIsEnabled:
        raise CheckpointError(f"{hub_id}: huggingface_hub is in offline mode (HF_HUB_OFFLINE) and the files are not cached; unset it to download") from None
    except GatedRepoError:
        raise CheckpointError(
            f"{hub_id}: gated repository; accept its terms at {hub}/{hub_id.repo_id}, then {_LOGIN_HINT}"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{hub_id}: repository not found on {hub} (or it is private or gated and no valid token was sent); "
            f"check the id, or {_LOGIN_HINT}"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{hub_id}: revision {hub_id.revision!r} not found; check the branch, tag or commit"
        ) from None
    except LocalEntryNotFoundError as e:
        if type(e.__cause__).__name__ == "FileMetadataError":  # answered, but not with a hub's headers
            raise CheckpointError(not_a_hub.replace("(not JSON:", "(no hub headers on its files:")) from None
        raise CheckpointError(unreachable) from None
    except EntryNotFoundError as e:
        raise CheckpointError(
            f"{hub_id}: a file the repository lists is missing on the hub ({_first_line(e)}); try again later or pick another revision"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise CheckpointError(f"{hub_id}: the hub rejected the token (401 Unauthorized); {_LOGIN_HINT} with a valid token") from None
        if status == 403:
            raise CheckpointError(f"{hub_id}: access denied (403); request access on {hub}/{hub_id.repo_id} and {_LOGIN_HINT}") from None
        if status == 429:
            raise CheckpointError(f"{hub_id}: the hub is rate-limiting requests (429); wait a few minutes and run again, logged in") from None
        if status is not None and status >= 500:
            raise CheckpointError(f"{hub_id}: the hub answered {status} (server error); run again later to resume") from None
        raise CheckpointError(f"{hub_id}: the hub answered {status}: {_first_line(e)}; check HF_ENDPOINT and the id") from None
    except json.JSONDecodeError:
        raise CheckpointError(not_a_hub) from None
    except OSError as e:
        if _network_failure(e) is not None:
            raise CheckpointError(unreachable if _network_failure(e) == "connect" else broken(e)) from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"{hub_id}: no space left in the hub cache {cache}; free space or set HF_HUB_CACHE, then run again to resume") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise CheckpointError(f"{hub_id}: cannot write to the hub cache {cache} ({e.strerror}); fix its permissions or set HF_HUB_CACHE") from None
        raise CheckpointError(f"{hub_id}: download failed ({_first_line(e)}); run the same command again to resume") from None
    except Exception as e:
        failure = _network_failure(e)
        if failure is None:
            raise
        raise CheckpointError(unreachable if failure == "connect" else broken(e)) from None


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] + ("..." if len(text) > 200 else "")
