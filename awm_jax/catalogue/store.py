"""Catalogue folders: build, verify, publish and fetch (docs/catalogue.md).

A catalogue is a folder::

    MANIFEST.json                      # format, versions, one entry per model
    sketches/<id>-<sha256[:16]>.safetensors

Each entry records the model id, where it came from (a folder, or a hub id and its resolved
commit), its architecture and shapes, the sketch's file, SHA-256 and size, and the sketch and
algorithm versions. Loading checks the manifest; reading an entry checks its file's size and
SHA-256 before parsing it, so a damaged or substituted file is refused (``CacheError``, exit 7)
with one line naming it. Published and fetched as a hub *dataset* repository.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path, PurePosixPath

from awm_jax._version import ALGORITHM_VERSION, __version__
from awm_jax.catalogue.sketch import SKETCH_VERSION, decode_sketch, encode_sketch, make_sketch, sketch_digest
from awm_jax.engine.sketch import Sketch
from awm_jax.errors import CacheError, CheckpointError, UsageError
from awm_jax.io.atomic import atomic_write

__all__ = [
    "CATALOGUE_FORMAT",
    "Catalogue",
    "CatalogueEntry",
    "ModelSource",
    "build_catalogue",
    "fetch_catalogue",
    "load_catalogue",
    "open_catalogue",
    "publish_catalogue",
    "read_list",
    "sketch_file_name",
    "source_of",
    "suite_sources",
    "write_entry",
]

CATALOGUE_FORMAT = "awm_jax.catalogue/1"
MANIFEST = "MANIFEST.json"
_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model to put in a catalogue.

    Attributes:
      id: the entry's identifier (what a scan reports).
      spec: a model folder or a hub id ``owner/name[@revision]``.
    """

    id: str
    spec: str


@dataclasses.dataclass(frozen=True)
class CatalogueEntry:
    """One manifest entry (see the module docstring); ``commit`` is ``None`` for a local folder."""

    id: str
    source: str
    commit: str | None
    layout: str
    architecture: str
    hidden_size: int
    num_layers: int
    vocab_rows: int
    sketch_tokens: int
    sketch_dims: int
    model_bytes: int
    file: str
    sha256: str
    bytes: int
    sketch_version: str = SKETCH_VERSION
    algorithm: str = ALGORITHM_VERSION

    @property
    def fraction(self) -> float:
        """Sketch size as a fraction of the model's embedding + Q/K bytes."""
        return self.bytes / self.model_bytes if self.model_bytes else float("nan")


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """A loaded catalogue: its folder and entries (sketches are read, and verified, on demand)."""

    folder: Path
    entries: tuple[CatalogueEntry, ...]
    origin: str = ""

    def sketch(self, entry: CatalogueEntry) -> Sketch:
        """Reads and verifies one entry's sketch.

        Raises:
          CacheError: the file is missing, has another size or SHA-256, or does not parse.
        """
        path = self.folder / entry.file
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CacheError(f"{path}: cannot read catalogue entry {entry.id!r} ({e.strerror}); build or fetch the "
                             "catalogue again") from None
        if len(data) != entry.bytes or sketch_digest(data) != entry.sha256:
            raise CacheError(f"{path}: catalogue entry {entry.id!r} does not match its manifest hash (damaged or "
                             "replaced); build or fetch the catalogue again")
        return decode_sketch(data, str(path))


def read_list(path: str | os.PathLike) -> list[ModelSource]:
    """Model sources from a list file: one per line, ``SPEC`` or ``ID SPEC`` (``#`` comments).

    Raises:
      UsageError: the file cannot be read, or two lines give the same id.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the model list ({e}); give a text file, one model per line") from None
    sources = []
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise UsageError(f"{path}: line {line!r} has {len(words)} fields; write SPEC or ID SPEC")
        spec = words[-1]
        sources.append(ModelSource(words[0], spec) if len(words) == 2 else source_of(spec))
    return sources


def suite_sources(name: str) -> list[ModelSource]:
    """The models of a suite (``awm_jax.io.suites``), keyed as in the suite."""
    from awm_jax.io.suites import load_suite

    suite = load_suite(name)
    return [ModelSource(m.key, m.spec) for m in suite.models.values()]


def source_of(spec: str) -> ModelSource:
    """A model source named after its folder (a path) or its hub id."""
    path = Path(spec)
    return ModelSource(path.resolve().name if os.path.lexists(spec) else spec, spec)


def write_entry(folder: Path, entries: dict[str, CatalogueEntry], entry: CatalogueEntry, data: bytes) -> None:
    """Writes one sketch file, then the manifest with ``entry`` added to (or replacing in) ``entries``
    (each file atomically: a crash leaves the previous manifest, which never names a missing file).

    Raises:
      OSError: the folder cannot be written.
    """
    atomic_write(folder / entry.file, data)
    entries[entry.id] = entry
    body = {"format": CATALOGUE_FORMAT, "sketch_version": SKETCH_VERSION, "algorithm": ALGORITHM_VERSION,
            "awm_jax": __version__, "entries": [dataclasses.asdict(e) for e in entries.values()]}
    atomic_write(folder / MANIFEST, (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode())


def sketch_file_name(entry_id: str, digest: str) -> str:
    """The file of an entry inside the catalogue folder."""
    return f"sketches/{_ID.sub('_', entry_id).strip('_')[:80] or 'model'}-{digest[:16]}.safetensors"


def build_catalogue(sources: list[ModelSource], folder: str | os.PathLike, *, cache=None, layout: str | None = None,
                    progress=None) -> Catalogue:
    """Sketches every model into ``folder`` (created; an existing catalogue there keeps its other
    entries, and an entry of the same id is replaced).

    Args:
      sources: the models.
      folder: the catalogue folder.
      cache: a :class:`~awm_jax.fingerprint.FingerprintCache` for the models' Grams, or ``None``.
      layout: force every model's layout.
      progress: called with ``(entry)`` after each model.

    Raises:
      UsageError: duplicate ids, or ``folder`` is something other than a catalogue.
      AWMError: a model cannot be read (the catalogue is left as it was before that model).
    """
    from awm_jax.engine.models import prepare_model
    from awm_jax.io.hub import parse_hub_id

    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise UsageError(f"model ids must be unique in a catalogue; repeated: {', '.join(dup)}")
    folder = Path(folder)
    existing: list[CatalogueEntry] = []
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder}: is a file; give a folder for the catalogue")
        if (folder / MANIFEST).exists():
            existing = list(load_catalogue(folder).entries)
        elif any(folder.iterdir()):
            raise UsageError(f"{folder}: not empty and not a catalogue (no {MANIFEST}); choose an empty or new folder")
    try:
        (folder / "sketches").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{folder}: cannot create the catalogue folder ({e.strerror})") from None
    entries = {e.id: e for e in existing}
    for source in sources:
        model = prepare_model(source.spec, layout=layout, cache=cache)
        sketch, plan = make_sketch(model, source.id)
        data = encode_sketch(sketch)
        digest = sketch_digest(data)
        r = model.resolved
        where = Path(model.path) if Path(model.path).is_dir() else Path(model.path).parent  # a GGUF model: its file
        commit = where.name if (parse_hub_id(source.spec) and not os.path.lexists(source.spec)) else None
        entry = CatalogueEntry(
            id=source.id, source=source.spec, commit=commit, layout=r.name,
            architecture=",".join(r.ckpt.config.get("architectures") or []) or str(r.ckpt.config.get("model_type", "")),
            hidden_size=r.hidden_size, num_layers=r.num_layers, vocab_rows=r.vocab_rows, sketch_tokens=plan.tokens,
            sketch_dims=plan.dims, model_bytes=plan.model_bytes, file=sketch_file_name(source.id, digest), sha256=digest,
            bytes=len(data))
        try:
            write_entry(folder, entries, entry, data)
        except OSError as e:
            raise UsageError(f"{folder}: cannot write the catalogue ({e.strerror})") from None
        if progress is not None:
            progress(entry)
    return load_catalogue(folder)


def load_catalogue(folder: str | os.PathLike, origin: str = "") -> Catalogue:
    """Reads and checks a catalogue's manifest (the sketches are verified as they are read).

    Raises:
      CacheError: no manifest, or a manifest that does not parse or is of another version.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{folder}: not a catalogue (no {MANIFEST}); build one with `python -m awm_jax catalogue "
                         "build`") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable catalogue manifest ({type(e).__name__}); build or fetch the catalogue "
                         "again") from None
    if not isinstance(body, dict) or body.get("format") != CATALOGUE_FORMAT:
        raise CacheError(f"{path}: not an awm_jax catalogue manifest ({CATALOGUE_FORMAT})")
    if body.get("sketch_version") != SKETCH_VERSION or body.get("algorithm") != ALGORITHM_VERSION:
        raise CacheError(f"{path}: catalogue of sketch version {body.get('sketch_version')}/{body.get('algorithm')}; "
                         f"this awm_jax reads {SKETCH_VERSION}/{ALGORITHM_VERSION}: build the catalogue again")
    try:
        entries = tuple(CatalogueEntry(**e) for e in body["entries"])
    except (KeyError, TypeError) as e:
        raise CacheError(f"{path}: malformed catalogue entry ({e}); build or fetch the catalogue again") from None
    for e in entries:  # names are checked as written (a hub snapshot's files are links into its blob store)
        name = PurePosixPath(str(e.file))
        if name.is_absolute() or ".." in name.parts or "\\" in str(e.file) or not re.fullmatch(r"[0-9a-f]{64}", e.sha256):
            raise CacheError(f"{path}: entry {e.id!r} names a file outside the catalogue or a malformed hash; "
                             "refusing the catalogue")
    return Catalogue(folder, entries, origin or str(folder))


def publish_catalogue(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                      private: bool = False) -> str:
    """Uploads a (verified) catalogue folder as the hub dataset repository ``repo_id``; returns the commit id.

    Raises:
      CacheError: a damaged entry (nothing is uploaded).
      CheckpointError: the hub refused or could not be reached.
    """
    from huggingface_hub import HfApi

    catalogue = load_catalogue(folder)
    for entry in catalogue.entries:
        catalogue.sketch(entry)
    api = HfApi(library_name="awm_jax", library_version=__version__, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(catalogue.folder), repo_id=repo_id, repo_type="dataset",
                                 allow_patterns=[MANIFEST, "sketches/*.safetensors"],
                                 commit_message=f"awm_jax catalogue: {len(catalogue.entries)} sketches")
    except Exception as e:  # noqa: BLE001 - every hub failure is one line
        raise CheckpointError(f"{repo_id}: cannot publish the catalogue ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); check the token and HF_ENDPOINT") from None
    return info.oid


def fetch_catalogue(spec: str, *, cache_dir: str | os.PathLike | None = None) -> Catalogue:
    """Downloads the hub dataset repository ``owner/name[@revision]`` (only the manifest and
    sketches) and loads it.

    Raises:
      CheckpointError: the repository or revision is not found, or the hub cannot be reached.
      CacheError: the download is not a catalogue.
    """
    from huggingface_hub import snapshot_download

    from awm_jax.io.hub import hub_cache_dir, parse_hub_id

    hub_id = parse_hub_id(spec)
    if hub_id is None:
        raise UsageError(f"{spec}: not a folder and not a hub dataset id (owner/name[@revision])")
    try:
        path = snapshot_download(hub_id.repo_id, repo_type="dataset", revision=hub_id.revision,
                                 cache_dir=str(hub_cache_dir(cache_dir)),
                                 allow_patterns=[MANIFEST, "sketches/*.safetensors"], etag_timeout=30)
    except Exception as e:  # noqa: BLE001 - every hub failure is one line
        raise CheckpointError(f"{spec}: cannot fetch the catalogue ({type(e).__name__}); check the dataset id, the "
                              "revision, the token and HF_ENDPOINT") from None
    return load_catalogue(path, origin=f"{hub_id} ({Path(path).name})")


def open_catalogue(spec: str | os.PathLike) -> Catalogue:
    """A catalogue from a folder, or else from a hub dataset id."""
    if os.path.lexists(spec):
        return load_catalogue(spec)
    return fetch_catalogue(os.fspath(spec))
