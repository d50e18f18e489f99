"""The package as a user installs it: sdist -> wheel -> a fresh virtual environment outside the
repository, and an editable install; plus pyproject's package list and extras against the source.

The wheel is built from the sdist (as ``python -m build`` does) by calling setuptools' PEP 517
hooks with this environment's setuptools (the ``dev`` extra), from a copy of the source files
the sdist needs, so nothing is written into the repository and nothing is downloaded. The fresh
venv sees this environment's site-packages through a ``.pth`` file (so JAX is not installed
again) and gets awm_jax itself from the wheel only; every command runs from a folder outside the
repository without ``PYTHONPATH``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
#: What the sdist is built from (everything else in the repository is for development).
SOURCES = ("pyproject.toml", "README.md", "awm_jax", "configs")
SUITES = sorted(p.stem for p in (REPO / "configs").glob("*.toml"))

pytestmark = pytest.mark.skipif(not PYPROJECT.is_file(), reason="needs the source tree (pyproject.toml)")


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``cmd``; fails the test with its output unless it exits 0."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_sources(dest: Path) -> Path:
    """A copy of the files an sdist is built from (no caches, no build leftovers)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def build(hook: str, source: Path, out: Path) -> Path:
    """Calls setuptools' PEP 517 ``hook`` (``build_sdist``/``build_wheel``) in ``source``."""
    pytest.importorskip("setuptools.build_meta", reason='building needs setuptools: pip install -e ".[dev]"')
    out.mkdir(exist_ok=True)
    proc = run([sys.executable, "-c", f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"], cwd=source)
    return out / proc.stdout.strip().splitlines()[-1]


def environment_site_dirs() -> list[str]:
    """This environment's site-packages folders (what a fresh venv is given to see)."""
    ours = [site.getusersitepackages(), *site.getsitepackages()]
    return [p for p in dict.fromkeys(ours) if Path(p).is_dir()]


def fresh_venv(where: Path) -> Path:
    """A new venv that also sees this environment's site-packages; returns its python. Its own
    site-packages comes first on the path, so an awm_jax installed there is the one imported (and
    ``.pth`` files of this environment, such as an editable install's, are not processed)."""
    run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where).stdout.strip())
    (purelib / "_awm_test_environment.pth").write_text("\n".join(environment_site_dirs()) + "\n", encoding="utf-8")
    return python


def pip_install(python: Path, *args) -> None:
    """``pip install ARGS`` into the venv of ``python`` with this environment's pip: nothing
    downloaded, and ``--ignore-installed`` so that an awm_jax this environment already has (seen
    through the ``.pth`` file) neither satisfies the request nor gets uninstalled."""
    run([sys.executable, "-m", "pip", "--python", python, "install", "--ignore-installed", "--no-deps", "--no-index",
         "--no-build-isolation", "--quiet", "--disable-pip-version-check", *args], cwd=python.parent)


def user_env(tmp: Path) -> dict:
    """A user's environment: no PYTHONPATH, caches in ``tmp``, the hub offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(AWM_JAX_CACHE=str(tmp / "cache"), HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1",
               XDG_CACHE_HOME=str(tmp / "xdg"), MPLCONFIGDIR=str(tmp / "mpl"))
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it."""
    root = tmp_path_factory.mktemp("dist")
    sdist = build("build_sdist", copy_sources(root / "source"), root / "out")
    with tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root / "unpacked", **safe)
    (unpacked,) = (root / "unpacked").iterdir()
    return {"sdist": sdist, "wheel": build("build_wheel", unpacked, root / "out")}


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> tuple[Path, Path]:
    """``(python, work folder)``: a fresh venv outside the repository with the wheel installed."""
    root = tmp_path_factory.mktemp("installed")
    python = fresh_venv(root / "venv")
    pip_install(python, dists["wheel"])
    (root / "work").mkdir()
    return python, root / "work"


def test_sdist_and_wheel_hold_the_suites_and_examples(dists):
    with tarfile.open(dists["sdist"]) as tar:
        sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {f"configs/{s}.toml" for s in SUITES} | {"configs/README.md", "pyproject.toml"} <= sdist
    with zipfile.ZipFile(dists["wheel"]) as whl:
        wheel = set(whl.namelist())
    assert {f"awm_jax/configs/{s}.toml" for s in SUITES} | {"awm_jax/configs/README.md"} <= wheel
    examples = {f"awm_jax/examples/{m}/{f}" for m in ("base", "derived", "independent")
                for f in ("config.json", "model.safetensors", "tokenizer.json")}
    assert examples <= wheel
    assert not [n for n in wheel if n.startswith(("configs/", "tests/", "benchmarks/")) or "__pycache__" in n]


def test_installed_package_is_the_wheel(installed):
    python, work = installed
    out = run([python, "-c", "import awm_jax, awm_jax.io.suites as s; print(awm_jax.__file__); print(s.CONFIG_DIR)"],
              cwd=work, env=user_env(work)).stdout.splitlines()
    package, config_dir = Path(out[0]).resolve().parent, Path(out[1])
    assert python.parent.parent.resolve() in package.parents and REPO not in package.parents
    assert config_dir == package / "configs"


def test_installed_download_lists_the_suites(installed):
    python, work = installed
    env = dict(user_env(work), COLUMNS="1000")  # argparse wraps the help at the terminal width
    text = " ".join(run([python, "-m", "awm_jax.download", "--help"], cwd=work, env=env).stdout.split())
    assert re.search(r"suites in \S+[/\\]awm_jax[/\\]configs: ", text), text
    listed = text.split("configs: ", 1)[1].split(", or 'all'", 1)[0].split(", ")
    assert listed == SUITES
    dry = run([python, "-m", "awm_jax.download", "--dry-run", "sft_pairs", "--hub-cache", work / "hub"], cwd=work, env=env)
    lines = dry.stdout.splitlines()
    assert "lmsys/vicuna-7b-v1.5" in dry.stdout and "meta-llama/Llama-2-7b-hf" in dry.stdout
    assert lines[-1].endswith("(dry run)") and " 0 cached" in lines[-1]
    assert not (work / "hub").exists() or not any((work / "hub").iterdir())


def test_installed_compare_example(installed):
    python, work = installed
    proc = run([python, "-m", "awm_jax.compare", "--example"], cwd=work, env=user_env(work))
    verdicts = re.findall(r"^\s*verdict\s+(\w+)", proc.stdout, flags=re.M)
    assert verdicts == ["DERIVED", "INDEPENDENT"], proc.stdout
    assert str(python.parent.parent) in proc.stdout  # the examples are the installed ones
    assert str(REPO) not in proc.stdout
    front = run([python, "-m", "awm_jax", "--version"], cwd=work, env=user_env(work))
    assert front.stdout.startswith("awm_jax ")


def test_editable_install_reads_the_top_level_configs(tmp_path):
    if any((Path(p) / "awm_jax" / "__init__.py").is_file() for p in environment_site_dirs()):
        pytest.skip("this environment has a non-editable awm_jax, which would shadow an editable install")
    source = copy_sources(tmp_path / "checkout")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", source)
    (tmp_path / "work").mkdir()
    env = user_env(tmp_path / "work")
    out = run([python, "-c", "import awm_jax, awm_jax.io.suites as s; print(awm_jax.__file__); print(s.CONFIG_DIR)"],
              cwd=tmp_path / "work", env=env).stdout.splitlines()
    assert Path(out[0]) == source / "awm_jax" / "__init__.py"
    assert Path(out[1]) == source / "configs"
    help_text = run([python, "-m", "awm_jax.download", "--help"], cwd=tmp_path / "work", env=env).stdout
    assert all(name in help_text for name in SUITES)


def test_pyproject_lists_every_package():
    """pyproject names its packages (awm_jax.configs is mapped from configs/, so they cannot be
    found automatically): the list must be every folder of awm_jax with an ``__init__.py``."""
    setuptools = pyproject()["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "awm_jax").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"awm_jax.configs"}
    assert setuptools["package-dir"] == {"awm_jax.configs": "configs"}
    assert (REPO / "configs" / "__init__.py").is_file()


def test_zoo_extra_matches_the_zoo_check():
    from awm_jax.zoo import EXTRA_PACKAGES

    extra = pyproject()["project"]["optional-dependencies"]["zoo"]
    assert [re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0] for req in extra] == list(EXTRA_PACKAGES)


def _imported_top_modules(files) -> set[str]:
    names = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_base_install_covers_what_the_commands_import():
    """Outside the zoo, awm_jax imports only the standard library, itself, the base dependencies
    and the optional ones that say in one line how to install them when missing: PyTorch (only
    for ``--allow-pickle``) and gguf (the ``gguf`` extra, only for GGUF files)."""
    base = {re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].replace("-", "_").lower()
            for req in pyproject()["project"]["dependencies"]}
    files = [p for p in (REPO / "awm_jax").rglob("*.py") if "zoo" not in p.relative_to(REPO).parts]
    third_party = _imported_top_modules(files) - set(sys.stdlib_module_names) - {"awm_jax", "__future__"}
    optional = {"torch", "gguf"}
    assert third_party - optional <= base, f"imported but not a base dependency: {sorted(third_party - base - optional)}"
