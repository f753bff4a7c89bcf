"""Export of nmengine.train models to ModelSpec, checked against an independent float64 spec interpreter."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pytest

from nmengine.spec import InputSpec, ModelSpec
from nmengine.train import nn
from nmengine.train.data import load_digits_split
from nmengine.train.models import small_cnn, small_vit
from nmengine.train.tensor import Tensor, no_grad
from nmengine.train.trainer import predict, train

from . import reference

# The independent float64 interpreter of the ModelSpec layer table is tests/reference.py (shared with
# test_compile): one reference forward for every frontend.


def run_spec(spec: ModelSpec, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    out = reference.forward(spec, dict(feeds))
    return [out[o] for o in spec.outputs]


# ------------------------------------------------------------------------------------------------


def _weights_match_state(model: nn.Module, spec: ModelSpec) -> None:
    state = model.state_dict()
    used = set()
    for L in spec.layers:
        for wname, w in L.weights.items():
            key = f"{L.name}.{wname}"
            assert key in state, f"spec weight {key} has no model parameter/buffer of that name"
            np.testing.assert_array_equal(w, state[key].astype(w.dtype))
            assert w.dtype == np.float32
            used.add(key)
    assert used == set(state), f"model state not exported: {sorted(set(state) - used)}"


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            C = m.weight.shape[0]
            m.running_mean = rng.normal(0, 0.3, C).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, C).astype(np.float32)
            m.weight.data = rng.uniform(0.5, 1.5, C).astype(np.float32)
            m.bias.data = rng.normal(0, 0.2, C).astype(np.float32)


CNN_NAMES = [
    "conv1",
    "bn1",
    "act1",
    "pool",
    "block.conv1",
    "block.bn1",
    "block.act1",
    "block.conv2",
    "block.bn2",
    "block.add",
    "block.act2",
    "gap",
    "head",
]


def test_cnn_spec_structure_and_weights() -> None:
    model = small_cnn(seed=0)
    _randomise_bn(model)
    spec = model.to_spec()
    assert isinstance(spec, ModelSpec)
    spec.validate()
    assert [L.name for L in spec.layers] == CNN_NAMES
    assert [L.op for L in spec.layers] == [
        "conv2d",
        "batchnorm2d",
        "relu",
        "maxpool2d",
        "conv2d",
        "batchnorm2d",
        "relu",
        "conv2d",
        "batchnorm2d",
        "add",
        "relu",
        "global_avgpool",
        "linear",
    ]
    assert spec.inputs["x"].shape == (None, 1, 8, 8) and spec.outputs == ["head"]
    assert spec.layer("block.add").inputs == ["block.bn2", "pool"]
    assert spec.n_parameters() == sum(v.size for v in model.state_dict().values())
    _weights_match_state(model, spec)
    assert [L.name for L in model.to_spec().layers] == CNN_NAMES  # stable


@pytest.mark.parametrize("kwargs", [{}, {"pooling": "flatten", "act": "silu", "channels": 8}])
def test_cnn_spec_forward_matches_model(kwargs: dict) -> None:
    model = small_cnn(seed=3, **kwargs)
    _randomise_bn(model, 3)
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    (y_spec,) = run_spec(model.to_spec(), {"x": x})
    np.testing.assert_allclose(predict(model, x), y_spec, rtol=1e-4, atol=1e-4)
    model.to(np.float64)
    np.testing.assert_allclose(predict(model, x.astype(np.float64)), y_spec, rtol=1e-10, atol=1e-10)


def test_cnn_spec_after_training_matches_model() -> None:
    data = load_digits_split()
    model = small_cnn(channels=8, seed=0)
    train(model, (data.x_train[:256], data.y_train[:256]), epochs=1, lr=3e-3, batch_size=64, progress=False)
    (y_spec,) = run_spec(model.to_spec(), {"x": data.x_test[:50]})
    np.testing.assert_allclose(predict(model, data.x_test[:50]), y_spec, rtol=1e-4, atol=1e-4)


def _vit_names(depth: int, norm_first: bool) -> list[str]:
    names = ["patchify", "embed", "pos"]
    for i in range(depth):
        b = f"blocks.{i}."
        if norm_first:
            names += [b + n for n in ("ln1", "attn", "add1", "ln2", "mlp.fc1", "mlp.act", "mlp.fc2", "add2")]
        else:
            names += [b + n for n in ("attn", "add1", "ln1", "mlp.fc1", "mlp.act", "mlp.fc2", "add2", "ln2")]
    return names + ["norm", "pool", "head"]


@pytest.mark.parametrize(
    "kwargs", [{}, {"norm_first": False, "patch": 2, "dropout": 0.1, "act": "gelu_tanh", "depth": 1}]
)
def test_vit_spec(kwargs: dict) -> None:
    model = small_vit(seed=1, **kwargs)
    spec = model.to_spec()
    spec.validate()
    depth = kwargs.get("depth", 2)
    assert [L.name for L in spec.layers] == _vit_names(depth, kwargs.get("norm_first", True))
    assert all(L.op != "dropout" for L in spec.layers)
    attn = spec.layer("blocks.0.attn")
    assert attn.op == "mhsa" and attn.params == {"heads": 4} and attn.weights["q_weight"].shape == (64, 64)
    assert spec.layer("patchify").params == {"patch": kwargs.get("patch", 4)}
    assert spec.layer("blocks.0.mlp.act").op == kwargs.get("act", "gelu")
    _weights_match_state(model, spec)
    # perturb the zero-initialised biases and norms so that every weight matters in the comparison
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():
        p.data = (p.data + rng.normal(0, 0.05, p.shape)).astype(np.float32)
    x = np.random.default_rng(1).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    (y_spec,) = run_spec(model.to_spec(), {"x": x})
    np.testing.assert_allclose(predict(model, x), y_spec, rtol=1e-4, atol=1e-4)


class _TextModel(nn.Module):
    """Embedding (+token types) -> masked encoder layer -> masked mean pool -> tanh -> l2 norm -> linear -> softmax."""

    def __init__(self) -> None:
        super().__init__()
        r = np.random.default_rng(0)
        self.emb = nn.Embedding(11, 8, max_positions=6, token_types=2, std=0.5, rng=r)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, act="silu", rng=r)
        self.pool = nn.MeanPool()
        self.act = nn.Tanh()
        self.l2 = nn.L2Normalize()
        self.head = nn.Linear(8, 3, rng=r)
        self.prob = nn.Softmax()

    def forward(self, ids: np.ndarray, mask: np.ndarray, tt: np.ndarray) -> Tensor:
        h = self.enc(self.emb(ids, tt), mask)
        return self.prob(self.head(self.l2(self.act(self.pool(h, mask)))))

    def _emit(self, b: nn.SpecBuilder, path: str, ids: str, mask: str, tt: str) -> str:
        h = self.enc._emit(b, "enc", self.emb._emit(b, "emb", ids, tt), mask)
        h = self.act._emit(b, "act", self.pool._emit(b, "pool", h, mask))
        h = self.l2._emit(b, "l2", h)
        return self.prob._emit(b, "prob", self.head._emit(b, "head", h))


def test_text_model_spec_with_masks() -> None:
    model = _TextModel().eval()
    inputs = {
        "ids": InputSpec((None, None), "int64"),
        "mask": InputSpec((None, None), "int64"),
        "tt": InputSpec((None, None), "int64"),
    }
    spec = model.to_spec(inputs=inputs)
    assert [L.op for L in spec.layers] == [
        "embedding",
        "layernorm",
        "mhsa",
        "add",
        "layernorm",
        "linear",
        "silu",
        "linear",
        "add",
        "mean_pool",
        "tanh",
        "l2_normalize",
        "linear",
        "softmax",
    ]
    assert spec.layer("enc.attn").inputs == ["enc.ln1", "mask"]
    _weights_match_state(model, spec)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, (3, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    tt = rng.integers(0, 2, (3, 5))
    (y_spec,) = run_spec(spec, {"ids": ids, "mask": mask, "tt": tt})
    with no_grad():
        y = model(ids, mask, tt).data
    np.testing.assert_allclose(y, y_spec, rtol=1e-5, atol=1e-6)


class _MiscConv(nn.Module):
    input_shape = (2, 9, 7)

    def __init__(self) -> None:
        super().__init__()
        r = np.random.default_rng(4)
        self.body = nn.Sequential(
            nn.Conv2d(2, 3, (3, 2), stride=2, padding=1, rng=r),
            nn.Sigmoid(),
            nn.AvgPool2d(2, 1),
            nn.GELUTanh(),
            nn.MaxPool2d(3, 2, 1),
            nn.ResidualBlock(3, 5, stride=1, act="gelu", rng=r),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(5 * 2 * 2, 4, rng=r),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def _emit(self, b: nn.SpecBuilder, path: str, x: str) -> str:
        return self.body._emit(b, "body", x)


def test_misc_conv_spec() -> None:
    model = _MiscConv()
    _randomise_bn(model, 5)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data = np.linspace(-0.5, 0.5, m.bias.shape[0]).astype(np.float32)
    spec = model.to_spec()
    names = [L.name for L in spec.layers]
    assert names[:5] == ["body.0", "body.1", "body.2", "body.3", "body.4"]
    assert "body.5.shortcut_conv" in names and "body.5.add" in names and "body.7" not in names  # dropout omitted
    assert spec.layer("body.0").params == {"stride": 2, "padding": 1}
    _weights_match_state(model, spec)
    x = np.random.default_rng(2).normal(0, 1, (3, 2, 9, 7)).astype(np.float32)
    (y_spec,) = run_spec(spec, {"x": x})
    np.testing.assert_allclose(predict(model, x), y_spec, rtol=1e-4, atol=1e-5)


def test_spec_dtype_and_errors() -> None:
    model = small_cnn(channels=4)
    spec = model.to_spec(dtype=np.float64, name="digits-cnn")
    assert spec.name == "digits-cnn" and spec.meta["source"] == "nmengine.train"
    assert all(w.dtype == np.float64 for L in spec.layers for w in L.weights.values())

    class NoShape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

    with pytest.raises(ValueError, match="input_shape"):
        NoShape().to_spec()
    with pytest.raises(NotImplementedError, match="NoShape"):
        NoShape().to_spec((3,))
