"""Loaders under fuzzing: the saved corpus and the seeds replay clean, and a short hypothesis campaign per
target (mutations of valid files and random bytes) finds no undocumented error.

The long coverage-guided campaign is ``python tools/fuzz.py`` (atheris); what it finds lands in
``tests/fuzz_corpus/<target>/`` and is replayed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz_targets import TARGETS, check, seeds

CORPUS = Path(__file__).parent / "fuzz_corpus"


def _corpus() -> list[tuple[str, Path]]:
    return (
        [(d.name, f) for d in sorted(CORPUS.iterdir()) if d.is_dir() for f in sorted(d.iterdir()) if f.is_file()]
        if CORPUS.is_dir()
        else []
    )


if _corpus():  # findings of past campaigns (tools/fuzz.py saves them here)

    @pytest.mark.parametrize("target,path", _corpus(), ids=lambda v: v.name if isinstance(v, Path) else v)
    def test_corpus_replays_clean(target, path):
        check(target, path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_are_accepted(target):
    """The seeds are valid inputs: they must pass the target without even a documented error."""
    fn, _ = TARGETS[target]
    for data in seeds(target):
        fn(data)


@st.composite
def _mutated(draw, target):
    data = bytearray(draw(st.sampled_from(seeds(target))))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[:pos] + data[pos + draw(st.integers(1, 64)) :]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_campaign(target):
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(_mutated(target), st.binary(max_size=256)))
    def run(data):
        check(target, data)

    run()
