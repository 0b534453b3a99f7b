"""Figures: an architecture drawn like the paper's appendix, the board over the search, and the
ranking check's supernet scores against standalone accuracies.

matplotlib is optional (`pip install cream_tf[plots]`). Without it every function here prints
one clear message and returns None instead of failing, so a search never dies for a figure.
Files are written whole or not at all (`cream_tf.atomic`).
"""
from __future__ import annotations

import sys
from typing import Optional

from cream_tf import arch as arch_lib
from cream_tf import atomic
from cream_tf.space import Space

__all__ = ["draw_architecture", "plot_board", "board_points", "plot_rank", "have_matplotlib"]

MISSING = ("cream_tf.plots: matplotlib is not installed, so {what} was not drawn; "
           "install it with `pip install 'cream_tf[plots]'` (or `pip install matplotlib`).")

# Box colours by op (kernel for MBConv; one colour for ResBlock and plain conv each).
_KERNEL_COLOURS = {3: "#8fc1e3", 5: "#f6b26b", 7: "#e06666"}
_FIXED = "#d9d9d9"
_RES = "#93c47d"
_CONV = "#b4a7d6"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path_png: str) -> str:
    with atomic.file(path_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path_png


def _missing(what: str) -> None:
    print(MISSING.format(what=what), file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------------
# Architecture
# ------------------------------------------------------------------------------------------

def _box(ax, x, label, colour, height, width=0.8, fontsize=8):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - width / 2, -height / 2), width, height,
                                boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=colour,
                                edgecolor="#333333", linewidth=0.8))
    ax.text(x, 0, label, rotation=90, ha="center", va="center", fontsize=fontsize)


def _op_style(op):
    if op.kind == "ir":
        return _KERNEL_COLOURS.get(op.kernel, "#cccccc"), 1.6 + 0.25 * op.expansion
    if op.kind == "res":
        return _RES, 2.6
    return _CONV, 2.0


def draw_architecture(architecture, space: Space, path_png: str,
                      title: Optional[str] = None) -> Optional[str]:
    """Draws an architecture as the paper's appendix does: one box per block, left to right.

    Boxes read 'MB6 5x5' (MBConv, expansion 6, kernel 5), 'Res 3x3', 'Conv 3x3'; the box colour is
    the kernel size and its height the expansion. Brackets under each stage give its output
    width, stride and feature-map size; the stem, DS block, 1x1 conv and head are grey.

    Args:
      architecture: an `Arch`, a path or any architecture string of `space`.
      space: gives channels, strides and resolution.
      path_png: where the PNG goes (written atomically).
      title: figure title; default names the space and resolution.

    Returns:
      path_png, or None when matplotlib is missing.
    """
    if isinstance(architecture, (arch_lib.Arch, str)):
        arch = arch_lib.parse(architecture, space)
    else:
        arch = arch_lib.path_to_arch(architecture, space)
    if not have_matplotlib():
        return _missing(f"the architecture figure {path_png!r}")

    n_blocks = sum(len(s) for s in arch.stages)
    width = max(8.0, 0.55 * (n_blocks + 8) + 1.5)
    fig = _figure(width, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = 0.0
    size = space.resolution
    _box(ax, x, f"Input {size}x{size}x3", "#ffffff", 2.2)
    x += 1
    size = space.stem_out_size
    _box(ax, x, f"Conv 3x3, {space.stem_channels}, s2", _FIXED, 2.2)
    x += 1
    _box(ax, x, f"DS 3x3, {space.ds_channels}, s{space.ds_stride}", _FIXED, 2.2)
    size = space.ds_out_size
    x += 1
    for s, (ops, channels, stride) in enumerate(
            zip(arch.stages, space.stage_channels, space.stage_strides)):
        start = x
        for op in ops:
            colour, height = _op_style(op)
            _box(ax, x, op.paper, colour, height)
            x += 1
        size = -(-size // stride)
        ax.plot([start - 0.4, x - 0.6], [-1.95, -1.95], color="#555555", linewidth=1)
        ax.text((start + x - 1) / 2, -2.15,
                f"stage {s + 1}\n{channels} ch, s{stride}\n{size}x{size}",
                ha="center", va="top", fontsize=7)
        x += 0.3
    _box(ax, x, f"Conv 1x1, {space.final_channels}", _FIXED, 2.2)
    x += 1
    _box(ax, x, f"Pool, 1x1 {space.head_channels}", _FIXED, 2.2)
    x += 1
    _box(ax, x, f"FC {space.num_classes}", _FIXED, 2.2)
    from matplotlib.patches import Patch

    used = {op for stage in arch.stages for op in stage}
    handles = [Patch(facecolor=c, edgecolor="#333333", label=f"MBConv {k}x{k}")
               for k, c in _KERNEL_COLOURS.items() if any(o.kind == "ir" and o.kernel == k
                                                           for o in used)]
    if any(o.kind == "res" for o in used):
        handles.append(Patch(facecolor=_RES, edgecolor="#333333", label="ResBlock"))
    if any(o.kind == "conv" for o in used):
        handles.append(Patch(facecolor=_CONV, edgecolor="#333333", label="Conv"))
    if any(o.kind == "ir" for o in used):
        handles.append(Patch(facecolor="none", edgecolor="none", label="(taller: expansion 6)"))
    ax.legend(handles=handles, loc="upper center", fontsize=7, frameon=False,
              ncol=len(handles), bbox_to_anchor=(0.5, 0.0))
    ax.set_xlim(-0.7, x + 0.7)
    ax.set_ylim(-3.3, 1.9)
    ax.axis("off")
    ax.set_title(title or f"{n_blocks} blocks of space {space.name} ({space.layout} layout), "
                 f"input {space.resolution}x{space.resolution}", fontsize=9)
    return _save(fig, path_png)


# ------------------------------------------------------------------------------------------
# Board
# ------------------------------------------------------------------------------------------

def _get(entry, names):
    for name in names:
        if isinstance(entry, dict) and name in entry:
            return entry[name]
        if hasattr(entry, name):
            return getattr(entry, name)
    raise ValueError(f"a board entry needs one of the fields {', '.join(names)}; got {entry!r}")


def board_points(history) -> list:
    """Normalises board history to [(step, [(macs_millions, accuracy), ...]), ...].

    `history` is a list of snapshots by step; each snapshot is a dict with 'step' and 'entries'
    (or 'board'), or a (step, entries) pair. An entry is a dict or object with an accuracy
    ('accuracy', 'score' or 'top1', percent or fraction) and its MACs ('macs_m' in millions, or
    'macs' / 'flops' as a raw count; raw counts above 1e5 are converted to millions).
    """
    points = []
    for i, snapshot in enumerate(history):
        if isinstance(snapshot, dict):
            step = snapshot.get("step", i)
            entries = snapshot.get("entries", snapshot.get("board"))
        else:
            step, entries = snapshot
        if entries is None:
            raise ValueError(f"board snapshot {i} has no 'entries'; got {snapshot!r}")
        row = []
        for e in entries:
            acc = float(_get(e, ("accuracy", "score", "top1")))
            try:
                macs = float(_get(e, ("macs_m",)))
            except ValueError:
                macs = float(_get(e, ("macs", "flops")))
                macs = macs / 1e6 if macs > 1e5 else macs
            row.append((macs, acc))
        points.append((int(step), row))
    return points


def plot_board(history, path_png: str, title: str = "Prioritized board during the search",
               flops_range: Optional[tuple] = None) -> Optional[str]:
    """Accuracy against MACs of the board's paths over the search.

    Every snapshot's entries are dots coloured by step (early light, late dark); the final board
    is drawn with black-edged markers. `flops_range` (min, max in millions of MACs) shades the
    allowed range. Returns path_png, or None when matplotlib is missing or history is empty.
    """
    points = board_points(history)
    if not have_matplotlib():
        return _missing(f"the board figure {path_png!r}")
    if not points or not any(row for _, row in points):
        print(f"cream_tf.plots: the board history is empty; {path_png!r} was not drawn",
              file=sys.stderr)
        return None
    from matplotlib import colormaps

    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    steps = [s for s, _ in points]
    lo, hi = min(steps), max(steps)
    cmap = colormaps["viridis"]
    if flops_range:
        ax.axvspan(flops_range[0], flops_range[1], color="#eeeeee", zorder=0,
                   label="FLOPs range")
    for step, row in points[:-1]:
        if row:
            t = 0.0 if hi == lo else (step - lo) / (hi - lo)
            ax.scatter([m for m, _ in row], [a for _, a in row], s=12, color=cmap(t),
                       alpha=0.55, linewidths=0, zorder=1)
    final_step, final = points[-1]
    ax.scatter([m for m, _ in final], [a for _, a in final], s=46, color=cmap(1.0),
               edgecolors="black", linewidths=0.9, zorder=3, label=f"board at step {final_step}")
    sm = _scalar_mappable(cmap, lo, hi)
    fig.colorbar(sm, ax=ax, label="step")
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("accuracy of the path on its batch")
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path_png)


# ------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------

def plot_rank(report: dict, path_png: str) -> Optional[str]:
    """Standalone accuracy (mean over seeds, bars: their std) against the supernet score of
    every path of a ranking (`ranking.rank`'s rank.json), board paths marked; the title gives
    tau-b, rho and the top-k overlap when the ranking is complete. Returns path_png, or None
    when matplotlib is missing or no path has both numbers yet."""
    rows = [r for r in report["paths"] if r["supernet_score"] is not None and
            r["mean"] is not None]
    if not have_matplotlib():
        return _missing(f"the ranking figure {path_png!r}")
    if not rows:
        print(f"cream_tf.plots: no path is measured yet; {path_png!r} was not drawn",
              file=sys.stderr)
        return None
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for on_board, marker, label in ((False, "o", "sampled path"), (True, "*", "board path")):
        group = [r for r in rows if bool(r.get("on_board")) == on_board]
        if group:
            ax.errorbar([r["supernet_score"] for r in group], [r["mean"] for r in group],
                        yerr=[r["std"] or 0.0 for r in group], fmt=marker, capsize=3,
                        markersize=9 if on_board else 5, label=label)
    stats = report.get("statistics")
    title = "Supernet score against standalone accuracy"
    if stats:
        show = lambda v: "n/a" if v is None else f"{v:.2f}"
        tau, rho, top = stats["kendall_tau"], stats["spearman_rho"], stats["top_k"]
        title += (f"\nKendall tau {show(tau['value'])} [{show(tau['low'])}, {show(tau['high'])}], "
                  f"Spearman rho {show(rho['value'])} [{show(rho['low'])}, {show(rho['high'])}], "
                  f"top-{top['k']} overlap {top['overlap']}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("supernet score (% on val, inherited weights)")
    seeds = len(report.get("seeds", ()))
    ax.set_ylabel(f"standalone accuracy (% on {report.get('held_out', 'test')}, "
                  f"mean of {seeds} seed{'s' if seeds != 1 else ''})")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path_png)


def _scalar_mappable(cmap, lo, hi):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1), cmap=cmap)
    sm.set_array([])
    return sm
