"""Attention at each sequence's own length in a plan: the padded chain of a transformer layer
recognised and run as one core call (``nm_attention_packed``, csrc/nm_attention.h).

A lowered BERT layer computes attention on the padded ``[batch, tokens]`` grid::

    qkv_seq = unpack(qkv, mask)                      # packed token rows -> [B, L, 3 * H * D]
    scores  = gemm_batched(Q view, K^T view, res=mask bias)     # [B, H, L, L]
    prob    = softmax_rows(scores)                   # exp / reciprocal PWL tables
    ctx     = gemm_batched(prob, V view, out_perm)   # [B, L, H, D]
    merged  = reshape(ctx, [0, 0, -1]);  out = pack(merged, mask)   # -> packed rows

With a right-padded mask (every row's real tokens first) each sequence's rows are the same bits when
the chain runs on that sequence alone at its own length, as long as the padded length is at most the
GEMM's K block (nm_attention.h explains why).  The plan then runs the whole chain as one step on the
packed rows: attention work follows the sum of squared sequence lengths instead of batch x padded
length squared, and the unpack and pack copies disappear.  The Program (the IR) is unchanged: the
interpreter, exact mode and the cost model still see the padded chain, and a mask that is not
right-padded (checked at every run) runs the padded chain's own steps.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .program import Op, Program

__all__ = ["AttentionChain", "enabled", "find_chains", "chain_step", "run_chain"]


def enabled() -> bool:
    """Whether plans built now fuse attention chains (``NMENGINE_RAGGED_ATTENTION=0`` turns it off,
    e.g. to compare with the padded chain)."""
    return os.environ.get("NMENGINE_RAGGED_ATTENTION", "1").strip() != "0"


@dataclass(frozen=True)
class AttentionChain:
    """One recognised chain: the op indices it covers and what the fused step needs."""

    unpack: int
    scores: int
    softmax: int
    context: int
    pack: int
    qkv: str  # packed rows [ntok, 3 * H * D]
    out: str  # the pack's output: context rows [ntok, H * D]
    mask: str  # the token mask (its bool copy is the plan's)
    bias: Optional[str]  # the mask bias [B, L], or None
    heads: int
    head_dim: int
    offsets: tuple[int, int, int]  # column of Q, K and V head 0 in a qkv row
    exp_table: str
    recip_table: str

    @property
    def covered(self) -> tuple[int, ...]:
        """Op indices whose steps the fused step replaces (the last one, the pack, carries it)."""
        return (self.unpack, self.scores, self.softmax, self.context, self.pack)


def _head_view(view: Any, perm: list[int]) -> Optional[tuple[int, int, int]]:
    """(part, heads, head_dim) of a ``{'reshape': [0, 0, 3, H, D], 'select': [2, part], 'perm': perm}``
    view of packed-then-unpacked QKV rows, else None."""
    if not isinstance(view, dict) or set(view) != {"reshape", "select", "perm"}:
        return None
    shape, select = list(view["reshape"]), list(view["select"])
    if len(shape) != 5 or shape[:3] != [0, 0, 3] or len(select) != 2 or select[0] != 2 or list(view["perm"]) != perm:
        return None
    h, d, part = shape[3], shape[4], select[1]
    if not all(isinstance(v, int) for v in (h, d, part)) or h < 1 or d < 1 or part not in (0, 1, 2):
        return None
    return part, h, d


_MATCHED: "weakref.WeakKeyDictionary[Program, list[AttentionChain]]" = weakref.WeakKeyDictionary()


def find_chains(program: Program, shapes: Mapping[str, tuple[int, ...]], kc: int) -> list[AttentionChain]:
    """The attention chains of ``program`` the fused step can run, for these buffer shapes (padded
    length at most ``kc``, the GEMM's K block of the plan's kernel)."""
    chains = _MATCHED.get(program)
    if chains is None:
        chains = _MATCHED[program] = _match(program)
    out = []
    for ch in chains:
        m_shape, qkv_shape = tuple(shapes.get(ch.mask, ())), tuple(shapes.get(ch.qkv, ()))
        if len(m_shape) != 2 or m_shape[1] > kc or qkv_shape[1:] != (3 * ch.heads * ch.head_dim,):
            continue
        if ch.bias is not None and tuple(shapes.get(ch.bias, ())) != m_shape:
            continue
        out.append(ch)
    return out


def _match(program: Program) -> list[AttentionChain]:
    """The chains of the program's structure (ops, views, readers), whatever the shapes."""
    ops = program.ops
    index = {op.out: i for i, op in enumerate(ops)}
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for role, name in op.args.items():
            if not (op.kind == "slice_rows" and role == "like"):  # a shape reference reads no data
                readers.setdefault(name, []).append(i)
    outputs = set(program.outputs)

    def only_read_by(name: str, users: Sequence[int]) -> bool:
        return name not in outputs and sorted(set(readers.get(name, []))) == sorted(set(users))

    def producer(name: str, kind: str) -> Optional[tuple[int, Op]]:
        i = index.get(name)
        return (i, ops[i]) if i is not None and ops[i].kind == kind else None

    def plain(op: Op) -> bool:
        return op.epilogue.get("act", "none") == "none"

    chains = []
    for p_i, pack in enumerate(ops):
        if pack.kind != "pack" or set(pack.args) != {"x", "mask"}:
            continue
        mask = pack.args["mask"]
        found = producer(pack.args["x"], "reshape")
        if not found or list(found[1].attrs.get("shape", [])) != [0, 0, -1]:
            continue
        r_i, merged = found
        found = producer(merged.args["x"], "gemm_batched")
        if not found:
            continue
        c_i, ctx = found
        if set(ctx.args) != {"a", "b"} or set(ctx.attrs) != {"b_view", "out_perm"} or not plain(ctx):
            continue
        if list(ctx.attrs["out_perm"]) != [0, 2, 1, 3]:
            continue
        v = _head_view(ctx.attrs["b_view"], [0, 2, 1, 3])
        found = producer(ctx.args["a"], "softmax_rows")
        if v is None or not found:
            continue
        s_i, soft = found
        exp, recip = soft.attrs.get("exp", {}), soft.attrs.get("recip", {})
        if exp.get("act") != "pwl" or recip.get("act") != "pwl" or not plain(soft):
            continue
        found = producer(soft.args["x"], "gemm_batched")
        if not found:
            continue
        g_i, sc = found
        if not set(sc.args) <= {"a", "b", "res"} or not {"a", "b"} <= set(sc.args) or not plain(sc):
            continue
        if set(sc.attrs) - {"a_view", "b_view", "res_view"}:
            continue
        q = _head_view(sc.attrs.get("a_view"), [0, 2, 1, 3])
        k = _head_view(sc.attrs.get("b_view"), [0, 2, 3, 1])
        if q is None or k is None or sc.args["a"] != sc.args["b"] or sc.args["a"] != ctx.args["b"]:
            continue
        if not (q[1:] == k[1:] == v[1:]) or sorted((q[0], k[0], v[0])) != [0, 1, 2]:
            continue
        bias = sc.args.get("res")
        if bias is not None and sc.attrs.get("res_view") != {"reshape": [0, 1, 1, -1]}:
            continue
        if bias is None and "res_view" in sc.attrs:
            continue
        found = producer(sc.args["a"], "unpack")
        if not found or found[1].args.get("mask") != mask or set(found[1].args) != {"x", "mask"}:
            continue
        u_i, unpack = found
        qkv = unpack.args["x"]
        _, heads, d = q
        # every intermediate is read only inside the chain
        if not (
            only_read_by(unpack.out, [g_i, c_i])
            and only_read_by(sc.out, [s_i])
            and only_read_by(soft.out, [c_i])
            and only_read_by(ctx.out, [r_i])
            and only_read_by(merged.out, [p_i])
        ):
            continue
        chains.append(
            AttentionChain(
                u_i,
                g_i,
                s_i,
                c_i,
                p_i,
                qkv,
                pack.out,
                mask,
                bias,
                heads,
                d,
                (q[0] * heads * d, k[0] * heads * d, v[0] * heads * d),
                exp["table"],
                recip["table"],
            )
        )
    return chains


def run_chain(fused: Callable[..., bool], args: tuple, fallback: Sequence[tuple[Callable[..., Any], tuple]]) -> None:
    """The fused step; when the mask is not right-padded, the padded chain's own steps instead.  (The
    C executor records the same as one ``CPlan.add_attention_packed`` call followed by the fallback
    calls, which nm_plan_run skips when the fused call succeeds.)"""
    if not fused(*args):
        for fn, fargs in fallback:
            fn(*fargs)


def chain_step(
    chain: AttentionChain,
    core: Any,
    bufs: Mapping[str, np.ndarray],
    mask_bool: np.ndarray,
    table: Callable[[str], Any],
    fallback: Sequence[tuple[Callable[..., Any], tuple]],
    threads: int,
    kernel: int,
) -> Optional[tuple[Callable[..., Any], tuple]]:
    """The plan step running ``chain`` (None when the bound buffers do not fit the core call)."""
    qkv, out = bufs[chain.qkv], bufs[chain.out]
    bias = bufs[chain.bias] if chain.bias is not None else None
    arrs = [qkv, out] + ([bias] if bias is not None else [])
    if any(a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.aligned for a in arrs):
        return None
    if qkv.ndim != 2 or out.ndim != 2 or mask_bool.ndim != 2 or not mask_bool.flags.c_contiguous:
        return None
    args = (
        core.attention_packed,
        (
            qkv,
            *chain.offsets,
            chain.heads,
            chain.head_dim,
            mask_bool,
            bias,
            table(chain.exp_table),
            table(chain.recip_table),
            out,
            threads,
            kernel,
        ),
        tuple(fallback),
    )
    return run_chain, args
