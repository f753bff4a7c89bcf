"""Small PyTorch model classes for the ONNX import benchmark (no torchvision, no downloads).

torchvision-style ResNet-18/50 (BasicBlock / Bottleneck, BatchNorm, ReLU, max pool, global average
pool), MobileNetV2 (inverted residuals, depthwise convs, ReLU6), a ViT (patch conv, class token,
learned positions, pre-LN blocks with erf GELU), a GPT-2-style decoder (causal mask buffer,
``masked_fill`` with ``finfo.min``, tanh GELU) and all-MiniLM-L6-v2 as a BERT written out here with the
checkpoint's weights (``nmengine.hf.load_weights``), plus mean pooling and L2 normalisation.
All export with ``torch.onnx.export(..., dynamo=False)`` and dynamic batch (and sequence) axes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


# ---------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = None
        if stride != 1 or cin != c:
            self.down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.down = None
        if stride != 1 or cin != c * 4:
            self.down = nn.Sequential(nn.Conv2d(cin, c * 4, 1, stride, bias=False), nn.BatchNorm2d(c * 4))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, block, layers, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        cin, blocks = 64, []
        for i, n in enumerate(layers):
            c = 64 * 2**i
            for j in range(n):
                blocks.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18() -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3])


# ---------------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------------
def _cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    mods = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        mods.append(nn.ReLU6())
    return nn.Sequential(*mods)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, s: int, t: int) -> None:
        super().__init__()
        h = cin * t
        mods = [] if t == 1 else [_cbr(cin, h, 1, 1)]
        mods += [_cbr(h, h, 3, s, groups=h), _cbr(h, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*mods)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNetV2(nn.Module):
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, cin = [_cbr(3, 32, 3, 2)], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# ---------------------------------------------------------------------------------------------
# Transformers
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, d: int, heads: int, causal_len: int = 0) -> None:
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        if causal_len:
            self.register_buffer("bias", torch.tril(torch.ones(causal_len, causal_len, dtype=torch.bool))[None, None])
        else:
            self.bias = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.h, self.hd).transpose(1, 2)
        v = v.view(b, t, self.h, self.hd).transpose(1, 2)
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        if self.bias is not None:
            s = s.masked_fill(~self.bias[:, :, :t, :t], torch.finfo(s.dtype).min)
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, causal_len: int = 0, gelu: str = "none") -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, causal_len)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate=gelu), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(
        self, img: int = 224, patch: int = 16, d: int = 192, depth: int = 12, heads: int = 3, classes: int = 1000
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        n = (img // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])


class GPT(nn.Module):
    def __init__(self, vocab: int = 50257, n_ctx: int = 256, d: int = 384, depth: int = 6, heads: int = 6) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(n_ctx, d)
        self.blocks = nn.Sequential(*[Block(d, heads, causal_len=n_ctx, gelu="tanh") for _ in range(depth)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.ln_f(self.blocks(self.wte(input_ids) + self.wpe(pos)))
        return x @ self.wte.weight.T


class MiniLM(nn.Module):
    """BERT (HF layout and math) + mean pooling + L2 normalisation, weights from the checkpoint."""

    def __init__(self, weights: dict, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.w = nn.ParameterDict(
            {
                k.replace(".", "__"): nn.Parameter(torch.from_numpy(v.copy()), requires_grad=False)
                for k, v in weights.items()
            }
        )

    def p(self, name: str) -> torch.Tensor:
        return self.w[name.replace(".", "__")]

    def lin(self, x, name):
        return x @ self.p(name + ".weight").T + self.p(name + ".bias")

    def ln(self, x, name):
        return nn.functional.layer_norm(
            x, (self.cfg.hidden_size,), self.p(name + ".weight"), self.p(name + ".bias"), self.cfg.layer_norm_eps
        )

    def forward(self, input_ids, token_type_ids, attention_mask):
        c = self.cfg
        t = input_ids.shape[1]
        emb = nn.functional.embedding
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        e = (
            emb(input_ids, self.p("embeddings.word_embeddings.weight"))
            + emb(pos, self.p("embeddings.position_embeddings.weight"))
            + emb(token_type_ids, self.p("embeddings.token_type_embeddings.weight"))
        )
        h = self.ln(e, "embeddings.LayerNorm")
        ext = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        nh, hd = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        b = h.shape[0]
        for i in range(c.num_hidden_layers):
            pre = f"encoder.layer.{i}."

            def heads(x):
                return x.view(b, t, nh, hd).transpose(1, 2)

            q = heads(self.lin(h, pre + "attention.self.query"))
            k = heads(self.lin(h, pre + "attention.self.key"))
            v = heads(self.lin(h, pre + "attention.self.value"))
            s = q @ k.transpose(-1, -2) / math.sqrt(hd) + ext
            ctx = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, nh * hd)
            h = self.ln(self.lin(ctx, pre + "attention.output.dense") + h, pre + "attention.output.LayerNorm")
            f = nn.functional.gelu(self.lin(h, pre + "intermediate.dense"))
            h = self.ln(self.lin(f, pre + "output.dense") + h, pre + "output.LayerNorm")
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(emb, dim=1)


def export(
    model: nn.Module,
    args: tuple,
    path: str,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict,
    opset: int = 17,
) -> str:
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            path,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return path
