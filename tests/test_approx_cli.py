"""Tests for the ``nmengine approx`` subcommand (argparse parsing + run(), output via capsys)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
from scipy import special

from nmengine.cli import approx as cli
from nmengine.pwl import PWLTable


def _parse(argv):
    parser = argparse.ArgumentParser(prog="nmengine")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["approx", *argv])
    assert args.func is cli.run
    return args


def _rows(text):
    return [line.split() for line in text.strip().splitlines()[1:]]


def test_cli_single_fit(capsys):
    rc = cli.run(_parse(["gelu", "--segments", "32"]))
    out = capsys.readouterr().out
    assert rc == 0
    head = out.splitlines()[0].split()
    assert head[:7] == ["function", "method", "segments", "table", "max_abs", "max_rel", "mean_abs"]
    (row,) = _rows(out)
    assert row[:4] == ["gelu", "optimized", "32", "34"]
    max_abs = float(row[4])
    assert max_abs <= 1e-3
    # the printed figure is the real error (independent float64 check)
    table_x = np.linspace(-8, 8, 200_001).astype(np.float32)
    from nmengine.approx import fit

    t = fit("gelu", segments=32)
    indep = np.abs(t(table_x).astype(np.float64) - table_x * special.ndtr(table_x.astype(np.float64))).max()
    assert max_abs == pytest.approx(indep, rel=1e-3)
    assert "[-8, 8]" in out


def test_cli_uniform_range_and_methods(capsys):
    rc = cli.run(_parse(["tanh", "--segments", "8", "16", "--method", "both", "--lo", "-4", "--hi", "4"]))
    out = capsys.readouterr().out
    assert rc == 0
    rows = _rows(out)
    assert [(r[1], r[2]) for r in rows] == [
        ("uniform", "8"),
        ("uniform", "16"),
        ("optimized", "8"),
        ("optimized", "16"),
    ]
    assert all("[-4," in " ".join(r) for r in rows)
    rc = cli.run(_parse(["exp", "--method", "uniform", "--segments", "16"]))
    assert rc == 0 and _rows(capsys.readouterr().out)[0][1] == "uniform"


def test_cli_default_report_and_compare_markdown(capsys):
    rc = cli.run(_parse(["exp", "--compare", "--markdown", "--points", "20001"]))
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| function") and len(lines) == 2 + 4
    ratios = [float(line.split("|")[6].strip().rstrip("x")) for line in lines[2:]]
    assert min(ratios) >= 5


def test_cli_max_error_and_save(tmp_path, capsys):
    path = tmp_path / "rsqrt.json"
    rc = cli.run(_parse(["rsqrt", "--max-error", "1e-3", "--save", str(path)]))
    out = capsys.readouterr().out
    assert rc == 0
    (row,) = _rows(out.split("saved")[0])
    assert int(row[3]) <= 512 and float(row[5]) <= 1e-3
    table = PWLTable.from_dict(json.loads(path.read_text()))
    assert table.meta["fn"] == "rsqrt" and table.n_segments == int(row[3])


def test_cli_lists_catalog(capsys):
    assert cli.run(_parse([])) == 0
    out = capsys.readouterr().out
    for name in ("gelu", "reciprocal", "relu", "softplus"):
        assert name in out


def test_cli_invalid_requests(capsys):
    assert cli.run(_parse(["gelu", "--segments", "0"])) == 1
    assert "segments must be >= 1" in capsys.readouterr().err
    assert cli.run(_parse(["nosuch", "--segments", "8"])) == 1
    assert "valid names" in capsys.readouterr().err
    assert cli.run(_parse(["gelu", "--segments", "8", "--lo", "3", "--hi", "1"])) == 1
    assert "lo < hi" in capsys.readouterr().err
    assert cli.run(_parse(["gelu", "--width", "0.5", "--method", "optimized"])) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _parse(["gelu", "--segments", "8", "--max-error", "1e-3"])  # mutually exclusive


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    for mod in [m for m in list(sys.modules) if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = cli.run(_parse(["gelu", "--segments", "16", "--plot", str(tmp_path / "g.png")]))
    captured = capsys.readouterr()
    assert rc == 2
    assert "pip install nmengine[plot]" in captured.err
    assert not (tmp_path / "g.png").exists()


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "gelu.png"
    rc = cli.run(_parse(["gelu", "--segments", "16", "--method", "both", "--plot", str(path)]))
    assert rc == 0 and path.stat().st_size > 10_000
    assert "plot written" in capsys.readouterr().out
    rpath = tmp_path / "rec.png"
    assert cli.run(_parse(["reciprocal", "--segments", "64", "--plot", str(rpath)])) == 0
    assert rpath.exists()
    assert cli.run(_parse(["gelu", "tanh", "--segments", "8", "--plot", str(rpath)])) == 1


def test_main_entry_point(capsys):
    assert cli.main(["sigmoid", "--segments", "16"]) == 0
    assert "sigmoid" in capsys.readouterr().out
