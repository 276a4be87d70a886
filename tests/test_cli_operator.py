"""What `shmpipe --help`, `--version`, `ctl --help`, `inspect` and the README tell an operator
(issue 25): grouped commands, a version, `ctl` examples a service accepts, rates for counters only."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from shmpipe import stats

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", *args], capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_version():
    from importlib.metadata import version
    assert _cli("--version").stdout.strip() == f"shmpipe {version('shmpipe')}"


def test_top_level_help_groups_every_command():
    from shmpipe_tools.cli import GROUPS, SUBCOMMANDS

    text = _cli("--help").stdout
    headings = [f"{title}:" for title in GROUPS]
    lines = text.splitlines()
    at = [lines.index(h) for h in headings]
    assert at == sorted(at), "the groups in GROUPS order"
    for name in SUBCOMMANDS:  # every command listed once, under a heading
        rows = [i for i, line in enumerate(lines) if re.match(rf"  {re.escape(name)}\s", line)]
        assert len(rows) == 1, (name, rows)
    for title, names in GROUPS.items():
        start = lines.index(f"{title}:")
        block = lines[start + 1:lines.index("", start)]
        assert [line.split()[0] for line in block] == [n for n in names if n in SUBCOMMANDS]
    assert "{" not in lines[0]   # no flat {clean,inspect,...} list


def _capture_commands():
    from shmpipe_services.capture.commands import CaptureCommands

    capture = SimpleNamespace(exchange="kraken", symbols=["BTC/USD"], has_books=True,
                              symbol_for_id=lambda sid: "BTC/USD" if sid == 7 else None,
                              resnapshot=lambda symbol: {"sent": True})
    return CaptureCommands(capture, name="c", feed="kraken", ticks="t", levels="l")


def test_ctl_help_shows_arguments_capture_accepts():
    text = _cli("ctl", "--help").stdout
    examples = re.findall(r"'(\{.*?\})'", " ".join(text.split()))
    assert examples, text
    commands = _capture_commands()
    for example in examples:
        assert commands.resnapshot(json.loads(example))["symbol"] == "BTC/USD", example


def test_readme_and_docs_ctl_resnapshot_examples_are_accepted():
    commands = _capture_commands()
    found = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for args in re.findall(r"shmpipe ctl \S+ resnapshot --args '(\{.*?\})'", path.read_text()):
            found += 1
            assert commands.resnapshot(json.loads(args))["symbol"] == "BTC/USD", (path.name, args)
    assert found, "the README shows a ctl resnapshot example"


_PUBLISHER = """
import sys, time
from shmpipe import stats
pub = stats.publish(sys.argv[1], ["messages", "latency_p99_us"])
n = 0
print("ready", flush=True)
while True:
    n += 1
    pub.update({"messages": n, "latency_p99_us": 5000 - n % 1000})
    time.sleep(0.01)
"""


def test_inspect_gives_rates_for_counters_not_gauges(ring_name):
    name = f"{ring_name}.capture"
    child = subprocess.Popen([sys.executable, "-c", _PUBLISHER, name], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        [entry] = json.loads(_cli("inspect", name, "--json", "--interval", "0.3").stdout)
        assert entry["gauges"] == ["latency_p99_us"]
        assert set(entry["rates"]["counters"]) == {"messages"}
        assert entry["rates"]["counters"]["messages"] > 0
        text = _cli("inspect", name, "--interval", "0.3").stdout
        [gauge_line] = [line for line in text.splitlines() if "latency_p99_us" in line]
        assert "/s" not in gauge_line
        [counter_line] = [line for line in text.splitlines() if line.strip().startswith("messages")]
        assert "/s)" in counter_line
    finally:
        child.kill()
        child.wait(10)
        stats.unlink(name)
