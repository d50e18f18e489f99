"""Bad-input cases on the network: hub endpoints that never answer, trickle their answer, answer
with a captive portal's HTML page, or are malformed. The model is given as a hub id; each case
starts a :class:`HostileHub` (``tests/hub_server.py``) on loopback for the run and points
``HF_ENDPOINT`` at it, with deadlines of a few seconds. Registered into :data:`.cases.CASES`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .cases import _case, good_model

__all__ = ["HUB_LIMITS"]

#: Deadlines for the network cases (AWM_HUB_*; the defaults are minutes).
HUB_LIMITS = {"AWM_HUB_TIMEOUT": "1", "AWM_HUB_DEADLINE": "3", "AWM_HUB_STALL": "1", "AWM_HUB_RETRIES": "0"}


def _hostile_hub_class():
    try:
        from hub_server import HostileHub  # tests/ on the path (pytest)
    except ImportError:
        from tests.hub_server import HostileHub  # the repository root on the path (python -m tests.bad_input.table)
    return HostileHub


def _hub_environment(root: Path, endpoint: str) -> dict[str, str]:
    return {**HUB_LIMITS, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(root / "cache" / "hub"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}


def _hostile(mode: str, **limits: str):
    """A hostile stand-in hub (``mode``), with ``limits`` overriding ``HUB_LIMITS``."""
    @contextlib.contextmanager
    def start(root: Path) -> Iterator[dict[str, str]]:
        with _hostile_hub_class()(mode) as server:
            yield {**_hub_environment(root, server.endpoint), **limits}

    return start


def _endpoint(value: str):
    @contextlib.contextmanager
    def start(root: Path) -> Iterator[dict[str, str]]:
        yield _hub_environment(root, value)

    return start


def _hub_pair(root: Path) -> list[str]:
    return ["org/tiny", str(good_model(root))]


@_case("hub_silent", "HF_ENDPOINT at a server that accepts and never answers", 3, "did not answer within 1 s",
       "org/tiny", environment=_hostile("silent", AWM_HUB_DEADLINE="60"), subprocess=True)  # the timeout, not the deadline
def _hub_silent(root):
    return _hub_pair(root)


@_case("hub_trickle_body", "HF_ENDPOINT at a server that sends headers, then the body a byte at a time", 3,
       "took longer than the 3 s allowed", "org/tiny", environment=_hostile("drip"), subprocess=True)
def _hub_trickle_body(root):
    return _hub_pair(root)


@_case("hub_trickle_headers", "HF_ENDPOINT at a server that sends its headers a byte at a time", 3,
       "took longer than the 3 s allowed", "org/tiny", environment=_hostile("drip_headers"))
def _hub_trickle_headers(root):
    return _hub_pair(root)


@_case("hub_captive_portal", "HF_ENDPOINT answering 200 text/html (a captive portal or proxy page)", 3,
       "did not answer like a Hugging Face Hub", "org/tiny", environment=_hostile("html"), subprocess=True)
def _hub_captive_portal(root):
    return _hub_pair(root)


@_case("hub_download_portal", "download through a captive portal (the download command's error line)", 3,
       "did not answer like a Hugging Face Hub", "org/tiny", environment=_hostile("html"), command="download",
       stdout=True, subprocess=True)
def _hub_download_portal(root):
    return ["org/tiny"]


@_case("endpoint_bad_ipv6", "HF_ENDPOINT=http://[::1 (unclosed IPv6 address)", 2, "not a valid http(s) URL",
       "HF_ENDPOINT", environment=_endpoint("http://[::1"), subprocess=True)
def _endpoint_ipv6(root):
    return _hub_pair(root)


@_case("endpoint_bad_port", "HF_ENDPOINT with port 99999", 2, "Port out of range", "HF_ENDPOINT",
       environment=_endpoint("http://localhost:99999"))
def _endpoint_port(root):
    return _hub_pair(root)


@_case("hub_portal_files", "a hub API answered properly, its files with an HTML page (a rewriting proxy)", 3,
       "no hub headers on its files", "org/tiny", environment=_hostile("html_files"))
def _hub_portal_files(root):
    return _hub_pair(root)


def _stand_in_hub(repos: dict[str, dict[str, bytes]]):
    """A stand-in hub serving ``repos`` (repo id -> file name -> bytes) for the run."""
    @contextlib.contextmanager
    def start(root: Path) -> Iterator[dict[str, str]]:
        try:
            from hub_server import StandInHub
        except ImportError:
            from tests.hub_server import StandInHub
        with StandInHub() as server:
            for repo_id, files in repos.items():
                server.add_repo(repo_id, files)
            yield _hub_environment(root, server.endpoint)

    return start


#: A GGUF repository's file list (what selection reads; no byte of a model is fetched before it).
_GGUF_REPO = {"org/llama-gguf": {"llama-Q4_K_M.gguf": b"GGUF", "llama-Q8_0-00001-of-00002.gguf": b"GGUF",
                                 "llama-Q8_0-00002-of-00002.gguf": b"GGUF", "README.md": b"# llama\n"},
              "org/tiny": {"config.json": b"{}", "model.safetensors": b"\0" * 16}}


@_case("hub_gguf_unknown_quant", "a GGUF hub id whose quantisation type the repository does not hold "
       "(org/llama-gguf:Q5_K_S)", 3, "no GGUF model(s) match 'Q5_K_S' (quants available: Q4_K_M, Q8_0)",
       "org/llama-gguf", environment=_stand_in_hub(_GGUF_REPO))
def _hub_gguf_unknown_quant(root):
    return ["org/llama-gguf:Q5_K_S", str(good_model(root))]


@_case("hub_gguf_ambiguous", "a hub id of a repository holding several GGUF models, without :QUANT", 3,
       "holds 2 GGUF models (quants available: Q4_K_M, Q8_0); choose one with", "org/llama-gguf",
       environment=_stand_in_hub(_GGUF_REPO))
def _hub_gguf_ambiguous(root):
    return ["org/llama-gguf", str(good_model(root))]


@_case("hub_gguf_no_gguf", "a :QUANT suffix on a repository without GGUF files", 3,
       "holds no .gguf file, so :Q4_K_M selects nothing", "org/tiny", environment=_stand_in_hub(_GGUF_REPO))
def _hub_gguf_no_gguf(root):
    return ["org/tiny:Q4_K_M", str(good_model(root))]
