"""Layout files: malformed ones are refused with one clear line naming the file and the problem."""

from __future__ import annotations

import pytest

from awm_jax.errors import UsageError
from awm_jax.layouts import load_layout_file

QKV_HEAD = 'embedding = "e.weight"\n[qkv]\ntensor = "b.{i}.qkv.weight"\n'
GOOD_QKV = 'embedding = "e.weight"\n[qkv]\ntensor = "b.{i}.qkv.weight"\nsplit = "per_head"\n'


@pytest.mark.parametrize("text, message", [
    ("embedding = [", r"not valid TOML"),
    ('embedding = "e.weight"\ncolour = 1\n' + '[query]\ntensor = "b.{i}.q.weight"\n[key]\ntensor = "b.{i}.k.weight"\n',
     r"unknown key\(s\) colour"),
    ('[qkv]\ntensor = "b.{i}.qkv.weight"\n', r"embedding must name"),
    ('embedding = "e.weight"\n', r"no projections"),
    ('embedding = "e.weight"\n[query]\ntensor = "b.{i}.q.weight"\n', r"no projections"),
    ('embedding = "e.weight"\n[qkv]\ntensor = "b.0.qkv.weight"\n', r"has no \{i\}"),
    ('embedding = "e.weight"\n[qkv]\ntensor = "b.{layer}.qkv.weight"\n', r"placeholder other than \{i\}"),
    (QKV_HEAD + 'split = "interleaved"\n', r"split = 'interleaved' is not"),
    (QKV_HEAD + "transpose = true\n", r"unknown key\(s\) transpose in \[qkv\]"),
    (GOOD_QKV + '[query]\ntensor = "b.{i}.q.weight"\n[key]\ntensor = "b.{i}.k.weight"\n', r"either \[qkv\] or"),
    (GOOD_QKV + "[dims]\nheads = 0\n", r"\[dims\] heads must be a positive integer"),
    (GOOD_QKV + '[mlp]\nfc1 = "b.{i}.fc1.weight"\ngate = "b.{i}.g.weight"\n', r"either fc1 or gate and up"),
    (GOOD_QKV + '[mlp]\nup = "b.{i}.up.weight"\n', r"needs fc1, or gate and up"),
    ("prefix = 3\n" + GOOD_QKV, r"prefix must be a string"),
])
def test_malformed_layout_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        load_layout_file(path)
    assert str(path) in str(err.value) and "docs/layouts.md" in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_layout_file(tmp_path):
    with pytest.raises(UsageError, match=r"cannot read the layout file"):
        load_layout_file(tmp_path / "absent.toml")


def test_a_good_layout_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('prefix = "lm."\n' + GOOD_QKV
                    + '[dims]\nheads = 4\n[mlp]\nfc1 = "b.{i}.fc1.weight"\ntransposed = true\n')
    layout = load_layout_file(path)
    assert layout.name == "mine"
    assert layout.candidate_prefixes() == ["lm."]
    assert layout.query.tensor_names() == ("{p}b.{i}.qkv.weight",)
    assert layout.query.rule == "per_head" and layout.key.part == "k"
    dims = layout.dims({}, 64)
    assert (dims.heads, dims.kv_heads, dims.head_dim, dims.fused_rule) == (4, 4, 16, "per_head")
    assert layout.mlp[0].transposed
