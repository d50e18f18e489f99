"""Experiment suites: named sets of hub models and labelled model pairs, read from TOML.

A suite file (``configs/<name>.toml``, schema in ``configs/README.md``) lists models by a short
key with their hub repository (and optional revision), and pairs of model keys labelled
``"derived"`` (one model descends from the other) or ``"independent"``. ``load_suite`` reads
and validates one; ``python -m awm_jax.download SUITE`` fetches its models and batch audits
score its pairs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from awm_jax.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["LABELS", "CONFIG_DIR", "SuiteModel", "SuitePair", "Suite", "suite_names", "suite_path", "load_suite"]

#: Pair labels: the ground truth a lineage test is scored against.
LABELS = ("derived", "independent")


def _config_dir() -> Path:
    """The suites' folder: inside the installed package (``awm_jax/configs``, where a wheel puts
    the top-level ``configs/`` folder), else the top-level ``configs/`` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "configs"
    return installed if (installed / "__init__.py").is_file() else package.parent / "configs"


#: The folder holding the suite files shipped with awm_jax (one source: the repository's
#: top-level ``configs/``, installed as ``awm_jax/configs``).
CONFIG_DIR = _config_dir()

_SUITE_KEYS = {"name", "description", "paper_section"}
_MODEL_KEYS = {"key", "repo", "revision", "note", "gated", "confirmed"}
_PAIR_KEYS = {"a", "b", "label", "relation"}


@dataclass(frozen=True)
class SuiteModel:
    """One model of a suite.

    Attributes:
      key: short name the pairs refer to.
      repo: hub repository id (``owner/name``).
      revision: branch, tag, ``refs/pr/N`` or commit; ``None`` means ``main``.
      note: free text (provenance, why this revision).
      gated: the repository requires accepting its terms and a token.
      confirmed: the id, revision and safetensors weights were checked against the hub.
    """

    key: str
    repo: str
    revision: str | None = None
    note: str = ""
    gated: bool = False
    confirmed: bool = True

    @property
    def spec(self) -> str:
        """The ``owner/name[@revision]`` string :func:`awm_jax.io.hub.resolve_model` takes."""
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


@dataclass(frozen=True)
class SuitePair:
    """A labelled pair of model keys; ``a`` is the reference side (usually the base model)."""

    a: str
    b: str
    label: str
    relation: str = ""


@dataclass(frozen=True)
class Suite:
    """A validated suite: its models by key and its labelled pairs, in file order."""

    name: str
    description: str
    paper_section: str
    path: Path
    models: dict[str, SuiteModel]
    pairs: tuple[SuitePair, ...]

    def pair_models(self, pair: SuitePair) -> tuple[SuiteModel, SuiteModel]:
        """The two models of a pair."""
        return self.models[pair.a], self.models[pair.b]


def suite_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the suite files in ``config_dir`` (file names without ``.toml``), sorted."""
    return sorted(p.stem for p in config_dir.glob("*.toml"))


def suite_path(name_or_path: str, config_dir: Path = CONFIG_DIR) -> Path:
    """The file of a suite given by name (``sft_pairs``) or path (``my/suite.toml``).

    Raises:
      UsageError: no such suite file.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise UsageError(f"{path}: no such suite file; check the path")
        return path
    candidate = config_dir / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    names = ", ".join(suite_names(config_dir)) or "none"
    raise UsageError(f"unknown suite {name_or_path!r}; available in {config_dir}: {names} (or give a path to a .toml file)")


def _table(where: str, value, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(value))
    if missing:
        raise UsageError(f"{where}: missing field {missing[0]!r}")
    return value


def _string(where: str, table: dict, field: str, *, default: str | None = None, empty_ok: bool = False) -> str | None:
    """A string field's value, ``default`` when absent (required fields are checked by ``_table``)."""
    if field not in table:
        return default
    value = table[field]
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise UsageError(f"{where}: field {field!r} must be a {'string' if empty_ok else 'non-empty string'}")
    return value


def _bool(where: str, table: dict, field: str, default: bool) -> bool:
    value = table.get(field, default)
    if not isinstance(value, bool):
        raise UsageError(f"{where}: field {field!r} must be true or false")
    return value


def load_suite(name_or_path: str, config_dir: Path = CONFIG_DIR) -> Suite:
    """Reads and validates a suite file.

    Args:
      name_or_path: a suite name (a file ``<name>.toml`` in ``config_dir``) or a path.
      config_dir: where suite names are looked up.

    Returns:
      The suite.

    Raises:
      UsageError: unknown suite, unreadable or invalid TOML, or a schema violation (unknown or
        missing field, malformed hub id, duplicate model key, a pair naming an unknown model,
        a pair of a model with itself, a repeated pair, an unknown label).
    """
    from awm_jax.io.hub import parse_hub_id

    path = suite_path(name_or_path, config_dir)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise UsageError(f"{path}: not usable TOML (nested too deeply); fix the suite file") from None
    _table(str(path), data, {"suite", "models", "pairs"}, {"suite", "models", "pairs"})
    head = _table(f"{path} [suite]", data["suite"], _SUITE_KEYS, {"name"})
    for field, kind in (("models", "[[models]]"), ("pairs", "[[pairs]]")):
        if not isinstance(data[field], list) or not data[field]:
            raise UsageError(f"{path}: expected at least one {kind} table")

    models: dict[str, SuiteModel] = {}
    for i, raw in enumerate(data["models"], 1):
        where = f"{path} model #{i}"
        table = _table(where, raw, _MODEL_KEYS, {"key", "repo"})
        key = _string(where, table, "key")
        repo = _string(where, table, "repo")
        revision = _string(where, table, "revision")
        hub_id = parse_hub_id(repo if revision is None else f"{repo}@{revision}")
        if hub_id is None or "@" in repo:
            raise UsageError(f"{where} ({key}): {repo!r} (revision {revision!r}) is not a hub id owner/name with a valid revision")
        if key in models:
            raise UsageError(f"{where}: duplicate model key {key!r}")
        models[key] = SuiteModel(
            key=key, repo=repo, revision=revision,
            note=_string(where, table, "note", default="", empty_ok=True),
            gated=_bool(where, table, "gated", False),
            confirmed=_bool(where, table, "confirmed", True),
        )

    pairs: list[SuitePair] = []
    seen: set[frozenset[str]] = set()
    for i, raw in enumerate(data["pairs"], 1):
        where = f"{path} pair #{i}"
        table = _table(where, raw, _PAIR_KEYS, {"a", "b", "label"})
        a, b = _string(where, table, "a"), _string(where, table, "b")
        for key in (a, b):
            if key not in models:
                raise UsageError(f"{where}: model key {key!r} is not defined by a [[models]] table")
        if a == b:
            raise UsageError(f"{where}: pairs a model ({a!r}) with itself")
        if frozenset((a, b)) in seen:
            raise UsageError(f"{where}: the pair {a!r} / {b!r} appears twice")
        seen.add(frozenset((a, b)))
        label = _string(where, table, "label")
        if label not in LABELS:
            raise UsageError(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
        pairs.append(SuitePair(a, b, label, _string(where, table, "relation", default="", empty_ok=True)))

    return Suite(
        name=_string(f"{path} [suite]", head, "name"),
        description=_string(f"{path} [suite]", head, "description", default="", empty_ok=True),
        paper_section=_string(f"{path} [suite]", head, "paper_section", default="", empty_ok=True),
        path=path,
        models=models,
        pairs=tuple(pairs),
    )
