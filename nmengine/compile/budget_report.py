"""The report of a budgeted compile (``program.meta["budget"]``, :mod:`.budget`): a text table of where
the table bytes went (``nmengine inspect``) and the Pareto plot of the measured search points."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["format_report", "plot_curve"]


def format_report(budget: Mapping[str, Any], *, top: int | None = None) -> str:
    """Text report of ``program.meta["budget"]``: target, measured fidelity, where the bytes went."""
    t = budget["target"]
    want = ", ".join(
        f"{k} {'>=' if k == 'cosine' else '<='} {v}"
        for k, v in t.items()
        if k in ("cosine", "accuracy_drop", "bytes") and v is not None
    )
    m = budget["measured"]
    got = ", ".join(f"{k} {v:.7g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
    tables = budget["tables"]
    total = sum(r["bytes"] for r in tables.values())
    lines = [
        f"  budget    target {want} (margin {t.get('margin')}); {'met' if budget['met'] else 'NOT met'} "
        f"on {budget['calibration_rows']} calibration rows",
        f"            measured: {got}",
        f"            {len(tables)} tables, {total} bytes; sensitivity from {budget['runs']} runs "
        f"(probe {budget['probe_segments']} segments)",
        f"    {'table':<46s} {'fn':<10s} {'seg':>4s} {'bytes':>6s} {'share':>6s} {'impact@probe':>12s} range",
    ]
    rows = sorted(tables.items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))
    for key, r in rows[: top or len(rows)]:
        imp = "-" if r.get("impact") is None else f"{r['impact']:.2e}"
        rng = r.get("range") or [None, None]
        rng_s = "-" if rng[0] is None else f"[{rng[0]:.3g}, {rng[1]:.3g}] {r.get('range_source', '')}"
        lines.append(
            f"    {key:<46s} {r['fn']:<10s} {r['segments']:>4d} {r['bytes']:>6d} "
            f"{r['bytes'] / max(total, 1):>6.1%} {imp:>12s} {rng_s}"
        )
    return "\n".join(lines)


def plot_curve(budget: Mapping[str, Any], path: str | None = None, *, ax: Any = None):
    """Pareto plot of the measured search points: table bytes vs ``1 - cosine min`` (log) and NN
    agreement / accuracy.  Needs matplotlib (extra ``plot``); returns the figure."""
    try:
        import matplotlib

        if path is not None and ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        from ..approx import PlotDependencyError

        raise PlotDependencyError("plotting needs matplotlib: pip install 'nmengine[plot]'") from e
    pts = budget["curve"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    else:
        fig = ax.figure
    xs = [p["bytes"] for p in pts]
    ax.semilogy(xs, [max(1.0 - p["cosine_min"], 1e-12) for p in pts], "o-", label="1 - cosine min")
    t = budget["target"]
    if t.get("cosine") is not None:
        ax.axhline(1.0 - t["cosine"], color="r", ls="--", lw=1, label="target")
        ax.axhline(
            t.get("margin", 1.0) * (1.0 - t["cosine"]),
            color="r",
            ls=":",
            lw=1,
            label="required on calibration (x margin)",
        )
    ax.axvline(budget["measured"]["bytes"], color="g", ls=":", lw=1, label="chosen")
    ax.set_xlabel("total PWL table bytes")
    ax.set_ylabel("1 - cosine min (calibration rows)")
    second = (
        "nn_agreement"
        if all("nn_agreement" in p for p in pts)
        else ("accuracy" if all("accuracy" in p for p in pts) else None)
    )
    if second:
        ax2 = ax.twinx()
        ax2.plot(xs, [p[second] for p in pts], "s--", color="tab:orange", label=second.replace("_", " "))
        ax2.set_ylabel(second.replace("_", " "))
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("segments='auto': table bytes vs fidelity")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
