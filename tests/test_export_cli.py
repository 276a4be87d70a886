"""``shmpipe export`` when something is wrong: one line naming the thing, never a traceback; a damaged
file exported up to its last complete entry and said so; an existing target kept unless --overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_helpers import T0, run_cli, venue_lines, write_wslog

from shmpipe.wslog import encode_entry

import pyarrow  # noqa: F401 - the dev extra installs the export extra: missing, fail
import pandas as pd

BAD = Path(__file__).parent / "fixtures" / "capture" / "bad"
SAMPLE = Path(__file__).parent / "fixtures" / "capture" / "capture_sample.wslog"
KNOWN_BAD = json.loads((Path(__file__).parent / "fixtures" / "capture" / "known_answers_wslog.json").read_text())["bad"]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shmpipe export: "), lines[0]
    return lines[0]


def test_an_existing_target_is_refused_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, stdout, stderr = run_cli("export", "parquet", str(SAMPLE), "--out", str(out))
    assert code == 1 and stdout == ""
    assert str(out) in one_line(stderr) and "--overwrite" in stderr
    assert (out / "keep.txt").read_text() == "mine"
    code, stdout, stderr = run_cli("export", "parquet", str(SAMPLE), "--out", str(out), "--overwrite", "--json")
    assert code == 0, stderr
    assert not (out / "keep.txt").exists()
    assert len(pd.read_parquet(out / "book_changes")) == json.loads(stdout)["rows"]["book_changes"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]      # no temporary folder left beside it


def test_overwrite_never_deletes_the_input(tmp_path):
    capture = tmp_path / "cap" / "k.wslog"
    capture.parent.mkdir()
    write_wslog(capture, "kraken", venue_lines("kraken")[:50])
    code, _out, stderr = run_cli("export", "parquet", str(capture), "--out", str(tmp_path / "cap"), "--overwrite")
    assert code == 1 and "holds the input" in one_line(stderr)
    assert capture.exists()


@pytest.mark.parametrize("name", ["truncated.wslog", "huge_length.wslog"])
def test_a_damaged_file_exports_up_to_its_last_complete_entry_and_says_so(name, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("export", "parquet", str(BAD / name), "--out", str(out), "--json")
    assert code == 3
    line = one_line(stderr)
    assert "stopped early" in line and name in line
    summary = json.loads(stdout)
    assert summary["entries"] == KNOWN_BAD[name]["complete_records"]
    assert summary["stopped_early"] and name in summary["stopped_early"][0]
    written = sum(len(pd.read_parquet(out / t)) for t in ("book_changes", "ticks") if (out / t).exists())
    assert written == summary["rows"]["book_changes"] + summary["rows"]["ticks"]
    assert written > 0 or name == "huge_length.wslog"     # its one good entry is a control frame


def test_an_unknown_venue_is_one_line_and_the_rest_is_exported(tmp_path):
    capture = tmp_path / "mixed.wslog"
    write_wslog(capture, "kraken", venue_lines("kraken")[:60])
    with open(capture, "ab") as f:
        for i in range(5):
            f.write(encode_entry(T0 + 10_000_000_000 + i, 9, b'{"e":"depthUpdate"}'))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("export", "parquet", str(capture), "--out", str(out), "--json")
    assert code == 3
    line = one_line(stderr)
    assert "unknown venue" in line and "exchange id 9" in line and "5 entries" in line
    assert json.loads(stdout)["rows"]["book_changes"] > 0


def test_an_unknown_venue_in_symbols_is_refused(tmp_path):
    code, _out, stderr = run_cli("export", "parquet", str(SAMPLE), "--out", str(tmp_path / "o"),
                                 "--symbols", "binance:BTCUSDT")
    assert code == 1 and "unknown venue 'binance'" in one_line(stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,words", [
    (["parquet", "nope.wslog"], "no such file or directory: nope.wslog"),
    (["parquet", "__file__"], "not a .wslog"),
    (["parquet", str(SAMPLE), "--from", "2024-06-11T15:00:00Z", "--until", "2024-06-11T14:00:00Z"], "--until"),
])
def test_bad_arguments_are_one_line(args, words, tmp_path):
    args = [__file__ if a == "__file__" else a for a in args]
    code, _out, stderr = run_cli("export", *args, "--out", str(tmp_path / "o"))
    assert code == 1 and words in one_line(stderr)


def test_a_time_that_is_not_one_is_a_usage_error(tmp_path):
    code, _out, stderr = run_cli("export", "parquet", str(SAMPLE), "--out", str(tmp_path / "o"), "--from", "noon")
    assert code == 2 and "not a time: 'noon'" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("target,module", [("parquet", "pyarrow"), ("hftbacktest", "hftbacktest"),
                                           ("nautilus", "nautilus_trader")])
def test_a_missing_extra_names_it(target, module, tmp_path):
    """The module made unimportable for the child: a package of that name that raises ImportError."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f'raise ImportError("No module named {module}")\n')
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), *filter(None, sys.path)])}
    proc = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "export", target, str(SAMPLE), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert module in line and "pip install 'shmpipe[export]'" in line
    assert not (tmp_path / "o").exists()


def test_a_capture_folder_by_hour_and_until_skips_the_later_files(tmp_path):
    """The writer's layout, DIR/<exchange>/YYYYMMDD_HH.wslog: a file that starts at or after --until
    is not even read; the progress flag leaves stdout to the summary."""
    from shmpipe.wslog.format import marker_payload
    lines = venue_lines("kraken")[:200]
    folder = tmp_path / "capture" / "kraken"
    folder.mkdir(parents=True)
    for hour, start in ((14, T0), (15, T0 + 3600 * 10**9)):
        with open(folder / f"20240611_{hour}.wslog", "wb") as f:
            f.write(encode_entry(start, 0, marker_payload(2, "connect", "ws://x")))
            for i, line in enumerate(lines):
                f.write(encode_entry(start + 1000 + i * 10_000_000, 2, line))
    runs = {}
    for name, extra in (("all", []), ("until", ["--until", "2024-06-11T15:00:00Z"])):
        code, stdout, stderr = run_cli("export", "parquet", str(tmp_path / "capture"), "--out", str(tmp_path / name),
                                       "--json", "--progress", *extra)
        assert code == 0, stderr
        runs[name] = json.loads(stdout)
    assert runs["all"]["inputs"] == 2 and runs["all"]["entries"] == 2 * 201 and runs["all"]["reconnects"] == 1
    assert runs["until"]["inputs"] == 1 and runs["until"]["entries"] == 201


def test_an_empty_capture_file_is_listed_not_an_error(tmp_path):
    code, stdout, stderr = run_cli("export", "parquet", str(BAD / "empty.wslog"), str(SAMPLE), "--out",
                                   str(tmp_path / "o"), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["empty_files"] == [str(BAD / "empty.wslog")] and summary["stopped_early"] == []
