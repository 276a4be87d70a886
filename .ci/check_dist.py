"""CI: prove a built or installed shmpipe holds everything the project ships, so a file, package,
header or entry point left out fails CI instead of someone's install.

    python .ci/check_dist.py sdist PATH.tar.gz   # every tracked file (bar the few listed below)
    python .ci/check_dist.py wheel PATH.whl      # every package, module, data file, the extension
    python .ci/check_dist.py installed           # the same, for the shmpipe this interpreter imports

The expectations come from `git ls-files` and pyproject.toml, so a new module, subpackage or data
file is covered without editing this script; leaving one out on purpose means listing it here.
Run it from a git checkout of the project (any working directory)."""
from __future__ import annotations

import configparser
import fnmatch
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
# Tracked paths the sdist leaves out on purpose (prefixes): CI scripts, git's own file, and the
# published bench results (data for the README, not for building or testing).
SDIST_LEAVES_OUT = (".ci/", ".gitignore", "bench/results/")
# Files tracked inside package directories that are not installed, and why.
# (Every tracked .pyx is compiled into an extension module of its package: the install must hold
# that .so instead; see compiled_modules().)
NOT_INSTALLED = {
    "bench/README.md": "documentation of the bench, in the sdist",
    "bench/micro/": "pytest-benchmark micro benchmarks, run from a checkout",
}
GENERATED = re.compile(r"(\.so|\.pyc)$")


def generated(names: set[str]) -> list[str]:
    """Build products in a source archive: compiled modules, bytecode, and C generated from a .pyx."""
    return sorted(n for n in names if GENERATED.search(n) or (n.endswith(".c") and n[:-2] + ".pyx" in names))


def tracked() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True)
    return [f for f in out.stdout.decode().split("\0") if f]


def fail(problems: list[str], what: str) -> None:
    if problems:
        print(f"check_dist: {what}:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)


def check_sdist(path: Path) -> None:
    with tarfile.open(path) as tar:
        names = {PurePosixPath(*PurePosixPath(m.name).parts[1:]).as_posix() for m in tar.getmembers()}
    missing = [f for f in tracked() if not f.startswith(SDIST_LEAVES_OUT) and f not in names]
    fail(missing, f"{path.name} lacks tracked files (add them to MANIFEST.in, or to SDIST_LEAVES_OUT)")
    fail(generated(names), f"{path.name} ships generated files")
    print(f"check_dist: {path.name}: every tracked file is in it ({len(names)} entries), nothing generated")


def expected_install() -> tuple[set[str], dict[str, str], list[str]]:
    """(files every install must hold, console scripts, problems in the declaration itself); a
    compiled module is named by a pattern, ``pkg/stem.*.so``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    st = config["tool"]["setuptools"]
    package_dir, packages, package_data = st["package-dir"], st["packages"], st.get("package-data", {})
    files = tracked()

    def skipped(f: str) -> bool:
        return any(f == k or (k.endswith("/") and f.startswith(k)) for k in NOT_INSTALLED)

    expected: set[str] = set()
    source_of: dict[str, str] = {}
    for pkg in packages:
        top, *rest = pkg.split(".")
        src = PurePosixPath(package_dir.get(top, top), *rest).as_posix()
        source_of[src] = pkg
        for f in files:
            if PurePosixPath(f).parent.as_posix() != src or skipped(f):
                continue
            name = PurePosixPath(f).name
            if f.endswith(".pyx"):
                expected.add(f"{pkg.replace('.', '/')}/{name[:-4]}.*.so")
            elif f.endswith(".py") or any(fnmatch.fnmatch(name, pat) for pat in package_data.get(pkg, [])):
                expected.add(f"{pkg.replace('.', '/')}/{name}")
            else:
                expected.add(f"UNDECLARED {f}")  # neither a module nor declared package data
    problems = sorted(f"{e[11:]}: tracked in a package but neither a module nor declared package data"
                      for e in expected if e.startswith("UNDECLARED "))
    roots = {package_dir.get(p, p) for p in (q.split(".")[0] for q in packages)}
    for f in files:
        parent = PurePosixPath(f).parent.as_posix()
        if (PurePosixPath(f).name == "__init__.py" and parent not in source_of and not skipped(f)
                and any(parent.startswith(r + "/") for r in roots)):
            problems.append(f"{parent}: a package directory not listed in [tool.setuptools] packages")
    expected = {e for e in expected if not e.startswith("UNDECLARED ")}
    return expected, dict(config["project"].get("scripts", {})), problems


def check_files(files: set[str], entry_points: str, where: str) -> None:
    expected, scripts, problems = expected_install()
    fail(problems, "pyproject.toml does not declare everything tracked")
    compiled = {e for e in expected if e.endswith(".*.so")}
    missing = sorted(expected - compiled - files)
    missing += sorted(f"{pattern} (compiled from its .pyx)" for pattern in compiled
                      if not any(fnmatch.fnmatch(f, pattern) for f in files))
    fail(missing, f"{where} lacks")
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    have = dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}
    fail([f"{k} = {v}" for k, v in scripts.items() if have.get(k) != v], f"{where} lacks the console scripts")
    print(f"check_dist: {where}: all {len(expected)} module/data files ({len(compiled)} compiled) and "
          f"{', '.join(scripts)} are there")


def check_wheel(path: Path) -> None:
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if re.fullmatch(r"[^/]+\.dist-info/entry_points\.txt", n))
        check_files(names, whl.read(info).decode(), path.name)


def check_installed() -> None:
    from importlib import metadata

    import shmpipe

    where = Path(shmpipe.__file__).resolve()
    fail([str(where)] if ROOT in where.parents else [], "shmpipe is imported from the checkout, not an install")
    dist = metadata.distribution("shmpipe")
    check_files({p.as_posix() for p in dist.files or ()}, dist.read_text("entry_points.txt") or "",
                f"the installed shmpipe ({where.parent.parent})")


if __name__ == "__main__":
    mode, *rest = sys.argv[1:] or ["?"]
    if mode == "sdist" and len(rest) == 1:
        check_sdist(Path(rest[0]))
    elif mode == "wheel" and len(rest) == 1:
        check_wheel(Path(rest[0]))
    elif mode == "installed" and not rest:
        check_installed()
    else:
        sys.exit(__doc__)
