"""The trained digits models, matrixized vs exact, with the accelerator model's figures beside them.

    pytest bench/test_bench_models.py --benchmark-only

Each benchmark's ``extra_info`` carries the modelled MACs, PWL evaluations and DRAM traffic of the
batch it ran (``program.cost``), so a results file describes itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine import train as nt
from nmengine.compile import compile

BATCHES = (1, 360)


@pytest.fixture(scope="module")
def digits():
    return nt.load_digits_split()


@pytest.fixture(scope="module", params=["cnn", "vit"])
def trained(request, digits):
    """(name, program) for a model trained with its default config (seed 0)."""
    name = request.param
    model = nt.create_model(name, seed=0)
    nt.train(model, digits, progress=False, seed=0, **nt.default_config(name))
    program = compile(model.to_spec(), calibration=digits.x_train[:256], segments=16)
    return name, program


@pytest.mark.parametrize("mode", ["matrixized", "exact"])
@pytest.mark.parametrize("batch", BATCHES)
def test_model_inference(benchmark, trained, digits, batch, mode):
    name, program = trained
    x = np.ascontiguousarray(digits.x_test[:batch])
    report = program.cost(nm.AcceleratorConfig(), {"x": x.shape})
    benchmark.group = f"{name}-batch{batch}"
    benchmark.extra_info.update(
        {
            "model": name,
            "mode": mode,
            "batch": batch,
            "macs": int(report.total["macs"]),
            "pwl_evals": int(report.total["pwl_evals"]),
            "dram_bytes_modelled": int(report.total["dram_bytes"]),
        }
    )
    benchmark(program.run, x, mode=mode)
    benchmark.extra_info["images_per_s"] = round(batch / benchmark.stats.stats.median, 1)
