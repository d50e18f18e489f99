"""Bad-input cases beyond the model folder's tensors: ambiguous headers, malformed config values,
TOML nested too deeply, option values, list files that never end, and output paths that are
not regular files. Registered into :data:`.cases.CASES` (imported there)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .cases import _bad_header, _case, _pair, _tensor, good_model

__all__: list[str] = []

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "architectures"


def _fixture_with_config(root: Path, fixture: str, edit) -> list[str]:
    """Copies an architecture fixture to ``root/bad`` and edits its config.json."""
    bad = root / "bad"
    shutil.copytree(FIXTURES / fixture, bad, ignore=shutil.ignore_patterns("expected.npz"))
    config = json.loads((bad / "config.json").read_text())
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    return _pair(bad, root)


# -- parsers ------------------------------------------------------------------------------------------


@_case("header_duplicate_name", "a safetensors header listing the same tensor twice", 3, "twice",
       "bad/model.safetensors")
def _header_duplicate_name(root):
    entry = json.dumps(_tensor("F32", [2], 0, 8))
    raw = ('{"x": ' + entry + ', "x": ' + json.dumps(_tensor("F32", [2], 8, 16)) + "}").encode()
    return _bad_header(root, raw, b"\0" * 16)


def _block_size(value):
    def edit(config: dict) -> None:
        config["quantization_config"]["weight_block_size"] = value

    return edit


@_case("fp8_block_size_text", 'an FP8 config with weight_block_size ["x", 1]', 4, "weight_block_size",
       "bad/config.json")
def _fp8_block_text(root):
    return _fixture_with_config(root, "qwen3_fp8", _block_size(["x", 1]))


@_case("fp8_block_size_infinite", "an FP8 config with weight_block_size [1e309, 1] (infinite)", 4,
       "weight_block_size", "bad/config.json")
def _fp8_block_infinite(root):
    return _fixture_with_config(root, "qwen3_fp8", _block_size([float("inf"), 1]))


@_case("fp8_block_size_zero", "an FP8 config with weight_block_size [0, 32]", 4, "weight_block_size",
       "bad/config.json")
def _fp8_block_zero(root):
    return _fixture_with_config(root, "qwen3_fp8", _block_size([0, 32]))


def _kv_heads(value):
    def edit(config: dict) -> None:
        config["attn_config"].update(attn_type="grouped_query_attention", kv_n_heads=value)

    return edit


@_case("mpt_kv_heads_text", 'an MPT config with attn_config.kv_n_heads "x"', 4, "kv_n_heads", "bad/config.json")
def _mpt_kv_text(root):
    return _fixture_with_config(root, "mpt", _kv_heads("x"))


@_case("mpt_kv_heads_list", "an MPT config with attn_config.kv_n_heads [2]", 4, "kv_n_heads", "bad/config.json")
def _mpt_kv_list(root):
    return _fixture_with_config(root, "mpt", _kv_heads([2]))


def _deep_toml(path: Path) -> Path:
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    return path


@_case("layout_file_deep", "--layout naming a TOML file of 100,000 nested arrays", 2, "nested too deeply", "deep.toml")
def _layout_deep(root):
    return _pair(good_model(root), root) + ["--layout", str(_deep_toml(root / "deep.toml"))]


@_case("suite_file_deep", "audit --suite naming a TOML file of 100,000 nested arrays", 2, "nested too deeply", "deep.toml",
       command="audit")
def _suite_deep(root):
    return ["--suite", str(_deep_toml(root / "deep.toml")), "--out", str(root / "out")]


@_case("download_suite_deep", "download naming a suite file of 100,000 nested arrays", 2, "nested too deeply",
       "deep.toml", command="download", subprocess=True)
def _download_suite_deep(root):
    return [str(_deep_toml(root / "deep.toml"))]


# -- audit options ------------------------------------------------------------------------------------


def _audit(root: Path, *extra: str) -> list[str]:
    return [str(good_model(root)), str(good_model(root)), "--out", str(root / "out"), *extra]


@_case("memory_gb_infinite", "audit --memory-gb inf", 2, "--memory-gb inf", "", command="audit")
def _memory_inf(root):
    return _audit(root, "--memory-gb", "inf")


@_case("memory_gb_nan", "audit --memory-gb nan", 2, "--memory-gb nan", "", command="audit")
def _memory_nan(root):
    return _audit(root, "--memory-gb", "nan")


@_case("memory_gb_negative", "audit --memory-gb -1", 2, "positive number", "", command="audit")
def _memory_negative(root):
    return _audit(root, "--memory-gb=-1")


@_case("list_device", "audit --list /dev/zero (a device that never ends)", 2, "is a device", "/dev/zero",
       command="audit", subprocess=True)
def _list_device(root):
    return ["--list", "/dev/zero", "--out", str(root / "out")]


@_case("list_fifo", "audit --list naming a named pipe (reading would block)", 2, "named pipe", "models.txt",
       command="audit", subprocess=True)
def _list_fifo(root):
    os.mkfifo(root / "models.txt")
    return ["--list", str(root / "models.txt"), "--out", str(root / "out")]


@_case("list_too_large", "audit --list naming a 17 MiB file", 2, "too large", "models.txt", command="audit")
def _list_too_large(root):
    with open(root / "models.txt", "wb") as f:
        f.truncate(17 * 2**20)  # sparse
    return ["--list", str(root / "models.txt"), "--out", str(root / "out")]


@_case("out_is_a_file", "audit --out naming an existing file (checked before any work)", 2, "not a folder", "results",
       command="audit")
def _out_is_a_file(root):
    (root / "results").write_text("not a folder\n")
    return [str(good_model(root)), str(good_model(root)), "--out", str(root / "results")]


@_case("out_under_a_file", "audit --out naming a folder inside a file", 2, "cannot be created", "results/run",
       command="audit")
def _out_under_a_file(root):
    (root / "results").write_text("not a folder\n")
    return [str(good_model(root)), str(good_model(root)), "--out", str(root / "results" / "run")]


# -- compare --json -----------------------------------------------------------------------------------


@_case("json_device", "compare --json /dev/null (a device: it must not be replaced)", 2, "character device", "/dev/null",
       subprocess=True)
def _json_device(root):
    return _pair(good_model(root), root) + ["--json", "/dev/null"]


@_case("json_fifo", "compare --json naming a named pipe", 2, "named pipe", "result.json")
def _json_fifo(root):
    os.mkfifo(root / "result.json")
    return _pair(good_model(root), root) + ["--json", str(root / "result.json")]


@_case("json_folder", "compare --json naming a folder", 2, "is a folder", "results")
def _json_folder(root):
    (root / "results").mkdir()
    return _pair(good_model(root), root) + ["--json", str(root / "results")]


@_case("json_link_to_device", "compare --json naming a symlink to /dev/null", 2, "the symlink leads to /dev/null",
       "result.json")
def _json_link_to_device(root):
    (root / "result.json").symlink_to("/dev/null")
    return _pair(good_model(root), root) + ["--json", str(root / "result.json")]


@_case("json_missing_folder", "compare --json in a folder that does not exist (checked before any work)", 2,
       "does not exist", "nowhere/result.json")
def _json_missing_folder(root):
    return _pair(good_model(root), root) + ["--json", str(root / "nowhere" / "result.json")]


# -- compare --plot -----------------------------------------------------------------------------------


@_case("plot_suffix", "compare --plot naming a file whose suffix is no picture format (checked before any work)", 2,
       "unknown picture format .txt", "layers.txt")
def _plot_suffix(root):
    return _pair(good_model(root), root) + ["--plot", str(root / "layers.txt")]


@_case("plot_folder", "compare --plot naming a folder", 2, "is a folder", "layers.png")
def _plot_folder(root):
    (root / "layers.png").mkdir()
    return _pair(good_model(root), root) + ["--plot", str(root / "layers.png")]


@_case("plot_missing_folder", "compare --plot in a folder that does not exist (checked before any work)", 2,
       "does not exist", "nowhere/layers.png")
def _plot_missing_folder(root):
    return _pair(good_model(root), root) + ["--plot", str(root / "nowhere" / "layers.png")]


@_case("out_holds_a_folder", "audit --out whose audit.json is a folder (checked before any work)", 2,
       "audit.json is a folder", "results", command="audit")
def _out_holds_a_folder(root):
    (root / "results" / "audit.json").mkdir(parents=True)
    return [str(good_model(root)), str(good_model(root)), "--out", str(root / "results")]


@_case("out_progress_fifo", "audit --out whose progress.jsonl is a named pipe (reading would block)", 2,
       "progress.jsonl is a named pipe", "results", command="audit", subprocess=True)
def _out_progress_fifo(root):
    (root / "results").mkdir()
    os.mkfifo(root / "results" / "progress.jsonl")
    return [str(good_model(root)), str(good_model(root)), "--out", str(root / "results")]
