"""The distribution: its wheel declares what its modules import, and the CLI runs.

The wheel is built from a copy of the sources in ``tmp_path`` (so the build leaves
nothing in the working tree), its modules' imports are read with :mod:`ast`, and
each third-party import name is mapped to the distributions that provide it with
:func:`importlib.metadata.packages_distributions`. The runtime dependencies plus
the ``[trainer]`` extra must name one of them for every import.
"""

from __future__ import annotations

import ast
import email
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOURCES = ("pyproject.toml", "README.md", "protos", "service", "trainer")


def canonical(name: str) -> str:
    """PEP 503 normal form of a distribution name (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """The distribution a requirement line names (``torch>=2.13,<3`` -> ``torch``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, spec
    return canonical(match.group(1))


def imported_top_names(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (at any depth)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_helpers_read_names_and_imports() -> None:
    assert requirement_name("PyYAML>=6.0,<7") == "pyyaml"
    assert requirement_name("fbgemm_gpu-cpu>=1.8 ; extra == 'trainer'") == "fbgemm-gpu-cpu"
    src = "import os.path, numpy as np\nfrom a.b import c\nfrom . import d\ndef f():\n import e\n"
    assert imported_top_names(src) == {"os", "numpy", "a", "e"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not list((ROOT / "protos").glob("*_pb2.py")):
        pytest.fail("protos/*_pb2.py missing: run `make protos` first")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*cmd, "-q", "--no-index", str(src), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("rankboard-*.whl")
    return built


def test_wheel_holds_the_packages_and_their_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for module in (
        "rankboard/service/cli.py",
        "rankboard/service/rest/app.py",
        "rankboard/trainer/client/__init__.py",
        "rankboard/protos/ingest_pb2.py",
        "rankboard/protos/ingest_pb2.pyi",
        "rankboard/protos/ingest.proto",
        "rankboard/service/rest/static/index.html",
    ):
        assert module in names, module
    # every source package of the tree is in the wheel (none forgotten in [tool.setuptools])
    for init in [*ROOT.glob("service/**/__init__.py"), *ROOT.glob("trainer/**/__init__.py")]:
        assert f"rankboard/{init.relative_to(ROOT).as_posix()}" in names, init


def test_declared_dependencies_cover_every_third_party_import(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
        sources = {n: zf.read(n).decode() for n in zf.namelist() if n.endswith(".py")}
    requires = meta.get_all("Requires-Dist") or []
    runtime = {requirement_name(r) for r in requires if "extra ==" not in r}
    trainer = {requirement_name(r) for r in requires if re.search(r"extra\s*==\s*.trainer.", r)}
    dev = {requirement_name(r) for r in requires if re.search(r"extra\s*==\s*.dev.", r)}
    assert {"torch", "torchmetrics", "fastapi", "grpcio", "protobuf"} <= runtime
    assert {"torchrec", "pytest", "ruff", "mypy"}.isdisjoint(runtime)  # no tooling at run time
    assert {"torchrec", "fbgemm-gpu-cpu"} <= trainer
    assert {"pytest", "hypothesis", "ruff", "mypy", "selenium", "scikit-learn"} <= dev
    declared = runtime | trainer

    provided = importlib.metadata.packages_distributions()
    first_party_or_stdlib = set(sys.stdlib_module_names) | {"rankboard", "__future__"}
    uncovered: dict[str, set[str]] = {}
    seen: set[str] = set()
    for path, text in sources.items():
        for name in imported_top_names(text) - first_party_or_stdlib:
            seen.add(name)
            dists = {canonical(d) for d in provided.get(name, [])}
            if not dists & declared:
                uncovered.setdefault(
                    f"{name} (from {sorted(dists) or 'nothing installed'})", set()
                ).add(path)
    assert not uncovered, f"imports no declared dependency provides: {uncovered}"
    # the scan saw the package's real imports (guards against reading nothing)
    assert {"torch", "numpy", "grpc", "google", "fastapi", "torchrec"} <= seen


def test_console_script_and_imports_work_from_the_venv() -> None:
    out = subprocess.run(
        [str(BIN / "rankboard"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for command in ("serve", "send", "compare"):
        assert command in out.stdout
    imp = subprocess.run(
        [sys.executable, "-c", "import rankboard.service, rankboard.trainer"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imp.returncode == 0, imp.stderr[-3000:]


def pins(*files: str) -> dict[str, Version]:
    """``name==version`` lines of requirements files, by canonical name."""
    out: dict[str, Version] = {}
    for name in files:
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                dist, _, version = line.partition("==")
                out[canonical(dist.strip())] = Version(version.strip())
    return out


def test_declared_ranges_admit_the_pinned_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {
        "runtime": (project["dependencies"], pins("torch-cpu.txt", "base.txt")),
        "trainer": (
            project["optional-dependencies"]["trainer"],
            pins("torch-cpu.txt", "torchrec.txt"),
        ),
        "dev": (project["optional-dependencies"]["dev"], pins("base.txt")),
    }
    for group, (requirements, pinned) in groups.items():
        assert requirements, group
        for line in requirements:
            req = Requirement(line)
            name = canonical(req.name)
            assert name in pinned, f"{group}: {name} has no pin in requirements/"
            assert pinned[name] in req.specifier, f"{group}: {line} excludes the pin {pinned[name]}"


def test_service_image_installs_the_runtime_dependencies_only() -> None:
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile.service").read_text())
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    installs = " ".join(runs)
    # the pins file (which also pins pytest, ruff, mypy, ...) only constrains versions
    assert "-r requirements/base.txt" not in installs
    assert re.search(r"--constraint requirements/base\.txt\s+-r /tmp/runtime\.txt", installs)
    # the list the image installs is pyproject's runtime dependencies, nothing else
    (code,) = re.findall(r'python -c "([^"]+)" > /tmp/runtime\.txt', installs)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out.stdout.splitlines() == project["dependencies"]
