"""Draws the report's figures as SVG text with matplotlib (no pyplot, no display, no network).

Called by `report.writer` for every figure of the report document (`report.document` says what
each `kind` holds). Each figure gets its own `svg.hashsalt`, so the ids inside two inline SVGs
on one page never clash, and no date, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; we never do, but a caller might

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

WIDTH = 7.5  # inches
ROW = 0.32  # inches per bar of a horizontal bar chart
STYLE: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text: small, selectable, drawn with the page's fonts
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _numbers(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _empty(ax: Axes, data: Mapping[str, Any]) -> bool:
    values = [v for s in data.get("series", []) for v in s.get("values", s.get("counts", []))]
    if any(v not in (None, 0) for v in values):
        return False
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return True


def _bars(fig: Figure, data: Mapping[str, Any]) -> None:
    categories = list(data["categories"])
    series = list(data["series"])
    horizontal, stacked = bool(data.get("horizontal")), bool(data.get("stacked"))
    ax = fig.add_subplot()
    count = len(series)
    width = 0.8 if stacked or count == 1 else 0.8 / count
    positions = list(range(len(categories)))
    base = [0.0] * len(categories)
    for index, item in enumerate(series):
        values = _numbers(item["values"])
        errors = item.get("errors")
        offset = 0.0 if stacked or count == 1 else (index - (count - 1) / 2) * width
        where = [p + offset for p in positions]
        kwargs: dict[str, Any] = {"label": item["name"]}
        if errors is not None:
            kwargs["xerr" if horizontal else "yerr"] = _numbers(errors)
            kwargs["capsize"] = 3
        if horizontal:
            ax.barh(where, values, height=width, left=base if stacked else None, **kwargs)
        else:
            ax.bar(where, values, width=width, bottom=base if stacked else None, **kwargs)
        if stacked:
            base = [b + (0.0 if math.isnan(v) else v) for b, v in zip(base, values, strict=True)]
    if horizontal:
        ax.set_yticks(positions, categories)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    else:
        ax.set_xticks(
            positions,
            categories,
            rotation=30 if len(categories) > 6 else 0,
            ha="right" if len(categories) > 6 else "center",
        )
        ax.grid(axis="x", visible=False)
    value_axis = ax.xaxis if horizontal else ax.yaxis
    if data.get("percent"):
        value_axis.set_major_formatter(PercentFormatter(1.0))
    limits = data.get("limits")
    if limits is not None:
        (ax.set_xlim if horizontal else ax.set_ylim)(*limits)
    reference = data.get("reference")
    if reference is not None:
        line = ax.axvline if horizontal else ax.axhline
        line(reference, linestyle="--", color="grey", linewidth=1, label="mean of all")
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    if not _empty(ax, data) and (count > 1 or reference is not None):
        ax.legend(frameon=False, fontsize=8)


def _histogram(fig: Figure, data: Mapping[str, Any]) -> None:
    edges = [float(e) for e in data["edges"]]
    step = edges[-1] - edges[-2] if len(edges) > 1 else 1.0
    bounds = [*edges, edges[-1] + step]  # the open last bin is drawn one bin wide
    ax = fig.add_subplot()
    series = list(data["series"])
    for item in series:
        ax.stairs(
            item["counts"],
            bounds,
            fill=len(series) == 1,
            alpha=0.8,
            label=item["name"],
            linewidth=1.5,
        )
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    if not _empty(ax, data) and len(series) > 1:
        ax.legend(frameon=False, fontsize=8)


def _heatmap(fig: Figure, data: Mapping[str, Any]) -> None:
    import numpy as np

    rows, columns = list(data["rows"]), list(data["columns"])
    values = np.array([_numbers(row) for row in data["values"]], dtype=float).reshape(
        len(rows), len(columns)
    )
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)  # type: ignore[no-untyped-call]
    image = ax.imshow(masked, cmap="RdBu", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30 if len(columns) > 4 else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.grid(False)
    percent = bool(data.get("percent"))
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = values[i, j]
            if math.isnan(value):
                continue
            text = f"{value:.0%}" if percent else f"{value:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(value - 0.5) > 0.3 else "black",
            )
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05)
    if percent:
        colorbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _intervals(fig: Figure, data: Mapping[str, Any]) -> None:
    labels = list(data["labels"])
    values = _numbers(data["values"])
    low, high = _numbers(data["low"]), _numbers(data["high"])
    ax = fig.add_subplot()
    positions = list(range(len(labels)))
    errors = [
        [v - lo for v, lo in zip(values, low, strict=True)],
        [hi - v for v, hi in zip(values, high, strict=True)],
    ]
    ax.errorbar(values, positions, xerr=errors, fmt="o", capsize=4)
    ax.axvline(0.0, linestyle="--", color="grey", linewidth=1)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.set_xlabel(data.get("xlabel", ""))


DRAW = {"bars": _bars, "histogram": _histogram, "heatmap": _heatmap, "intervals": _intervals}


def _height(figure: Mapping[str, Any]) -> float:
    data = figure["data"]
    if figure["kind"] == "bars" and data.get("horizontal"):
        grouped = 1 if data.get("stacked") else len(data["series"])
        bars = len(data["categories"]) * math.sqrt(max(1, grouped))
        return max(2.2, 0.9 + ROW * bars)
    if figure["kind"] == "heatmap":
        return max(2.5, 1.2 + 0.45 * len(data["rows"]))
    if figure["kind"] == "intervals":
        return max(2.2, 0.9 + 0.4 * len(data["labels"]))
    return 3.2


def svg(figure: Mapping[str, Any]) -> str:
    """One figure of the report document as an `<svg>` element (no XML prologue)."""
    style: Any = {**STYLE, "svg.hashsalt": f"synthpref-{figure['id']}"}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(WIDTH, _height(figure)), layout="constrained")
        DRAW[figure["kind"]](fig, figure["data"])
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]
