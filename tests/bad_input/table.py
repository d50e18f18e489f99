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

__all__ = ["DOC", "FIXES", "collect", "parse", "render", "main"]

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

This page is generated from the test corpus (`tests/bad_input/cases.py`, `cases_options.py`,
`cases_network.py`): `python -m tests.bad_input.table > docs/errors.md`. Every row is a test
(`tests/bad_input/test_corpus.py`) that builds the input, runs the command (`compare` unless the
input names `audit` or `download`), and checks the exit code, the single line, that it matches
this row, that it took under 10 s, and that nothing under the case folder changed (names, sizes,
modification times, contents). Hub endpoints appear as `http://127.0.0.1:PORT` (a test server).

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
- **Headers and configs.** A safetensors header naming a tensor twice is refused (which entry
  holds the data would be a guess). Config values a layout needs (`weight_block_size`,
  `attn_config.kv_n_heads`) must be positive integers in range. TOML files (`--layout`,
  `--suite`, suites given to `download`) nested too deeply to parse are refused.
- **Options and lists.** Options are checked before any work: `--out` must be a folder (or
  creatable) that may be written, whose earlier outputs and progress file are regular files;
  `--json` a regular file (or a new file) in an existing writable folder; `--memory-gb` a
  positive finite number. `--list` files must be regular files of at most
  16 MiB (a FIFO or `/dev/zero` is refused, not read), UTF-8 with or without a byte-order mark.
- **Output files.** Outputs are written atomically (a temporary file in the same folder, then a
  rename): a reader sees the old file or the complete new one. A symlink given as `--json` is
  resolved deliberately: the regular file it leads to is replaced and the link kept. Files
  awm_jax names itself (the audit's outputs in `--out`, the fingerprint cache) replace a symlink
  found there instead of writing through it. Anything else that exists at the path (a folder, a
  device such as `/dev/null`, a FIFO, a socket) is refused, never replaced. New files get `0666`
  less the umask; a replaced file keeps its permissions.
- **Network.** No request to the hub can hang. Every connect and read times out after
  `AWM_HUB_TIMEOUT` seconds (default: huggingface_hub's `HF_HUB_DOWNLOAD_TIMEOUT`, 10); a weight
  download receiving less than `AWM_HUB_MIN_RATE` bytes/s (default 50000) over any
  `AWM_HUB_STALL` seconds (default 60) has stalled; each model's download must finish within
  `AWM_HUB_DEADLINE` seconds (default 300) plus, per weight file, `AWM_HUB_TIMEOUT + size /
  AWM_HUB_MIN_RATE`. A watchdog enforces these by shutting the connection down, wherever the
  transfer is (trickled headers included). Timeouts, broken connections and 429/5xx answers are
  retried `AWM_HUB_RETRIES` times (default 2) with backoff from 1 s, within the same deadline;
  an interrupted weight file resumes on the next run. A partial download (`--download partial`,
  the default) runs every header and range request under the same limits, each range retried on
  its own; ranges already fetched are kept when a run fails, and the next run asks only for the
  rest. A tensor a partial download did not fetch is refused (`was not fetched`, exit 3), and a
  fetched range whose bytes changed on disk fails its SHA-256 check (`checksum mismatch`). A
  malformed `HF_ENDPOINT` or `AWM_HUB_*`
  value is a usage error (exit 2). The network cases below run with deadlines of a few seconds.
- **Interrupts.** Ctrl-C at any moment of `python -m awm_jax ...` prints one line,
  `awm_jax: interrupted`, and exits 130 at once (even while the main thread is inside native
  code), after removing the temporary files of writes in progress; outputs are never
  half-written (`tests/bad_input/test_signals.py` interrupts real runs at many moments).

## The corpus

| Case | Input | Exit | Message |
| --- | --- | --- | --- |
"""


#: What was fixed in the handling of bad input: (defect class, fix, exit code, corpus cases or tests).
FIXES: list[tuple[str, str, str, str]] = [
    ("`HF_ENDPOINT` at a server that accepts and never answers: the download hung",
     "connect and read timeouts on every request (`AWM_HUB_TIMEOUT`), enforced on each socket", "3", "`hub_silent`"),
    ("a server sending headers then one byte per second (or its headers a byte at a time): the download hung",
     "a per-model deadline scaled to the bytes expected and a floor rate for weight transfers, enforced by a "
     "watchdog that shuts the connection down; transient failures retried with backoff within it", "3",
     "`hub_trickle_body`, `hub_trickle_headers`"),
    ("a `200 text/html` answer (captive portal, proxy page) where JSON or a file is expected: traceback",
     "reported as not a Hugging Face Hub answer", "3", "`hub_captive_portal`, `hub_download_portal`, `hub_portal_files`"),
    ("`HF_ENDPOINT=http://[::1`, a port of 99999: traceback",
     "`HF_ENDPOINT` (and every `AWM_HUB_*` limit) validated before any request", "2",
     "`endpoint_bad_ipv6`, `endpoint_bad_port`"),
    ("a safetensors header naming a tensor twice: the last entry silently won",
     "duplicate keys refused while the header is parsed (`object_pairs_hook`)", "3", "`header_duplicate_name`"),
    ("`quantization_config.weight_block_size` of `[\"x\", 1]`, `[1e309, 1]`, `[0, 32]`: traceback",
     "must be two integers in [1, 2^31 - 1]", "4", "`fp8_block_size_text`, `fp8_block_size_infinite`, "
     "`fp8_block_size_zero`"),
    ("MPT `attn_config.kv_n_heads` of `\"x\"` or `[2]`: traceback",
     "must be an integer in [1, n_heads]; reported, not mistaken for missing head counts", "4",
     "`mpt_kv_heads_text`, `mpt_kv_heads_list`"),
    ("TOML nested 100,000 deep for `--layout`, `audit --suite`, `download`: RecursionError",
     "refused as not usable TOML", "2", "`layout_file_deep`, `suite_file_deep`, `download_suite_deep`"),
    ("`audit --memory-gb inf` (or nan, negative): traceback", "a positive finite number, checked before any work",
     "2", "`memory_gb_infinite`, `memory_gb_nan`, `memory_gb_negative`"),
    ("`audit --list /dev/zero` read without bound, a FIFO hung, a byte-order mark became part of the first path",
     "regular files only, at most 16 MiB, decoded as UTF-8 with an optional BOM", "2",
     "`list_device`, `list_fifo`, `list_too_large`; `test_output_files.py`"),
    ("`--json` and `--out` checked only after the whole computation",
     "checked first: an existing writable folder, a regular file or a new one (and the outputs an earlier "
     "audit left in `--out` regular files)", "2",
     "`out_is_a_file`, `out_under_a_file`, `out_holds_a_folder`, `out_progress_fifo`, `json_missing_folder`"),
    ("`--json` on a symlink replaced the link; on a device node replaced the node (`/dev/null` as root)",
     "a path the user names is resolved to the regular file it leads to (replaced atomically, link kept); "
     "files awm_jax names in its own folders replace a link itself, never writing through it; folders, devices, "
     "FIFOs and sockets refused; new files get the umask's permissions instead of 0600", "2",
     "`json_device`, `json_fifo`, `json_folder`, `json_link_to_device`; `test_output_files.py`"),
    ("Ctrl-C in the first second: sometimes ignored (exit 0), SIGSEGV, SIGABRT or -2; in the audit's last "
     "phase -2 without a message or an ImportError traceback",
     "a handler from the first statement of `python -m`, and a watcher thread for when the main thread is in "
     "native code: temporaries removed, one line, `os._exit(130)`; completed runs exit through `os._exit` after "
     "the atexit handlers, before the interpreter drops its handler", "130", "`test_signals.py`"),
    ("`download` errors began with `error:`", "every command prints `awm_jax: error: ...` through the same runner",
     "any", "`hub_download_portal`, `download_suite_deep`"),
    ("`q_proj` times 2^-32 and `k_proj` times 2^32 (same logits): Wq 0, INDEPENDENT; at 2^30 Wq 1.19; one "
     "`q_proj` times 2^100: Wq 0.739; the embedding times 2^70: refused as NaN/Inf",
     "projections outside [2^-13, 2^12) scaled by a power of two before their Grams, Grams normalised by a "
     "power of two before the HSIC products, embedding sums scaled the same way: exact, so ordinary scores "
     "are unchanged to the bit", "0 (the clean run's scores)",
     "`tests/bad_input/cases_numerics.py` (`qk_scaled_2^-32` ... `embedding_scaled_7e25`, through the CLI), "
     "`tests/numerics/test_scale_invariance.py`"),
    ("hidden size 2: ZeroDivisionError; hidden 1 and 3: INDEPENDENT with scores 0.000 / -0.0625",
     "refused: the unbiased CKA needs at least 4 hidden dimensions", "6",
     "`hidden_size_1`, `hidden_size_2`, `hidden_size_3`"),
    ("1 or 3 shared tokens, or an embedding whose rows are all equal: a derived pair called INDEPENDENT with "
     "mean |cos| 1.0000",
     "minimum evidence for an alignment: shared tokens at least a quarter of the base's hidden size (and 4), "
     "no zero embedding column, sampled columns spanning at least 4 directions", "6",
     "`shared_tokens_1`, `shared_tokens_3`, `embedding_rows_equal`, `embedding_zero_column`"),
    ("a flipped value in a cached Gram (Wq 0.495), two models' index files swapped (INDEPENDENT), an index "
     "naming an absolute path, weights rewritten with size/inode/mtime restored (the old verdict), a damaged "
     "entry never healed (exit 7 on every run)",
     "every entry verified when opened (an XXH3-128 checksum per 32 MiB block, keys must be 64 hex digits, "
     "index bound to its checkpoint, kind and mode, one layer checked against the weights); ctime and a content probe in the "
     "file identity; a damaged or stale entry dropped with one warning, recomputed and replaced",
     "0 (the `--no-cache` scores)", "section below; `tests/fingerprint/test_fingerprint.py`, fuzz target "
     "`cache_entry`"),
    ("an audit progress record with a valid CRC but an out-of-range pair index: traceback; a damaged line: "
     "exit 7", "records checked against the audit (pair index, model names, layer count, scores consistent "
     "with their layers); damaged or unfitting ones dropped with one warning and their pairs scored again",
     "0", "section below; `tests/audit/test_audit.py`, fuzz target `audit_journal`"),
]


_FIXED_INTRO = """
## What was fixed

Defects found by trying hostile and careless inputs, each now a case above (or a test named
here) with its exit code and one line.

| Defect | Fix | Exit | Cases |
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
    fixes = "".join(f"| {defect} | {fix} | {code} | {cases} |\n" for defect, fix, code, cases in FIXES)
    return _INTRO.format(codes=codes) + "".join(rows) + _FIXED_INTRO + fixes + _CACHE


#: The fingerprint cache and the audit's progress file: damage there is healed, not refused, so
#: these rows are checked by tests/fingerprint/test_fingerprint.py, tests/audit/test_audit.py and the cache_entry and
#: audit_journal fuzz targets rather than by the corpus above.
_CACHE = """
## Cache and progress file

The fingerprint cache (`$AWM_JAX_CACHE`, else `$XDG_CACHE_HOME/awm_jax`, else
`~/.cache/awm_jax`) is never trusted: every entry is checked when it is opened (index bound to its
checkpoint, kind and norm-gain mode, content key of 64 hex digits, an XXH3-128 checksum of every 32 MiB block
of every Gram file, one layer checked against the weights). A damaged, stale, swapped or forged
entry is not an error: it is dropped with one warning line and the fingerprint is computed again
(the scores are those of `--no-cache`), and the entry is healed for the next run. An entry
evicted by `python -m awm_jax cache prune` or the size cap (`--cache-max-gb`,
`$AWM_JAX_CACHE_MAX_GB`) is not damage: it is computed again without a warning. The audit's
progress file is treated the same way: a damaged line, or a record that does not fit the audit,
is dropped with one warning and its pair scored again. Tests: `tests/fingerprint/test_fingerprint.py`,
`tests/audit/test_audit.py`, and the `cache_entry` and `audit_journal` fuzz targets
(`python -m benchmarks.fuzz --targets cache_entry audit_journal`).

| case | exit | stderr |
| --- | --- | --- |
| a value flipped in a cached Gram (times restored) | 0 | `awm_jax: warning: <cache>/fingerprints/<key>: cached fingerprint is damaged or stale (gram_q.f32: block 0 of 1 does not match its checksum); computing it again` |
| a Gram file truncated, extended, deleted, or replaced by a folder, FIFO or link | 0 | `awm_jax: warning: <cache>/fingerprints/<key>: cached fingerprint is damaged or stale (gram_k.f32 has 3168 bytes, expected 6336); computing it again` |
| a Gram file zero-filled and meta.json gone (power loss) | 0 | `awm_jax: warning: <cache>/fingerprints/<key>: cached fingerprint is damaged or stale (meta.json is missing); computing it again` |
| two models' index files swapped | 0 | `awm_jax: warning: <cache>/index/<file key>-qk-fold.json: cached fingerprint is damaged or stale (index entry of another checkpoint or kind); computing it again` |
| an index naming a path (`/elsewhere`, `../x`, `<key>/../<other key>`) | 0 | `awm_jax: warning: <cache>/index/<file key>-qk-fold.json: cached fingerprint is damaged or stale (index entry names '/elsewhere', not a content key); computing it again` |
| an index or folder naming another model's intact fingerprint | 0 | `awm_jax: warning: <cache>/index/<file key>-qk-fold.json: cached fingerprint is damaged or stale (layer 1 of gram_q.f32 is not the Gram of the checkpoint's weights); computing it again` |
| weights rewritten in place, size, inode and mtime restored (`cp -p`, `rsync -t`) | 0 | (none: the change time and a content probe are part of the file key, so the fingerprint is computed again) |
| the cache folder cannot be written | 0 | `awm_jax: warning: <cache>: cannot write the fingerprint cache (Not a directory); computing without it (set AWM_JAX_CACHE to a writable folder, or pass --no-cache)` |
| the disk fills while a fingerprint is written | 7 | `awm_jax: error: <cache>/fingerprints/.tmp-<id>: cannot write the fingerprint (No space left on device); free disk space, set AWM_JAX_CACHE to another folder, or pass --no-cache` |
| a verified Gram file replaced by different bytes during the run | 7 | `awm_jax: error: <cache>/fingerprints/<key>: the cached fingerprint changed while in use (gram_q.f32: block 0 of 1 does not match its checksum); rerun (it is verified and, if damaged, computed again)` |
| an audit progress file with a damaged line, or a record that does not fit the audit (pair index out of range, other model names, scores that disagree with their layers) | 0 | `awm_jax: warning: <out>/progress.jsonl: 1 progress record(s) are damaged or do not fit this audit; their pairs are scored again` |
| an audit progress file whose first line is not this format's header (possibly a file of the user's: never touched) | 2 | `awm_jax: error: <out>/progress.jsonl: not an awm_jax audit progress file; choose another --out` |
| an audit progress file that is a FIFO or a folder | 2 | `awm_jax: error: --out <out>: progress.jsonl is a named pipe (FIFO), not a regular file; refusing to replace it; remove it or choose another folder` |
"""


_ROW = re.compile(r"^\| `([A-Za-z0-9_]+)` \| .* \| (-?\d+) \| `(.*)` \|$")


def parse(text: str) -> dict[str, tuple[int, str]]:
    """The ``name -> (exit code, message)`` rows of a page made by :func:`render`."""
    out = {}
    for line in text.split("\n## What was fixed", 1)[0].splitlines():
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
