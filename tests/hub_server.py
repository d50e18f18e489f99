"""A stand-in Hugging Face Hub on loopback, for testing downloads without the network.

It speaks the part of the hub's HTTP API that huggingface_hub's downloads use:

- ``GET /api/models/{owner}/{name}[/revision/{rev}]``: repository info (``sha``, ``siblings``);
- ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}``: small files answered directly with
  ``ETag`` (git blob sha1), ``X-Repo-Commit`` and ``Content-Length``; large files (safetensors,
  pickle, GGUF) answered like the hub's LFS files, ``302`` to a second loopback server (another
  origin, like the hub's CDN) with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``;
- the "CDN" serves blobs by sha256 and honours ``Range: bytes=N-`` and ``bytes=N-M`` with ``206``.

Files are held in memory (``bytes``) or served from disk (a ``Path``: ``add_folder(...,
on_disk=True)``, for checkpoints of real size). ``StandInHub(rate=...)`` limits the CDN to that
many bytes per second, shared by all its connections (a link's bandwidth); ``cdn_bytes`` counts
the body bytes the CDN sent.

Errors carry the headers huggingface_hub maps to its exceptions: ``X-Error-Code: RepoNotFound``
(401), ``GatedRepo`` (401), ``RevisionNotFound`` (404), ``EntryNotFound`` (404), and
``X-Error-Message: Invalid credentials in Authorization header`` for a rejected token (401).

Every request is logged (``server.log``), and ``server.interrupt(name, after_bytes, then)``
makes the next download of a file stop after ``after_bytes`` bytes (the connection is closed
mid-body), optionally answering the following attempt with an error status;
``server.stall(name, "silent" | "drip")`` makes every download of a file hang or trickle.

:class:`HostileHub` is an endpoint that misbehaves on every request: it never answers, trickles
its answer (body or headers) a byte at a time, or answers with an HTML login page.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from awm_jax.synthetic import llama_config, write_model

__all__ = ["HostileHub", "HubRepo", "Request", "StandInHub", "isolate_hub_client", "hub", "llama_tensors",
           "write_llama_model", "write_tiny_model"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class HubRepo:
    """A repository: its files at one commit, the refs pointing to it, its access rules."""

    repo_id: str
    files: dict[str, bytes | Path]
    refs: tuple[str, ...] = ("main",)
    gated: bool = False
    commit: str = ""

    def __post_init__(self):
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + bytes.fromhex(_sha256(self.files[name])))
        self.commit = digest.hexdigest()


@dataclass(frozen=True)
class Request:
    """One logged request."""

    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class _Interruption:
    after_bytes: int
    then_status: int | None
    from_byte: int = 0  # only range requests starting at or after this byte
    stage: int = 0  # 0: next GET is cut short; 1: next GET answers then_status; 2: done


def _lfs(name: str) -> bool:
    return name.endswith(_LFS_SUFFIXES)


def _git_sha1(data: bytes | Path) -> str:
    if isinstance(data, Path):
        return hashlib.sha1(f"blob {data.stat().st_size}\0{data}".encode()).hexdigest()  # a stand-in id
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_DIGESTS: dict[tuple, str] = {}


def _sha256(data: bytes | Path) -> str:
    """SHA-256 of a file's content (a file on disk is hashed once per size and mtime)."""
    if not isinstance(data, Path):
        return hashlib.sha256(data).hexdigest()
    st = data.stat()
    key = (str(data), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(data, "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _size(data: bytes | Path) -> int:
    return data.stat().st_size if isinstance(data, Path) else len(data)


def _slice(data: bytes | Path, start: int, end: int):
    """The bytes ``[start, end)`` in pieces of at most 1 MiB."""
    if not isinstance(data, Path):
        for at in range(start, end, 1 << 20):
            yield data[at:min(end, at + (1 << 20))]
        return
    with open(data, "rb") as f:
        f.seek(start)
        at = start
        while at < end:
            chunk = f.read(min(1 << 20, end - at))
            if not chunk:
                return
            at += len(chunk)
            yield chunk


@dataclass
class StandInHub:
    """Two loopback HTTP servers (hub and CDN) serving :class:`HubRepo` s.

    Use as a context manager; ``endpoint`` is the value for ``HF_ENDPOINT``.
    """

    tokens: frozenset[str] = frozenset({"hf_valid_token"})
    rate: float | None = None
    cdn_bytes: int = 0
    repos: dict[str, HubRepo] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    _blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    _interruptions: dict[str, _Interruption] = field(default_factory=dict)
    _stalls: dict[str, str] = field(default_factory=dict)
    _closing: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_send: float = 0.0

    # ---- set-up ------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], *, refs: tuple[str, ...] = ("main",),
                 gated: bool = False) -> HubRepo:
        """Serves ``files`` (path -> bytes) as ``repo_id`` at the given refs; returns the repo."""
        repo = HubRepo(repo_id, dict(files), refs, gated)
        self.repos[repo_id] = repo
        for name, data in files.items():
            if _lfs(name):
                self._blobs[_sha256(data)] = (name, data)
        return repo

    def add_folder(self, repo_id: str, folder: str | Path, *, on_disk: bool = False, **kwargs) -> HubRepo:
        """Serves every file under ``folder`` (relative paths) as ``repo_id``; with ``on_disk``
        the weight files are read from disk as they are served (not held in memory)."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): (p if on_disk and _lfs(p.name) else p.read_bytes())
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, **kwargs)

    def _throttle(self, n: int) -> None:
        """Waits until ``n`` more bytes fit the CDN's ``rate`` (shared by all connections)."""
        if not self.rate:
            return
        import time

        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_send)
            self._next_send = start + n / self.rate
            until = self._next_send
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def interrupt(self, name: str, after_bytes: int, then_status: int | None = None, from_byte: int = 0) -> None:
        """The next download of file ``name`` stops after ``after_bytes`` bytes; the one after
        answers ``then_status`` if given (e.g. 503), later ones are served normally. With
        ``from_byte``, only requests for a range starting at or after that byte count."""
        self._interruptions[name] = _Interruption(after_bytes, then_status, from_byte)

    def stall(self, name: str, how: str) -> None:
        """Every download of file ``name`` from the CDN stalls: ``"silent"`` (the request is read
        and never answered) or ``"drip"`` (headers, then one byte of the body every 0.25 s)."""
        if how not in ("silent", "drip"):
            raise ValueError(how)
        self._stalls[name] = how

    def requests(self, server: str | None = None, method: str | None = None) -> list[Request]:
        """Logged requests, optionally only those to one server / with one method."""
        with self._lock:
            return [r for r in self.log if (server is None or r.server == server) and (method is None or r.method == method)]

    def requested_files(self) -> set[str]:
        """Names of the repository files that were HEAD- or GET-requested (hub resolve URLs)."""
        names = set()
        for r in self.requests("hub"):
            parts = r.path.split("/")
            if len(parts) > 5 and parts[3] == "resolve":
                names.add(unquote("/".join(parts[5:])))
        return names

    # ---- serving -----------------------------------------------------------------------
    def __enter__(self) -> StandInHub:
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for server in (self._hub, self._cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def _handler(self, role: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # headers and body go out in separate writes: without this, Nagle's algorithm and
                # delayed ACKs add ~40 ms to every request
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):  # keep test output quiet
                pass

            def _record(self):
                with hub._lock:
                    hub.log.append(Request(role, self.command, urlsplit(self.path).path,
                                           self.headers.get("Range"), self.headers.get("Authorization")))

            def do_HEAD(self):
                self._record()
                (hub._serve_hub if role == "hub" else hub._serve_cdn)(self, head=True)

            def do_GET(self):
                self._record()
                (hub._serve_hub if role == "hub" else hub._serve_cdn)(self, head=False)

        return Handler

    @staticmethod
    def _reply(h, status: int, headers: dict[str, str] | None = None, body: bytes = b"", head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str | None, message: str, head: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._reply(h, status, headers, json.dumps({"error": message}).encode(), head)

    def _check_access(self, h, repo_id: str, head: bool) -> HubRepo | None:
        auth = h.headers.get("Authorization")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token is not None and token not in self.tokens:
            self._error(h, 401, None, "Invalid credentials in Authorization header", head)
            return None
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 401, "RepoNotFound", "Repository not found", head)
            return None
        return repo

    def _revision(self, h, repo: HubRepo, revision: str, head: bool) -> bool:
        if revision in repo.refs or revision == repo.commit:
            return True
        self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + revision, head)
        return False

    def _serve_hub(self, h, head: bool) -> None:
        parts = [unquote(p) for p in urlsplit(h.path).path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            repo = self._check_access(h, repo_id, head)
            if repo is None or not self._revision(h, repo, revision, head):
                return
            info = {"id": repo_id, "sha": repo.commit, "private": False, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": name} for name in sorted(repo.files)]}
            self._reply(h, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), head)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._check_access(h, repo_id, head)
            if repo is None or not self._revision(h, repo, revision, head):
                return
            if repo.gated and h.headers.get("Authorization") is None:
                self._error(h, 401, "GatedRepo", "Access to model " + repo_id + " is restricted", head)
                return
            if name not in repo.files:
                self._error(h, 404, "EntryNotFound", "Entry not found", head, commit=repo.commit)
                return
            data = repo.files[name]
            if _lfs(name):
                sha = _sha256(data)
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{_git_sha1(data)}"',
                           "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(_size(data)),
                           "Location": f"{self.cdn}/blobs/{sha}"}
                self._reply(h, 302, headers, b"", head)
            else:
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{_git_sha1(data)}"', "Accept-Ranges": "bytes"}
                self._reply(h, 200, headers, data, head)
            return
        self._error(h, 404, None, "Not found", head)

    def _serve_cdn(self, h, head: bool) -> None:
        parts = urlsplit(h.path).path.split("/")
        blob = self._blobs.get(parts[2]) if len(parts) == 3 and parts[1] == "blobs" else None
        if blob is None:
            self._reply(h, 404, {}, b"no such blob", head)
            return
        name, data = blob
        if not head and self._stalls.get(name) == "silent":
            self._closing.wait()
            return
        start, size = 0, _size(data)
        end = size
        rng = h.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(size, int(last) + 1) if last.strip() else size
        plan = self._interruptions.get(name) if not head else None
        if plan is not None and start < plan.from_byte:
            plan = None
        if plan is not None and plan.stage == 1:
            plan.stage = 2
            if plan.then_status is not None:
                self._reply(h, plan.then_status, {"Content-Type": "text/plain"}, b"unavailable", head)
                return
        body = data[start:end] if not isinstance(data, Path) else None
        status = 206 if rng else 200
        h.send_response(status)
        h.send_header("Content-Length", str(end - start))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{parts[2]}"')
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        h.end_headers()
        if head:
            return
        if body is None or self.rate:
            for piece in _slice(data, start, end):
                self._throttle(len(piece))
                h.wfile.write(piece)
                with self._lock:
                    self.cdn_bytes += len(piece)
            return
        with self._lock:
            self.cdn_bytes += len(body)
        if self._stalls.get(name) == "drip":
            for i in range(len(body)):
                if self._closing.wait(0.25):
                    return
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
            return
        if plan is not None and plan.stage == 0:
            plan.stage = 1
            h.wfile.write(body[: plan.after_bytes])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # cut off mid-body, like a dropped connection
            return
        h.wfile.write(body)


# ---- test fixtures -----------------------------------------------------------------------
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def isolate_hub_client(monkeypatch: pytest.MonkeyPatch, home: Path, endpoint: str) -> list:
    """Points huggingface_hub at ``endpoint`` with a private ``HF_HOME`` and no token, and
    blocks every connection or name lookup that is not loopback.

    huggingface_hub reads ``HF_ENDPOINT``/``HF_HOME`` once at import, so its ``constants`` are
    patched as well as the environment (awm_jax reads the environment at call time).

    Returns:
      A list collecting the blocked non-loopback addresses (tests assert it stays empty).
    """
    from huggingface_hub import constants

    hf_home = home / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)

    blocked: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            blocked.append(address)
            raise ConnectionRefusedError(f"test blocked a connection to {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOOPBACK and host is not None:
            blocked.append(host)
            raise socket.gaierror(f"test blocked a name lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return blocked


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running :class:`StandInHub` with huggingface_hub pointed at it (loopback only)."""
    from huggingface_hub import close_session

    with StandInHub() as server:
        blocked = isolate_hub_client(monkeypatch, tmp_path, server.endpoint)
        close_session()  # no pooled connection from an earlier test
        yield server
        close_session()
    assert not blocked, f"a test tried to reach beyond loopback: {blocked}"


def write_tiny_model(folder: Path, *, seed: int = 0, shard_bytes: int | None = 40_000, decoys: bool = True) -> Path:
    """A small Llama checkpoint (~100 kB, sharded with an index unless ``shard_bytes`` is None),
    plus tokenizer files, and with ``decoys`` files awm_jax must never fetch."""
    rng = np.random.default_rng(seed)
    vocab, hidden, layers = 256, 64, 2
    arrays = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj"):
            arrays[f"model.layers.{i}.self_attn.{proj}.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float32)
    specs = [(name, a.shape, np.float32, (lambda a=a: a)) for name, a in arrays.items()]
    config = llama_config(vocab, hidden, layers, 4, 4, dtype="float32")
    write_model(folder, specs, config, [f"tok{i}" for i in range(vocab)], shard_bytes)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "generation_config.json").write_text('{"bos_token_id": 1}')
    if decoys:
        (folder / "README.md").write_text("# tiny\n")
        (folder / "pytorch_model.bin").write_bytes(b"pickle decoy" * 1000)
        (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
        (folder / "consolidated.00.pth").write_bytes(b"meta decoy" * 1000)
        (folder / "adapter_model.safetensors").write_bytes(b"adapter decoy" * 1000)
        (folder / "model.gguf").write_bytes(b"gguf decoy" * 1000)
        (folder / "original").mkdir(exist_ok=True)
        (folder / "original" / "consolidated.00.pth").write_bytes(b"meta decoy" * 1000)
        (folder / "original" / "tokenizer.model").write_bytes(b"meta tokenizer decoy")
    return folder


def llama_tensors(vocab: int, hidden: int, layers: int, intermediate: int, kv_dim: int | None = None,
                  dtype=np.float32, seed: int = 0, tile: bool = False) -> list:
    """Every tensor of a Llama ``*ForCausalLM`` checkpoint (embedding, per layer the norms, Q/K/V/O
    and MLP, final norm, LM head), in the name order transformers saves them, as ``TensorSpec`` s.
    ``tile`` fills large tensors by repeating one random block (fast, for checkpoints of real size)."""
    kv_dim = kv_dim or hidden
    block = (np.random.default_rng(seed).standard_normal(1 << 20).astype(np.float32) * 0.02).astype(dtype)

    def make(shape, k):
        def values():
            if tile:
                return np.resize(np.roll(block, 7919 * k), shape)
            rng = np.random.default_rng([seed, k])
            if len(shape) == 1:
                return (1.0 + 0.1 * rng.standard_normal(shape)).astype(dtype)
            return (rng.standard_normal(shape) * 0.02).astype(dtype)
        return values

    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv_dim, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                       p + "mlp.down_proj.weight": (hidden, intermediate)})

    def order(name):  # transformers writes layers in order, each layer's tensors sorted
        parts = name.split(".")
        return (0, int(parts[2]), name) if parts[1:2] == ["layers"] else ((-1, 0, name) if "embed" in name else (1, 0, name))

    return [(name, shapes[name], dtype, make(shapes[name], k)) for k, name in enumerate(sorted(shapes, key=order))]


def write_llama_model(folder: Path, *, vocab: int = 256, hidden: int = 64, layers: int = 2, intermediate: int = 128,
                      heads: int = 4, kv_heads: int | None = None, dtype=np.float32, seed: int = 0,
                      shard_bytes: int | None = 60_000, tile: bool = False) -> Path:
    """A complete Llama checkpoint (every tensor transformers saves, sharded with an index unless
    ``shard_bytes`` is None), with config and tokenizer: what a hub repository holds."""
    import ml_dtypes

    name = "bfloat16" if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16) else np.dtype(dtype).name
    kv_heads = kv_heads or heads
    config = llama_config(vocab, hidden, layers, heads, kv_heads, dtype=name)
    config["intermediate_size"] = intermediate
    kv_dim = kv_heads * (hidden // heads)
    write_model(folder, llama_tensors(vocab, hidden, layers, intermediate, kv_dim, dtype=dtype, seed=seed, tile=tile), config,
                [f"tok{i}" for i in range(vocab)], shard_bytes)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    return folder


#: Hugging Face module -> llama.cpp tensor name (per layer).
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf_model(parent: Path, path: Path, qtype: str = "Q8_0", split: int = 1) -> list[Path]:
    """A Llama safetensors folder written as GGUF with the ``gguf`` package's writer, every tensor
    (2-D ones as ``qtype``, norms F32), the vocabulary in the metadata; ``split`` > 1 writes a split set."""
    import gguf

    from awm_jax.io.checkpoint import Checkpoint

    qtype = gguf.GGMLQuantizationType[qtype]
    ckpt = Checkpoint(parent)
    cfg = ckpt.config
    tensors = []
    for name in ckpt.tensors:
        w = np.asarray(ckpt.read(name), np.float32)
        parts = name.split(".")
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            gname = f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:-1])]}.weight"
        tensors.append((gname, w))
    paths = [path] if split == 1 else [path.with_name(f"{path.stem}-{k + 1:05d}-of-{split:05d}.gguf") for k in range(split)]
    for k, out in enumerate(paths):
        writer = gguf.GGUFWriter(out, "llama")
        if k == 0:
            writer.add_block_count(cfg["num_hidden_layers"])
            writer.add_embedding_length(cfg["hidden_size"])
            writer.add_head_count(cfg["num_attention_heads"])
            writer.add_head_count_kv(cfg["num_key_value_heads"])
            writer.add_feed_forward_length(cfg["intermediate_size"])
            writer.add_file_type(int(qtype))
            writer.add_tokenizer_model("gpt2")
            writer.add_token_list([f"tok{i}" for i in range(cfg["vocab_size"])])
        if split > 1:
            writer.add_uint16("split.no", k)
            writer.add_uint16("split.count", split)
        for gname, w in tensors[k::split]:
            if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gname, w)
            else:
                q = gguf.quants.quantize(w, qtype)
                writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return paths


# ---- hostile endpoints ---------------------------------------------------------------------
class HostileHub:
    """A loopback server that misbehaves the ways a broken network or a captive portal does.

    Modes:
      ``silent``: accepts the connection, reads the request, never answers.
      ``drip``: answers ``200`` with headers announcing a large body, then trickles the body.
      ``drip_headers``: trickles the status line and headers.
      ``html``: answers every request ``200 text/html`` with a login page (a captive portal or a
        proxy's error page where JSON or a file is expected).
      ``html_files``: answers the repository API properly (``config.json`` and
        ``model.safetensors``) but every file request with that login page.

    A trickle sends one byte every ``interval`` seconds (shorter than any read timeout, so only
    an overall deadline can stop it). Use as a context manager; ``endpoint`` is the value for
    ``HF_ENDPOINT``; ``connections`` counts the connections accepted.
    """

    MODES = ("silent", "drip", "drip_headers", "html", "html_files")
    PORTAL = b"<!DOCTYPE html><html><head><title>Wi-Fi login</title></head><body><form>Accept</form></body></html>"

    def __init__(self, mode: str, interval: float = 0.25):
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {self.MODES}")
        self.mode = mode
        self.interval = interval
        self.connections = 0
        self._stop = threading.Event()

    def __enter__(self) -> HostileHub:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True, name="hostile-hub").start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """The request's head (request line and headers), or ``None`` once the client or server is gone."""
        conn.settimeout(0.2)
        data = b""
        while b"\r\n\r\n" not in data and not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return None if self._stop.is_set() else data

    @staticmethod
    def _answer(conn: socket.socket, content_type: str, body: bytes, extra: str = "") -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                     .encode() + body)

    def _trickle(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(self.interval):
                return
            conn.sendall(data[i:i + 1])

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                while (head := self._read_request(conn)) is not None:
                    if self.mode == "html_files" and head.split(b" ", 2)[1].startswith(b"/api/models/"):
                        info = {"id": "org/tiny", "sha": "0" * 40, "siblings": [{"rfilename": "config.json"},
                                                                                {"rfilename": "model.safetensors"}]}
                        self._answer(conn, "application/json", json.dumps(info).encode())
                        continue
                    if self.mode == "silent":
                        self._stop.wait()
                    elif self.mode == "drip":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                        self._trickle(conn, b'{"id": "' + b"x" * 99990 + b'"}')
                    elif self.mode == "drip_headers":
                        self._trickle(conn, b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"p" * 100000 + b"\r\n\r\n")
                    else:
                        self._answer(conn, "text/html; charset=utf-8", self.PORTAL)
                        continue
                    return
        except OSError:
            pass
