"""The pipeline file check: every kind of mistake is one line naming the file, the line and the
problem; a good file gives rings, processes and a start order."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from shmpipe_services.launcher.config import PipelineError, load, loads, parse_cpus

CPUS = {0, 1}

GOOD = """\
[pipeline]
name = "t"
ring_prefix = "p."

[rings.ticks]
type = "tick"
capacity = 1024

[rings.books]
type = "orderbook_entry"
capacity = 64
mode = "spsc"

[processes.consumer]
command = ["shmpipe", "verify", "--ticks", "{ring.ticks}", "--name", "{name}"]
reads = ["ticks"]

[processes.book]
command = "sleep 30"
reads = ["ticks"]
writes = ["books"]
cpus = "0-1"
after = ["consumer"]

[processes.producer]
command = ["sleep", "30"]
writes = ["ticks"]
cpus = [1]
env = { WHO = "{ring.books}", PEER = "{service.consumer}", ME = "{service}" }
"""


def _line_of(text: str, marker: str) -> int:
    found = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(found) == 1, (marker, found)
    return found[0]


def _error(text: str) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        loads(text, "bad.toml", available_cpus=CPUS)
    return info.value


def test_a_good_file():
    p = loads(GOOD, "good.toml", available_cpus=CPUS)
    assert p.name == "t"
    assert p.rings["ticks"].segment == "p.ticks" and p.rings["books"].mode == "spsc"
    # writers before readers, `after` kept, file order where nothing constrains it
    assert list(p.processes) == ["producer", "consumer", "book"]
    assert p.processes["consumer"].command == [
        "shmpipe",
        "verify",
        "--ticks",
        "p.ticks",
        "--name",
        "consumer",
    ]
    assert p.processes["book"].command == ["sleep", "30"] and p.processes["book"].cpus == (0, 1)
    assert p.processes["producer"].env == {"WHO": "p.books", "PEER": "p.consumer", "ME": "p.producer"}
    assert p.processes["producer"].service == "p.producer"
    assert loads(GOOD, "good.toml", available_cpus=CPUS, ring_prefix="q-").rings["ticks"].segment == "q-ticks"


@pytest.mark.parametrize(
    "change, marker, words",
    [
        # TOML syntax: tomllib's own position
        (("capacity = 1024", "capacity = = 1024"), "= = 1024", "not valid TOML"),
        # unknown key, in a ring and in a process
        (
            ("capacity = 64", "capacity = 64\ncolour = 'red'"),
            "colour",
            "unknown key 'colour' in [rings.books]",
        ),
        (
            ('reads = ["ticks"]\n\n[processes.book]', 'reads = ["ticks"]\ncpu = [0]\n\n[processes.book]'),
            "cpu = [0]",
            "unknown key 'cpu'",
        ),
        # wrong types and values
        (("capacity = 1024", 'capacity = "big"'), "big", "rings.ticks.capacity must be an integer"),
        (("capacity = 1024", "capacity = 1000"), "1000", "must be a power of two"),
        (('mode = "spsc"', 'mode = "fanout"'), "fanout", "rings.books.mode must be one of broadcast, spsc"),
        (('type = "tick"', 'type = "quote"'), "quote", "rings.ticks.type must be one of"),
        (
            ('command = "sleep 30"', "command = 5"),
            "command = 5",
            "processes.book.command must be a list of strings or a string",
        ),
        (("cpus = [1]", "cpus = true"), "cpus = true", "processes.producer.cpus"),
        # rings a process needs that nobody declared
        (
            ('writes = ["books"]', 'writes = ["bookz"]'),
            "bookz",
            "names ring 'bookz', which no [rings.bookz] declares",
        ),
        (
            ('"{ring.ticks}", "--name"', '"{ring.tick}", "--name"'),
            "{ring.tick}",
            "{ring.tick}, but no [rings.tick] is declared",
        ),
        (
            ('PEER = "{service.consumer}"', 'PEER = "{service.nobody}"'),
            "service.nobody",
            "env names {service.nobody}, but no [processes.nobody] is declared",
        ),
        # CPU lists: malformed, reversed, not on this machine
        (('cpus = "0-1"', 'cpus = "0-x"'), "0-x", "bad CPU list '0-x'"),
        (('cpus = "0-1"', 'cpus = "1-0"'), "1-0", "bad CPU list '1-0'"),
        (("cpus = [1]", "cpus = [7]"), "[7]", "names CPU 7, which this process may not use (available: 0,1)"),
        (("cpus = [1]", "cpus = [-1]"), "[-1]", "non-negative integers"),
        # dependencies
        (
            ('after = ["consumer"]', 'after = ["nobody"]'),
            "nobody",
            "after names 'nobody', which is not a process here",
        ),
        (('after = ["consumer"]', 'after = ["book"]'), 'after = ["book"]', "after names itself"),
        # a program that is not there
        (
            ('command = ["sleep", "30"]', 'command = ["no-such-program-xyz"]'),
            "no-such-program",
            "program 'no-such-program-xyz' not found",
        ),
    ],
    ids=[
        "toml-syntax",
        "unknown-ring-key",
        "unknown-process-key",
        "capacity-type",
        "capacity-pow2",
        "mode",
        "type",
        "command-type",
        "cpus-type",
        "undeclared-ring",
        "undeclared-ring-placeholder",
        "undeclared-service",
        "cpus-malformed",
        "cpus-reversed",
        "cpus-absent",
        "cpus-negative",
        "after-unknown",
        "after-self",
        "program-missing",
    ],
)
def test_each_mistake_names_its_line(change, marker, words):
    old, new = change
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    line = _line_of(text, marker)
    err = _error(text)
    assert words in err.problem, err
    assert err.line == line, f"line {err.line}, expected {line}: {err}"
    assert str(err).startswith(f"bad.toml:{line}: ")
    assert "\n" not in str(err)


def test_a_dependency_cycle_is_named():
    text = GOOD.replace(
        '[processes.producer]\ncommand = ["sleep", "30"]',
        '[processes.producer]\ncommand = ["sleep", "30"]\nreads = ["books"]',
    )
    err = _error(text)
    assert "dependency cycle" in err.problem
    assert "producer" in err.problem and "book" in err.problem
    assert err.line in [_line_of(text, f"[processes.{n}]") for n in ("book", "producer", "consumer")]


def test_missing_sections_and_keys():
    assert "no [processes.NAME] table" in _error('[rings.x]\ntype = "tick"\ncapacity = 8\n').problem
    err = _error("[processes.a]\ncpus = [0]\n")
    assert err.line == 1 and "needs command" in err.problem
    err = _error('[rings.r]\ncapacity = 8\n[processes.a]\ncommand = "sleep 1"\n')
    assert err.line == 1 and "needs type" in err.problem
    err = _error('[pipline]\nname = "x"\n[processes.a]\ncommand = "sleep 1"\n')
    assert "unknown key 'pipline'" in err.problem and err.line == 1


def test_lossy_needs_broadcast():
    text = GOOD.replace('mode = "spsc"', 'mode = "spsc"\npolicy = "lossy"')
    err = _error(text)
    assert err.line == _line_of(text, "lossy") and "needs mode" in err.problem


@pytest.mark.parametrize(
    "text, cpus", [("0-1", (0, 1)), ("0,2-3", (0, 2, 3)), ("1", (1,)), ([1, 0, 1], (0, 1))]
)
def test_cpu_lists(text, cpus):
    assert parse_cpus(text) == cpus


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load(tmp_path / "nope.toml")


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "shmpipe_tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text(
        textwrap.dedent("""\
        [rings.ticks]
        type = "tick"
        capacity = 1024

        [processes.a]
        command = ["sleep", "5"]
        reads = ["tickz"]
        """)
    )
    out = _cli("launch", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"shmpipe launch: {bad}:7: processes.a.reads names ring 'tickz', which no [rings.tickz] declares"
    )
    assert out.stdout == ""


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, ring_name):
    from pathlib import Path

    good = tmp_path / "good.toml"
    good.write_text(GOOD.replace('cpus = "0-1"', "").replace("cpus = [1]", ""))
    out = _cli("launch", str(good), "--dry-run", "--ring-prefix", f"{ring_name}.", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"shmpipe.{ring_name}.ticks" in out.stdout
    assert out.stdout.index("producer:") < out.stdout.index("consumer:") < out.stdout.index("book:")
    assert not list(Path("/dev/shm").glob(f"shmpipe.{ring_name}*"))
    assert not (tmp_path / "logs").exists()


def test_the_shipped_example_is_valid():
    from shmpipe_services.launcher.demo import example_path

    p = load(example_path())
    assert {"capture", "verify"} <= set(p.processes)
    assert list(p.processes).index("capture") < list(p.processes).index("verify")


def test_a_service_name_too_long_names_the_process():
    text = GOOD.replace('ring_prefix = "p."', f'ring_prefix = "{"x" * 60}."')
    err = _error(text)
    assert "(ring_prefix + process name) is longer than 64" in err.problem
    assert err.line == _line_of(text, "[processes.consumer]")  # the first process in the file


# -- issue 25: what used to pass the check and fail only at run time ---------------------------------
@pytest.mark.parametrize(
    "old, new, marker, words",
    [
        (
            '"--name", "{name}"',
            '"--name", "{servic}"',
            "{servic}",
            "{servic} is not a placeholder; did you mean {service}?",
        ),
        ('ME = "{service}"', 'ME = "{nmae}"', "{nmae}", "{nmae} is not a placeholder; did you mean {name}?"),
        ('"{ring.ticks}", "--name"', '"{rings.ticks}", "--name"', "{rings.ticks}", "{ring.ticks}?"),
        ('"{ring.ticks}", "--name"', '"{ring}", "--name"', '"{ring}"', "{ring} needs a ring name"),
    ],
    ids=["servic", "nmae", "rings.ticks", "bare-ring"],
)
def test_a_placeholder_typo_is_named_on_its_line(old, new, marker, words):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    err = _error(text)
    assert words in err.problem, err
    assert err.line == _line_of(text, marker), err


def test_braces_that_are_the_programs_own_pass():
    text = GOOD.replace('command = "sleep 30"', """command = ["sh", "-c", "echo '{\\"a\\": 1}' {} {x}"]""")
    assert loads(text, "ok.toml", available_cpus=CPUS).processes["book"].command[2].endswith("{} {x}")


def test_a_second_writer_on_a_ring_is_refused_on_its_line():
    text = GOOD + '\n[processes.second]\ncommand = ["sleep", "30"]\nwrites = [ "ticks" ]\n'
    err = _error(text)
    assert err.line == _line_of(text, 'writes = [ "ticks" ]'), err
    assert "ring 'ticks' already has a writer (processes.producer)" in err.problem, err
    assert "one producer" in err.problem


def test_an_unknown_top_level_table_has_its_line():
    text = GOOD.replace("[processes.producer]", "[proceses.producer]")
    err = _error(text)
    assert "unknown key 'proceses'" in err.problem
    assert err.line == _line_of(text, "[proceses.producer]"), err
