"""Real offline text for training the zoo: named sources, deterministic sampling.

Three sources, all read from the local file system:

* ``python-stdlib``: the ``.py`` files of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded). Always present, so tests
  use only this source.
* ``debian-doc``: prose under ``/usr/share/doc`` (READMEs, NEWS, change logs, copyright files,
  ``.txt``/``.md``/``.rst``), plain or gzip-compressed, de-duplicated by content.
* ``man-pages``: English manual pages ``/usr/share/man/man*/*.gz`` with troff markup stripped.

Every source can be split in two disjoint halves (``"a"``/``"b"``) by a stable hash of the
file's relative path, so two models can be trained on different data of one domain.
:func:`sample_documents` returns documents in a seeded order up to a character budget;
:func:`instruction_pairs` builds question/answer pairs from the standard library's docstrings
for supervised fine-tuning and preference tuning.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import re
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

__all__ = [
    "Source",
    "SOURCES",
    "available_sources",
    "list_documents",
    "read_document",
    "sample_documents",
    "strip_troff",
    "instruction_pairs",
    "format_instruction",
    "Split",
]

Split = Literal["a", "b"] | None

#: Longest document kept, in characters (longer files are cut, so one file cannot dominate).
MAX_DOC_CHARS = 24_000


@dataclasses.dataclass(frozen=True)
class Source:
    """A named text source.

    Attributes:
        name: the source's name as used in manifests.
        description: one line on what it holds.
        root: directory the documents live under.
        list_files: returns candidate files under ``root``, in any order.
        read: returns a file's text (markup stripped), or ``""`` when it holds no usable text.
    """

    name: str
    description: str
    root: Path
    list_files: Callable[[Path], Iterable[Path]]
    read: Callable[[Path], str]


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _list_stdlib(root: Path) -> Iterable[Path]:
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).parts
        if "site-packages" in rel or "dist-packages" in rel:
            continue
        yield p


def _decode(raw: bytes) -> str:
    """Decodes UTF-8 text; returns ``""`` for binary-looking data."""
    if b"\x00" in raw[:4096]:
        return ""
    text = raw.decode("utf-8", errors="replace")
    if text.count("\ufffd") > len(text) // 100 + 1:
        return ""
    return text


def _read_plain_or_gz(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return ""
    return _decode(raw)


_DOC_SUFFIXES = {"", ".txt", ".md", ".rst", ".Debian", ".gz"}
_DOC_SKIP_INNER = {".html", ".htm", ".xml", ".css", ".js", ".json", ".png", ".svg", ".pdf"}


def _list_debian_doc(root: Path) -> Iterable[Path]:
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink() or p.suffix not in _DOC_SUFFIXES:
            continue
        if p.suffix == ".gz" and Path(p.stem).suffix in _DOC_SKIP_INNER:
            continue
        yield p


def _list_man(root: Path) -> Iterable[Path]:
    # English pages only: /usr/share/man/manN/*.gz (translations live in /usr/share/man/LL/).
    for d in sorted(root.glob("man*")):
        if d.is_dir():
            yield from (p for p in d.glob("*.gz") if p.is_file() and not p.is_symlink())


_TROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_TROFF_NAMED = re.compile(r"\\(\(..|\[[^\]]*\])")
_TROFF_STRING = re.compile(r"\\\*(\(..|\[[^\]]*\]|.)")
_TROFF_SIZE = re.compile(r"\\s[+-]?\d+")
_TROFF_SIMPLE = {r"\-": "-", r"\e": "\\", r"\&": "", r"\ ": " ", r"\|": "", r"\^": "",
                 r"\%": "", r"\:": "", r"\c": "", r"\~": " ", r"\0": " "}
_TROFF_NAMED_CHARS = {"em": "--", "en": "-", "bu": "*", "aq": "'", "dq": '"', "lq": '"',
                      "rq": '"', "oq": "'", "cq": "'", "hy": "-", "co": "(c)", "rg": "(R)",
                      "ti": "~", "ha": "^", "ga": "`", "lh": "<=", "rh": "=>", "mi": "-"}
_HEADING_MACROS = {"SH", "SS"}
_TEXT_MACROS = {"B", "I", "BR", "IR", "BI", "RB", "IB", "RI", "SM", "SB", "IP", "TP", "UR", "MT"}


def _strip_inline(line: str) -> str:
    line = _TROFF_FONT.sub("", line)
    line = _TROFF_STRING.sub("", line)
    line = _TROFF_SIZE.sub("", line)

    def named(m: re.Match) -> str:
        key = m.group(1).strip("([]")
        return _TROFF_NAMED_CHARS.get(key, "")

    line = _TROFF_NAMED.sub(named, line)
    for k, v in _TROFF_SIMPLE.items():
        line = line.replace(k, v)
    return line


def strip_troff(source: str) -> str:
    """Plain text of a troff/man page: macros dropped or unwrapped, escapes resolved.

    Args:
        source: troff source.

    Returns:
        Readable text (section headings on their own lines, paragraphs separated by blank
        lines); ``""`` for a page that only redirects (``.so``).
    """
    out: list[str] = []
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".", "'")):
            parts = raw[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro == "so":
                return ""
            if macro in _HEADING_MACROS:
                out.extend(["", _strip_inline(rest.replace('"', "")).strip()])
            elif macro in _TEXT_MACROS:
                if rest:
                    out.append(_strip_inline(rest.replace('"', "")))
            elif macro in {"PP", "LP", "P", "sp", "br"}:
                out.append("")
            continue
        out.append(_strip_inline(raw))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_man(path: Path) -> str:
    return strip_troff(_read_plain_or_gz(path))


def _read_stdlib(path: Path) -> str:
    try:
        return _decode(path.read_bytes())
    except OSError:
        return ""


SOURCES: dict[str, Source] = {
    "python-stdlib": Source(
        "python-stdlib",
        "Python standard library source files of the running interpreter",
        _stdlib_root(),
        _list_stdlib,
        _read_stdlib,
    ),
    "debian-doc": Source(
        "debian-doc",
        "Debian package documentation under /usr/share/doc (plain and gzip)",
        Path("/usr/share/doc"),
        _list_debian_doc,
        _read_plain_or_gz,
    ),
    "man-pages": Source(
        "man-pages",
        "English manual pages under /usr/share/man, troff stripped",
        Path("/usr/share/man"),
        _list_man,
        _read_man,
    ),
}


def _source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown corpus source {name!r}; known: {sorted(SOURCES)}") from None


def _in_split(rel: str, split: Split) -> bool:
    if split is None:
        return True
    if split not in ("a", "b"):
        raise ValueError(f"split must be 'a', 'b' or None, got {split!r}")
    bit = zlib.crc32(rel.encode("utf-8")) & 1
    return bit == (0 if split == "a" else 1)


@lru_cache(maxsize=None)
def list_documents(name: str, split: Split = None) -> tuple[Path, ...]:
    """Files of a source (optionally one half of it), sorted by relative path.

    Args:
        name: source name (a key of :data:`SOURCES`).
        split: ``"a"`` or ``"b"`` for one of two disjoint halves, ``None`` for all.

    Returns:
        Sorted tuple of paths; empty when the source's root is missing.
    """
    src = _source(name)
    if not src.root.is_dir():
        return ()
    files = []
    for p in src.list_files(src.root):
        rel = p.relative_to(src.root).as_posix()
        if _in_split(rel, split):
            files.append((rel, p))
    return tuple(p for _, p in sorted(files))


def available_sources() -> list[str]:
    """Names of the sources with at least one document on this machine."""
    return [name for name in SOURCES if list_documents(name)]


def read_document(name: str, path: Path) -> str:
    """Text of one document of source ``name``, cut to :data:`MAX_DOC_CHARS`."""
    return _source(name).read(Path(path))[:MAX_DOC_CHARS]


def sample_documents(
    name: str, max_chars: int, seed: int, split: Split = None, min_chars: int = 200
) -> list[str]:
    """Documents of a source in a seeded order until ``max_chars`` characters are collected.

    Identical documents (by content hash) are kept once; documents shorter than ``min_chars``
    are skipped.

    Args:
        name: source name.
        max_chars: character budget.
        seed: order seed; the same seed, split and files give the same documents.
        split: ``"a"``/``"b"`` half, or ``None``.
        min_chars: shortest document kept.

    Returns:
        The documents, in sampling order.

    Raises:
        ValueError: the source has no documents on this machine.
    """
    files = list_documents(name, split)
    if not files:
        raise ValueError(
            f"corpus source {name!r} has no documents on this machine (looked under "
            f"{_source(name).root}); use 'python-stdlib', which is always present"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    docs: list[str] = []
    seen: set[bytes] = set()
    total = 0
    for i in order:
        text = read_document(name, files[i])
        if len(text) < min_chars:
            continue
        digest = hashlib.sha1(text.encode("utf-8", errors="replace")).digest()
        if digest in seen:
            continue
        seen.add(digest)
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return docs


def format_instruction(question: str, answer: str | None = None) -> str:
    """The prompt template of the zoo's instruction data.

    Args:
        question: the instruction.
        answer: the response, or ``None`` for the prompt alone.

    Returns:
        ``"### Question:\\n{question}\\n### Answer:\\n"`` followed by ``answer`` if given.
    """
    prompt = f"### Question:\n{question}\n### Answer:\n"
    return prompt if answer is None else prompt + answer


def _first_paragraph(doc: str, max_chars: int) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    if len(para) > max_chars:
        cut = para[:max_chars]
        para = cut[: cut.rfind(" ")] if " " in cut else cut
    return para


def instruction_pairs(
    max_pairs: int, seed: int, split: Split = None, max_answer_chars: int = 160
) -> list[tuple[str, str]]:
    """Question/answer pairs from standard-library docstrings.

    The question asks what a function or class does, quoting its qualified name and signature;
    the answer is the first paragraph of its docstring.

    Args:
        max_pairs: most pairs returned.
        seed: order seed.
        split: ``"a"``/``"b"`` half of the standard library's files, or ``None``.
        max_answer_chars: answers are cut at a word boundary to this length.

    Returns:
        ``[(question, answer), ...]`` in a seeded order, without duplicate questions.
    """
    files = list_documents("python-stdlib", split)
    root = SOURCES["python-stdlib"].root
    order = np.random.default_rng(seed).permutation(len(files))
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i in order:
        path = files[i]
        parts = path.relative_to(root).with_suffix("").parts
        if any("test" in part for part in parts[:-1]):
            continue  # test suites: large files whose docstrings say little
        module = ".".join(parts)
        try:
            tree = ast.parse(_read_stdlib(path))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 20 or node.name.startswith("_"):
                continue
            if isinstance(node, ast.ClassDef):
                question = f"What is the class `{module}.{node.name}`?"
            else:
                sig = ast.unparse(node.args)
                if len(sig) > 60:
                    sig = "..."
                question = f"What does `{module}.{node.name}({sig})` do?"
            if question in seen:
                continue
            seen.add(question)
            pairs.append((question, _first_paragraph(doc, max_answer_chars)))
            if len(pairs) >= max_pairs:
                return pairs
    return pairs
