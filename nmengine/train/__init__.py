"""nmengine.train: a small pure-numpy trainer whose models export to :class:`~nmengine.spec.ModelSpec`.

Layout (data flows trainer -> ModelSpec -> compiler; nothing here imports the compiler or runtime)::

    tensor.py      Tensor with reverse-mode autograd, no_grad
    functional.py  differentiable ops (linear, conv2d/im2col, pooling, norms, softmax, attention, losses, pwl)
    nn.py          Module base (parameters, buffers, train/eval, state_dict, to_spec) and layers
    optim.py       SGD, AdamW, cosine-with-warm-up and step schedules, gradient clipping
    data.py        digits dataset (fixed stratified 1437/360 split) and a seeded batch iterator
    models.py      small_cnn(), small_vit(), default_config(name)
    trainer.py     train(), evaluate(), predict()
    aat.py         approximation-aware training with PWL tables; collect_activations()
    tables.py      learnable tables (breakpoints and values trained with the weights)

Typical use::

    from nmengine import train as nt
    data = nt.load_digits_split()
    model = nt.small_cnn(seed=0)
    nt.train(model, data, **nt.default_config("cnn"))
    spec = model.to_spec()                      # ModelSpec with layers named by module path
    with nt.approximate(model, tables):         # tables: {layer_name: {role: PWLTable}}
        nt.evaluate(model, data.x_test, data.y_test)

The whole flow with the engine's own tables (train -> AAT -> compile -> export) is
:func:`nmengine.workflow.run_flow`, behind ``nmengine train`` and ``nmengine demo``.
"""

from __future__ import annotations

from . import functional
from .aat import (
    Approximation,
    approximable_layers,
    approximate,
    calibrate_uniform_tables,
    collect_activations,
    exact,
    uniform_table,
)
from .data import Dataset, batches, load_digits_split, random_shift
from .models import SmallCNN, SmallViT, create_model, default_config, small_cnn, small_vit
from .nn import Module, manual_seed
from .optim import SGD, AdamW, Constant, CosineWarmup, StepDecay, clip_grad_norm, param_groups
from .tables import (
    LearnableTable,
    TableAdamW,
    fit_tables_to_data,
    fixed_tables,
    learnable_tables,
    learned_pwl,
    table_optimizer,
)
from .tensor import Parameter, Tensor, no_grad
from .trainer import History, blas_threads, evaluate, predict, train

__all__ = [
    "Tensor",
    "Parameter",
    "no_grad",
    "functional",
    "Module",
    "manual_seed",
    "SGD",
    "AdamW",
    "CosineWarmup",
    "StepDecay",
    "Constant",
    "clip_grad_norm",
    "param_groups",
    "Dataset",
    "load_digits_split",
    "batches",
    "random_shift",
    "SmallCNN",
    "SmallViT",
    "small_cnn",
    "small_vit",
    "default_config",
    "create_model",
    "train",
    "evaluate",
    "predict",
    "History",
    "blas_threads",
    "approximate",
    "exact",
    "Approximation",
    "collect_activations",
    "approximable_layers",
    "uniform_table",
    "calibrate_uniform_tables",
    "LearnableTable",
    "learnable_tables",
    "fit_tables_to_data",
    "learned_pwl",
    "fixed_tables",
    "TableAdamW",
    "table_optimizer",
]
