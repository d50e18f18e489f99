"""awm_jax.io.suites and the shipped configs/*.toml experiment suites."""

from __future__ import annotations

import itertools
import re

import pytest

from awm_jax.errors import UsageError
from awm_jax.io.hub import parse_hub_id
from awm_jax.io.suites import CONFIG_DIR, LABELS, load_suite, suite_names, suite_path

DERIVED = ["sft_pairs", "cpt_pairs", "rl_pairs", "multimodal_pairs", "pruning_pairs", "moe_pairs"]
INDEPENDENT = ["independent_7b", "independent_13b"]
GATED_ORGS = ("meta-llama/", "google/", "mistralai/")


def test_shipped_suites_are_the_papers_eight():
    assert sorted(suite_names()) == sorted(DERIVED + INDEPENDENT)
    assert (CONFIG_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", DERIVED + INDEPENDENT)
def test_suite_is_well_formed(name):
    suite = load_suite(name)
    assert suite.name == name and suite.path == CONFIG_DIR / f"{name}.toml"
    assert suite.description and suite.paper_section
    for key, model in suite.models.items():
        assert key == model.key
        hub_id = parse_hub_id(model.spec)
        assert hub_id is not None and hub_id.repo_id == model.repo, model.spec
        if model.revision is not None:
            assert re.fullmatch(r"[0-9a-f]{40}|refs/pr/\d+", model.revision), model.revision
        assert model.gated == model.repo.startswith(GATED_ORGS), model.repo
        assert not re.fullmatch(r"meta-llama/(Llama-2-\d+b(-chat)?|Llama-2-\d+b)", model.repo), "Meta-format repository"
    used = set()
    for pair in suite.pairs:
        assert pair.label in LABELS and pair.relation
        assert pair.a in suite.models and pair.b in suite.models and pair.a != pair.b
        used |= {pair.a, pair.b}
    assert used == set(suite.models), "every model is in some pair"
    assert len({frozenset((p.a, p.b)) for p in suite.pairs}) == len(suite.pairs)


@pytest.mark.parametrize("name", DERIVED)
def test_derived_suites_have_ten_derived_pairs(name):
    suite = load_suite(name)
    assert len(suite.pairs) == 10
    assert {p.label for p in suite.pairs} == {"derived"}


@pytest.mark.parametrize("name", INDEPENDENT)
def test_independent_suites_pair_all_ten_models(name):
    suite = load_suite(name)
    assert len(suite.models) == 10 and len(suite.pairs) == 45
    assert {p.label for p in suite.pairs} == {"independent"}
    assert {frozenset((p.a, p.b)) for p in suite.pairs} == {frozenset(c) for c in itertools.combinations(suite.models, 2)}
    assert len({m.repo for m in suite.models.values()}) == 10


def test_a_repository_has_one_revision_and_key_across_suites():
    seen: dict[str, tuple[str | None, str]] = {}
    for name in DERIVED + INDEPENDENT:
        for model in load_suite(name).models.values():
            assert seen.setdefault(model.repo, (model.revision, model.key)) == (model.revision, model.key), model.repo


def test_pair_models():
    suite = load_suite("sft_pairs")
    a, b = suite.pair_models(suite.pairs[0])
    assert (a.key, b.key) == (suite.pairs[0].a, suite.pairs[0].b)
    assert a.spec == "meta-llama/Llama-2-7b-hf"
    assert b.spec == "lmsys/vicuna-7b-v1.5@e47d451158f817a9cea20bb0f73b854c9832a85d"


# ---- lookup and validation ------------------------------------------------------------------
def test_suite_path_by_name_and_file(tmp_path):
    assert suite_path("moe_pairs") == CONFIG_DIR / "moe_pairs.toml"
    assert suite_path(str(CONFIG_DIR / "moe_pairs.toml")) == CONFIG_DIR / "moe_pairs.toml"
    with pytest.raises(UsageError, match="unknown suite 'nope'.*sft_pairs"):
        suite_path("nope")
    with pytest.raises(UsageError, match="no such suite file"):
        suite_path(str(tmp_path / "missing.toml"))


GOOD = """
[suite]
name = "t"

[[models]]
key = "a"
repo = "org/a"

[[models]]
key = "b"
repo = "org/b"
revision = "refs/pr/2"

[[pairs]]
a = "a"
b = "b"
label = "derived"
"""


def test_minimal_suite(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(GOOD)
    suite = load_suite(str(path))
    assert [m.spec for m in suite.models.values()] == ["org/a", "org/b@refs/pr/2"]
    assert suite.models["a"].confirmed and not suite.models["a"].gated
    assert suite.pairs[0].relation == "" and suite.description == ""


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "[[pairs]]\na = 'a'\nb = 'c'\nlabel = 'derived'\n", "model key 'c' is not defined"),
    (lambda t: t + "[[pairs]]\na = 'b'\nb = 'a'\nlabel = 'independent'\n", "appears twice"),
    (lambda t: t + "[[pairs]]\na = 'a'\nb = 'a'\nlabel = 'independent'\n", "with itself"),
    (lambda t: t.replace('label = "derived"', 'label = "related"'), "label 'related' is not one of"),
    (lambda t: t.replace('repo = "org/a"', 'repo = "not a repo"'), "is not a hub id"),
    (lambda t: t.replace('repo = "org/a"', 'repo = "org/a@main"'), "is not a hub id"),
    (lambda t: t.replace('revision = "refs/pr/2"', 'revision = "../x"'), "is not a hub id"),
    (lambda t: t.replace('key = "b"', 'key = "a"'), "duplicate model key 'a'"),
    (lambda t: t.replace('repo = "org/a"', 'repo = "org/a"\nsize = 7'), "unknown field 'size'"),
    (lambda t: t.replace('repo = "org/a"', 'repo = "org/a"\ngated = "yes"'), "'gated' must be true or false"),
    (lambda t: t.replace('name = "t"', 'name = ""'), "'name' must be a non-empty string"),
    (lambda t: t.replace('[suite]\nname = "t"', ""), "missing field 'suite'"),
    (lambda t: t.replace('label = "derived"', ""), "missing field 'label'"),
    (lambda t: t + "[[pairs\n", "not valid TOML"),
])
def test_invalid_suites_are_refused_with_one_line(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(UsageError, match=message) as info:
        load_suite(str(path))
    assert "\n" not in str(info.value) and info.value.exit_code == 2
