"""Budgeted compile (segments="auto", target=...): targets met against an independent float64
forward, insensitive tables get the fewest segments, byte budgets hold, the choice is recorded."""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine.compile.budget import LADDER, Target, parse_target
from nmengine.compile.budget_report import format_report
from nmengine.spec import InputSpec, Layer, ModelSpec

from .reference import forward
from .specs import transformer_inputs, transformer_spec


def _w(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)


def two_branch_spec(dead_scale: float = 1e-7, seed: int = 0) -> ModelSpec:
    """x -> [linear -> tanh -> linear] + [linear -> gelu -> linear * dead_scale] -> logits.

    The gelu branch's output is multiplied by ~0: its table cannot matter."""
    rng = np.random.default_rng(seed)
    L = [
        Layer("linear", "a1", ["x"], "h1", {}, {"weight": _w(rng, 24, 12, scale=2.0), "bias": _w(rng, 24)}),
        Layer("tanh", "live", ["h1"], "t1"),
        Layer("linear", "a2", ["t1"], "o1", {}, {"weight": _w(rng, 6, 24), "bias": _w(rng, 6)}),
        Layer("linear", "b1", ["x"], "h2", {}, {"weight": _w(rng, 24, 12, scale=2.0), "bias": _w(rng, 24)}),
        Layer("gelu", "dead", ["h2"], "g2"),
        Layer("linear", "b2", ["g2"], "o2", {}, {"weight": _w(rng, 6, 24, scale=dead_scale)}),
        Layer("add", "sum", ["o1", "o2"], "logits"),
    ]
    return ModelSpec({"x": InputSpec((None, 12))}, L, ["logits"], name="two-branch")


def _cos_min(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    return float(np.min(np.sum(a * e, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1))))


def _table_bytes(program) -> int:
    return sum(4 * (t.breakpoints.size + t.slopes.size + t.intercepts.size) for t in program.tables.values())


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(1)
    spec = two_branch_spec()
    x = rng.standard_normal((256, 12)).astype(np.float32)
    return spec, x


@pytest.fixture(scope="module")
def mlp_auto(mlp):
    spec, x = mlp
    return nm.compile(spec, calibration=x, segments="auto", target={"cosine": 0.9999})


def test_insensitive_table_gets_the_minimum(mlp_auto):
    b = mlp_auto.meta["budget"]["tables"]
    assert b["dead:gelu"]["segments"] == min(LADDER)
    assert b["live:tanh"]["segments"] > min(LADDER)
    assert b["dead:gelu"]["impact"] < 1e-6 * b["live:tanh"]["impact"]
    assert mlp_auto.tables["dead:gelu"].meta["budget"]["segments"] == min(LADDER)


def test_cosine_target_met_against_float64_reference(mlp, mlp_auto):
    spec, x = mlp
    ref = forward(spec, {"x": x})["logits"]
    assert _cos_min(mlp_auto.run(x), ref) >= 0.9999
    m = mlp_auto.meta["budget"]
    assert m["met"] and m["measured"]["cosine_min"] >= 1 - 0.5 * 1e-4
    assert m["measured"]["bytes"] == _table_bytes(mlp_auto)
    # unseen inputs from the same distribution
    x2 = np.random.default_rng(7).standard_normal((256, 12)).astype(np.float32)
    assert _cos_min(mlp_auto.run(x2), forward(spec, {"x": x2})["logits"]) >= 0.9999


def test_tighter_target_costs_more_bytes_and_default_costs_more(mlp, mlp_auto):
    spec, x = mlp
    tight = nm.compile(spec, calibration=x, segments="auto", target=0.9999999)
    ref = forward(spec, {"x": x})["logits"]
    assert _cos_min(tight.run(x), ref) >= 0.9999999
    assert _table_bytes(tight) > _table_bytes(mlp_auto)
    default = nm.compile(spec, calibration=x)
    assert _table_bytes(mlp_auto) < _table_bytes(default)


def test_byte_budget_alone_is_respected(mlp):
    spec, x = mlp
    p = nm.compile(spec, calibration=x, segments="auto", target={"bytes": 300})
    assert _table_bytes(p) <= 300
    assert p.meta["budget"]["met"]
    # the most faithful allocation within 300 bytes beats a uniform 4-segment compile of 2 x 64 bytes
    uni = nm.compile(spec, calibration=x, segments=4)
    ref = forward(spec, {"x": x})["logits"]
    assert _table_bytes(uni) <= 300
    assert _cos_min(p.run(x), ref) >= _cos_min(uni.run(x), ref)


def test_accuracy_target_with_labels(mlp):
    spec, x = mlp
    ref = forward(spec, {"x": x})["logits"]
    labels = ref.argmax(1)
    labels[::5] = (labels[::5] + 1) % 6  # not every label agrees with the exact model
    p = nm.compile(spec, calibration=x, segments="auto", target={"accuracy_drop": 0.0, "labels": labels})
    acc_exact = np.mean(ref.argmax(1) == labels)
    acc = np.mean(p.run(x).argmax(1) == labels)
    assert acc >= acc_exact
    assert p.meta["budget"]["exact_accuracy"] == pytest.approx(acc_exact)


def test_deterministic_and_survives_save_load(mlp, mlp_auto, tmp_path):
    spec, x = mlp
    again = nm.compile(spec, calibration=x, segments="auto", target={"cosine": 0.9999})
    for k, t in mlp_auto.tables.items():
        u = again.tables[k]
        assert np.array_equal(t.breakpoints, u.breakpoints) and np.array_equal(t.intercepts, u.intercepts)
    path = tmp_path / "auto.nmb"
    nm.save(mlp_auto, path)
    back = nm.load(path)
    assert back.meta["budget"]["tables"] == mlp_auto.meta["budget"]["tables"]
    np.testing.assert_array_equal(back.run(x), mlp_auto.run(x))
    text = format_report(back.meta["budget"])
    assert "dead:gelu" in text and "met" in text


def test_scale_only_tables_get_the_minimum_for_a_cosine_target():
    """The L2 normalisation's rsqrt and the pooling's reciprocal only scale each output row: the
    cosine cannot see them, so they get the fewest segments; the LayerNorms do not."""
    spec = transformer_spec()
    cal = [transformer_inputs(seed=s, batch=8) for s in range(2)]
    p = nm.compile(spec, calibration=cal, segments="auto", target={"cosine": 0.9999})
    t = p.meta["budget"]["tables"]
    assert t["norm:rsqrt"]["segments"] == min(LADDER)
    assert t["pool:reciprocal"]["segments"] == min(LADDER)
    test = transformer_inputs(seed=5, batch=8)
    ref = forward(spec, test)["embedding"]
    assert _cos_min(p.run(test), ref) >= 0.9999


def test_bad_arguments(mlp):
    spec, x = mlp
    with pytest.raises(ValueError, match="'auto'"):
        nm.compile(spec, calibration=x, segments="many")
    with pytest.raises(ValueError, match="calibration"):
        nm.compile(spec, segments="auto")
    with pytest.raises(ValueError, match="target= needs"):
        nm.compile(spec, calibration=x, target=0.999)
    with pytest.raises(ValueError, match="labels"):
        nm.compile(spec, calibration=x, segments="auto", target={"accuracy_drop": 0.01})
    with pytest.raises(ValueError, match="2 labels"):
        nm.compile(spec, calibration=x, segments="auto", target={"accuracy_drop": 0.01, "labels": [0, 1]})
    with pytest.raises(ValueError, match="unknown key"):
        parse_target("cosine=0.9,speed=3")
    with pytest.raises(ValueError, match="cosine"):
        Target(cosine=1.5)
    with pytest.raises(ValueError, match="at least one"):
        Target()


def test_parse_target_forms():
    t = parse_target("cosine=0.9999,bytes=15k,margin=0.25")
    assert (t.cosine, t.bytes, t.margin) == (0.9999, 15000, 0.25)
    assert parse_target("bytes=2KiB").bytes == 2048
    assert parse_target(0.999).cosine == 0.999
    assert parse_target(None).cosine == 0.9999
    assert parse_target({"acc_drop": 0.01}, labels=np.array([1, 2])).accuracy_drop == 0.01


def test_inspect_shows_the_budget_and_plots(mlp_auto, tmp_path, capsys):
    from nmengine.cli import main

    path = tmp_path / "auto.nmb"
    nm.save(mlp_auto, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "budget" in out and "live:tanh" in out and "dead:gelu" in out
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    assert main(["inspect", str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_plot_without_budget_is_an_error(mlp, tmp_path, capsys):
    from nmengine.cli import main

    spec, x = mlp
    path = tmp_path / "plain.nmb"
    nm.save(nm.compile(spec, calibration=x), path)
    assert main(["inspect", str(path), "--plot", str(tmp_path / "x.png")]) == 2
    assert "no budget record" in capsys.readouterr().err


def test_cli_segments_argument():
    import argparse

    from nmengine.cli.compile_options import segments_arg, segments_options

    assert segments_arg("auto") == "auto" and segments_arg("16") == 16
    with pytest.raises(argparse.ArgumentTypeError):
        segments_arg("0")
    with pytest.raises(ValueError, match="--segments auto"):
        segments_options(argparse.Namespace(segments=16, target="cosine=0.9"))
    assert segments_options(argparse.Namespace(segments="auto", target="bytes=4k")) == {
        "segments": "auto",
        "target": "bytes=4k",
    }
    # labels come from the frontend (nmengine train: the calibration images' labels)
    assert (
        segments_options(argparse.Namespace(segments="auto", target="accuracy_drop=0.01"))["target"]
        == "accuracy_drop=0.01"
    )
    with pytest.raises(ValueError, match="unknown key"):
        segments_options(argparse.Namespace(segments="auto", target="speed=3"))


def test_sentence_embedder_passes_auto_and_target_through(tmp_path):
    from nmengine import corpus, hf

    from .test_hf import _write_tiny_model

    d = _write_tiny_model(tmp_path / "tiny")
    emb = hf.SentenceEmbedder(
        d,
        segments="auto",
        target="cosine=0.9999",
        cache=False,
        calibration_sentences=corpus.sentences(8, split="calibration"),
    )
    budget = emb.program.meta["budget"]
    assert budget["met"] and budget["target"]["cosine"] == 0.9999
    sents = corpus.sentences(24)
    a, e = emb.encode(sents), emb.with_mode("exact").encode(sents)
    assert _cos_min(a, e) >= 0.9999
