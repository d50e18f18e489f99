"""Writes ``docs/errors.md`` from the bad-input corpus.

    python -m tests.bad_input.table > docs/errors.md

Every case of :mod:`cases` is built in a temporary folder and run through the CLI in this
process; the table records its input, exit code and message (the case folder stripped from
paths, the machine's memory size replaced by ``N``). ``tests/bad_input/test_corpus.py`` checks
that each case still prints exactly its row, and that the page is what :func:`render` makes.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from awm_jax import errors

from .cases import CASES, normalise, prepare, run_in_process

__all__ = ["DOC", "collect", "parse", "render", "main"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"

_ERROR_CLASSES = (errors.UsageError, errors.CheckpointError, errors.LayoutError, errors.VocabularyError,
                  errors.NumericalError, errors.CacheError)

_INTRO = """\
# Errors: what awm_jax says about bad input

Model folders come from strangers. awm_jax never executes anything in them, never writes to
them, and answers every broken input with one line on stderr, `awm_jax: error: <message>`,
that names the file and the problem and says what to do, and a documented exit code; never a
traceback, never a hang. The messages below are what the CLI prints (with the folder of the
case, here `bad/` and `good/`, stripped from the paths).

This page is generated from the test corpus (`tests/bad_input/cases.py`):
`python -m tests.bad_input.table > docs/errors.md`. Every row is a test
(`tests/bad_input/test_corpus.py`) that builds the input, runs the CLI, and checks the exit code,
the single line, that it matches this row, that it took under 10 s, and that nothing under the
case folder changed (names, sizes, modification times, contents).

## Exit codes

| Code | Error | Meaning |
| --- | --- | --- |
| 0 | | success |
| 1 | | internal error: a bug (the traceback is shown; please report it) |
{codes}| 130 | | interrupted (Ctrl-C) |

## Rules behind the messages

- **Pickles.** `pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl` are never unpickled by
  default. With `--allow-pickle` (API: `Checkpoint(path, allow_pickle=True)` or
  `awm_jax.io.checkpoint.pickle_loading()`), a folder without safetensors is loaded through
  `torch.load(weights_only=True, mmap=True, map_location="cpu")`, which refuses pickled code;
  without PyTorch installed that is a usage error (exit 2).
- **Code.** No Python file of a model folder (`modeling_*.py`, `auto_map`) is ever imported. The
  CLI takes the current folder off Python's import path before importing anything, so running
  `python -m awm_jax.compare` from inside a model folder holding, say, a `json.py` is safe; only
  a folder named `awm_jax` there would still shadow the package, since Python imports it before
  awm_jax runs (run from elsewhere, use `awm-compare`, or `python -P -m awm_jax.compare`).
- **Files.** Every file is opened non-blocking and checked to be a regular file before a byte is
  read: a FIFO, a device, a folder or a symlink loop where a file is expected is refused.
  Symlinks are otherwise followed (the Hugging Face cache links snapshots to blobs), but shard
  names in an index may not leave the folder (no `..`, no absolute paths).
- **Sizes.** Checked before anything is allocated: safetensors headers at most 100 MiB, JSON
  files (config, index, tokenizer) at most 512 MiB, every tensor extent inside its file and
  equal to dtype x shape, every tensor read at most the machine's memory, sizes in
  `config.json` one integer in [0, 2^31 - 1], token ids at most 2^31 - 1.
- **Duplicate ids.** A token string maps to one id (a string listed twice: the later entry wins,
  as in the tokenizers library). Several strings sharing one id are kept and counted
  (`Vocabulary.duplicate_ids`), each using that embedding row; a vocabulary in which more than
  1% of the tokens share their id is refused as corrupt.
- **Ids beyond the embedding.** Shared tokens whose id is beyond a model's embedding rows are
  dropped and counted in the JSON (`vocabulary.dropped_a`/`dropped_b`); when more than half of
  the shared tokens are, the tokenizer does not belong to the weights and the pair is refused.
- **Weights.** NaN/Inf in the embedding or a query/key projection, an all-zero embedding or
  projection, and integer (quantised) projections are refused: the score would be meaningless.

## The corpus

| Case | Input | Exit | Message |
| --- | --- | --- | --- |
"""


def collect() -> dict[str, tuple[int, str]]:
    """Runs every case here; returns ``name -> (exit code, normalised message)``."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="awm_jax-corpus-") as tmp:
        for case in CASES:
            root = Path(tmp) / case.name
            root.mkdir()
            outcome = run_in_process(case, root, prepare(case, root))
            out[case.name] = (outcome.code, normalise(outcome.stderr, root))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(messages: dict[str, tuple[int, str]]) -> str:
    """The page for the given ``name -> (exit code, message)`` (a missing case shows as such)."""
    codes = "".join(f"| {c.exit_code} | `{c.__name__}` | {(c.__doc__ or '').strip().splitlines()[0]} |\n"
                    for c in _ERROR_CLASSES)
    rows = []
    for case in CASES:
        code, message = messages.get(case.name, (-1, "(missing: regenerate this page)"))
        if "`" in message:
            raise ValueError(f"case {case.name}: a backtick in the message would break the table")
        rows.append(f"| `{case.name}` | {_cell(case.input)} | {code} | `{_cell(message)}` |\n")
    return _INTRO.format(codes=codes) + "".join(rows)


_ROW = re.compile(r"^\| `([A-Za-z0-9_]+)` \| .* \| (-?\d+) \| `(.*)` \|$")


def parse(text: str) -> dict[str, tuple[int, str]]:
    """The ``name -> (exit code, message)`` rows of a page made by :func:`render`."""
    out = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            out[m.group(1)] = (int(m.group(2)), m.group(3).replace("\\|", "|"))
    return out


def main() -> int:
    """Prints the page to stdout."""
    sys.stdout.write(render(collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
