"""The requirements files: requirements.txt lists exactly what the product imports, the benchmark and test
extras stay out of it, and `make install` installs (and is rebuilt by) every requirements file."""
import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = [REPO / "app.py", *sorted((REPO / "annotator").rglob("*.py")), *sorted((REPO / "cleannet_core").rglob("*.py"))]
LOCAL = {"annotator", "cleannet_core"}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    """The distributions a requirements file names (comments and -r lines skipped)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[<>=!~;\[ ]", line)[0]))
    return names


def imported_modules(files: list[Path]) -> set[str]:
    """Top-level names of every absolute import in files, the ones inside functions included."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def product_distributions() -> set[str]:
    """The installed distributions that provide the third-party modules the product imports."""
    third_party = imported_modules(PRODUCT) - set(sys.stdlib_module_names) - LOCAL - {"__future__"}
    providers = packages_distributions()
    missing = sorted(m for m in third_party if m not in providers)
    assert not missing, f"imported by the product but not installed: {missing}"
    return {canonical(dist) for m in third_party for dist in providers[m]}


def test_runtime_requirements_are_what_the_product_imports():
    """requirements.txt names every distribution the product imports (click included) and nothing else."""
    assert listed(REPO / "requirements.txt") == product_distributions()


def test_benchmark_and_test_extras_stay_out_of_the_runtime_list():
    """cleanlab and scikit-learn serve the benchmarks only; the test tools serve the tests only."""
    runtime = listed(REPO / "requirements.txt")
    bench, test = listed(REPO / "requirements-bench.txt"), listed(REPO / "requirements-test.txt")
    assert {"cleanlab", "scikit-learn"} <= bench and {"pytest", "playwright"} <= test
    assert not (bench | test) & runtime
    assert not {"cleanlab", "sklearn"} & imported_modules(PRODUCT)


def test_pinned_torch():
    """torch and torchvision are pinned exactly (pip takes them from local disk; a range downloads GBs)."""
    lines = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()}
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= lines


def test_make_install_covers_every_requirements_file():
    """The Makefile's install stamp installs every requirements*.txt and depends on each, so editing any of
    them reinstalls on the next `make run` / `make test`."""
    makefile = (REPO / "Makefile").read_text()
    files = set(re.search(r"^REQUIREMENTS := (.+)$", makefile, re.M).group(1).split())
    assert files == {p.name for p in REPO.glob("requirements*.txt")}
    assert re.search(r"^\$\(STAMP\): \$\(REQUIREMENTS\) pyproject\.toml$", makefile, re.M)
    assert "$(addprefix -r ,$(REQUIREMENTS))" in makefile
