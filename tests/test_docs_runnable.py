"""Every shell block marked runnable in README.md and docs/*.md runs as written (issue 25).

The marker is the fenced block's info string ``bash runnable`` (docs/09-development.md says what
such a block may do): each runs from the repository root under ``bash -e -o pipefail``, with this
interpreter's ``shmpipe`` first on PATH and a private control directory, and must exit 0 and leave
no ``doc-*`` segment in /dev/shm."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```bash runnable\n(.*?)^```", re.S | re.M)


def _blocks():
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(m.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = _blocks()


def _leftovers() -> list[str]:
    """shmpipe.doc-*, shmpipe-stats.doc-*, ...: what the blocks may make."""
    return sorted(p.name for p in Path("/dev/shm").iterdir()
                  if p.name.startswith("shmpipe") and p.name.split(".", 1)[-1].startswith("doc-"))


def test_the_readme_is_a_front_page_and_the_pages_cite_nothing_outside_the_repository():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in PAGES:
        text = page.read_text()
        for outside in ("DESIGN.md", "shared/", "Until `shmpipe ctl`"):
            assert outside not in text, (page.name, outside)
        assert not re.search(r"\bissue \d+", text), (page.name, re.search(r"\bissue \d+", text))


def test_relative_links_lead_somewhere():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def test_the_pages_have_runnable_blocks():
    pages = {b.id.split(":")[0] for b in BLOCKS}
    assert "README.md" in pages and len(BLOCKS) >= 4, [b.id for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS)
def test_runnable_block(block, private_runtime_dir):
    before = set(_leftovers())
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    left = [n for n in _leftovers() if n not in before]
    for name in left:
        (Path("/dev/shm") / name).unlink(missing_ok=True)
    assert out.returncode == 0, (
        f"exit {out.returncode}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    )
    assert not left, f"the block left {left} in /dev/shm"
