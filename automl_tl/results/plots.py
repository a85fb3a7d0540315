"""The report's figures, drawn with matplotlib's Agg renderer from plain tables (no Optuna, no files).

Each function takes the leaderboard (:func:`automl_tl.results.report.leaderboard`) or a part of the study's
stored results and returns a :class:`matplotlib.figure.Figure`; :func:`png_bytes` renders one. Figures
are made without pyplot, so nothing global (backend, open-figure list) is touched and nothing leaks
between reports. Every figure has a title and labelled axes; colours follow the backbone (or strategy)
the same way in every figure of a report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from automl_tl.strategies import FINE_TUNING_STRATEGIES, LINEAR_PROBE, trained_depth

#: Render settings for every figure: user strings (class names, backbones) may hold '$', which must not
#: be read as mathtext; a fixed DPI keeps the PNG files small and identical when rebuilt.
STYLE = {
    "text.parse_math": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
PALETTE = matplotlib.colormaps["tab10"].colors
WIDE = (9.0, 4.2)


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG bytes (Agg)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=size, layout="constrained")


def colours(names: Sequence[str]) -> dict[str, Any]:
    """A colour for each name, the same for the same names in every figure (sorted, cycled through tab10)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def _finished(board: pd.DataFrame) -> pd.DataFrame:
    """Trials with a validation accuracy (complete, or pruned after an epoch), in trial order."""
    return board[board["state"].isin(("COMPLETE", "PRUNED"))].dropna(subset=["val_accuracy"]).sort_values("trial")


def leaderboard_chart(board: pd.DataFrame) -> Figure:
    """One bar per trial (its validation accuracy), coloured by backbone; pruned trials hatched, failed marked."""
    with matplotlib.rc_context(STYLE):
        figure = _figure()
        axes = figure.add_subplot()
        rows = board.sort_values("trial")
        palette = colours(rows["backbone"].dropna().astype(str))
        for row in rows.itertuples():
            if pd.isna(row.val_accuracy):  # failed (or stopped before its first epoch)
                axes.plot(row.trial, 0.02, marker="x", color="0.3", linestyle="none")
                continue
            axes.bar(
                row.trial,
                row.val_accuracy,
                color=palette.get(str(row.backbone), "0.5"),
                edgecolor="black",
                linewidth=0.4,
                hatch="//" if row.state == "PRUNED" else None,
            )
        handles = [Patch(facecolor=colour, label=name) for name, colour in palette.items()]
        if (rows["state"] == "PRUNED").any():
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="pruned"))
        if rows["val_accuracy"].isna().any():
            handles.append(Line2D([], [], marker="x", color="0.3", linestyle="none", label="failed"))
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        axes.set(
            title="Validation accuracy of every trial", xlabel="trial", ylabel="validation accuracy", ylim=(0, 1.02)
        )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def history_chart(board: pd.DataFrame) -> Figure:
    """Each trial's validation accuracy in trial order, and the best complete trial so far."""
    with matplotlib.rc_context(STYLE):
        figure = _figure()
        axes = figure.add_subplot()
        finished = _finished(board)
        complete = finished[finished["state"] == "COMPLETE"]
        pruned = finished[finished["state"] == "PRUNED"]
        axes.scatter(complete["trial"], complete["val_accuracy"], color=PALETTE[0], zorder=3, label="complete trial")
        if not pruned.empty:
            axes.scatter(
                pruned["trial"],
                pruned["val_accuracy"],
                facecolors="none",
                edgecolors=PALETTE[0],
                zorder=3,
                label="pruned trial (accuracy when stopped)",
            )
        if not complete.empty:
            trials = board["trial"].sort_values()
            # a step line that stays flat across pruned and failed trials (cummax leaves their NaN in place)
            best = complete.set_index("trial")["val_accuracy"].reindex(trials).cummax().ffill()
            axes.step(
                best.index,
                best.to_numpy(dtype=float),
                where="post",
                color=PALETTE[3],
                label="best so far (the study's objective)",
            )
        axes.set(title="Optimisation history", xlabel="trial", ylabel="validation accuracy")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(loc="lower right", fontsize=9)
    return figure


def importance_chart(importances: dict[str, float]) -> Figure:
    """Horizontal bars: each searched parameter's share of the variance of validation accuracy."""
    with matplotlib.rc_context(STYLE):
        figure = _figure((8.0, 0.45 * len(importances) + 1.4))
        axes = figure.add_subplot()
        names = sorted(importances, key=importances.get)
        axes.barh(names, [importances[n] for n in names], color=PALETTE[0])
        for y, name in enumerate(names):
            axes.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=9)
        axes.set(
            title="Parameter importances (fANOVA over the complete trials)",
            xlabel="importance (share of the variance of validation accuracy)",
            ylabel="parameter",
            xlim=(0, max(1e-9, max(importances.values())) * 1.15),
        )
    return figure


def cost_chart(board: pd.DataFrame) -> Figure:
    """Per backbone: its best validation accuracy so far against the CPU-seconds spent on it so far."""
    with matplotlib.rc_context(STYLE):
        figure = _figure()
        axes = figure.add_subplot()
        rows = board.dropna(subset=["backbone"]).sort_values("trial")
        palette = colours(rows["backbone"].astype(str))
        for name, trials in rows.groupby("backbone", sort=True):
            spent = trials["cpu_seconds"].astype(float).fillna(0.0).cumsum()  # failed trials cost too
            reached = trials["val_accuracy"].where(trials["state"].isin(("COMPLETE", "PRUNED"))).astype(float)
            best = reached.cummax().ffill()  # a failed trial keeps the best reached before it
            shown = best.notna()
            if not shown.any():
                continue
            axes.step(spent[shown], best[shown], where="post", color=palette[str(name)], marker="o", label=str(name))
        axes.set(
            title="Best validation accuracy per backbone against the CPU-seconds spent on it",
            xlabel="CPU-seconds spent on the backbone (cumulative, in trial order)",
            ylabel="best validation accuracy so far",
        )
        if axes.lines:
            axes.legend(loc="lower right", fontsize=9)
    return figure


def trained_groups_chart(
    board: pd.DataFrame, strategies: Sequence[str] = (LINEAR_PROBE, *FINE_TUNING_STRATEGIES)
) -> Figure:
    """Validation accuracy against the layer groups trained, one colour per strategy (pruned trials hollow)."""
    with matplotlib.rc_context(STYLE):
        figure = _figure()
        axes = figure.add_subplot()
        finished = _finished(board).dropna(subset=["strategy"]).copy()
        finished["depth"] = [trained_depth(s, d) for s, d in zip(finished["strategy"], finished["trained_groups"])]
        finite = finished.loc[np.isfinite(finished["depth"]), "depth"]
        deepest = int(
            max(
                finite.max() if not finite.empty else 0,
                board["trained_groups"].astype(float).max(skipna=True) if board["trained_groups"].notna().any() else 0,
            )
        )
        full_at = deepest + 1  # where "all groups" is drawn
        finished["x"] = finished["depth"].replace(math.inf, full_at)
        seen = [s for s in strategies if s in set(finished["strategy"])]
        seen += sorted(set(finished["strategy"]) - set(seen))
        offsets = np.linspace(-0.15, 0.15, len(seen)) if len(seen) > 1 else [0.0]
        for i, (offset, strategy) in enumerate(zip(offsets, seen)):
            rows = finished[finished["strategy"] == strategy]
            colour = PALETTE[i % len(PALETTE)]
            for state, face in (("COMPLETE", colour), ("PRUNED", "none")):
                part = rows[rows["state"] == state]
                if not part.empty:
                    axes.scatter(
                        part["x"] + offset,
                        part["val_accuracy"],
                        facecolors=face,
                        edgecolors=colour,
                        s=40,
                        zorder=3,
                        label=strategy if state == "COMPLETE" else f"{strategy} (pruned)",
                    )
        ticks = list(range(full_at + 1))
        labels = [str(t) for t in ticks[:-1]] + ["all"]
        axes.set_xticks(ticks, labels)
        axes.set_xlim(-0.5, full_at + 0.5)
        axes.set(
            title="Layer groups trained against validation accuracy",
            xlabel="layer groups of the body trained, from the head (trained_groups; linear probe = 0, full = all)",
            ylabel="validation accuracy",
        )
        if seen:
            axes.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return figure


def confusion_chart(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """The test set's confusion matrix: true class by row, predicted class by column, counts written in."""
    counts = np.asarray(matrix, dtype=int)
    n = len(classes)
    side = min(3.5 + 0.35 * n, 14.0)
    with matplotlib.rc_context(STYLE):
        figure = _figure((side + 1.2, side))
        axes = figure.add_subplot()
        image = axes.imshow(counts, cmap="Blues", vmin=0)
        bar = figure.colorbar(image, ax=axes, shrink=0.8, label="test examples")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        labels = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
        axes.set_xticks(
            range(n),
            labels,
            rotation=45 if max(map(len, labels), default=0) > 3 else 0,
            ha="right" if max(map(len, labels), default=0) > 3 else "center",
        )
        axes.set_yticks(range(n), labels)
        axes.grid(False)
        if n <= 30:
            threshold = counts.max() / 2 if counts.size else 0
            for (row, column), value in np.ndenumerate(counts):
                axes.text(
                    column,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=8 if n > 15 else 10,
                    color="white" if value > threshold else "black",
                )
        axes.set(
            title=f"Confusion matrix of the best model (test set, {int(counts.sum())} examples)",
            xlabel="predicted class",
            ylabel="true class",
        )
    return figure


def per_class_chart(per_class: Sequence[dict[str, Any]]) -> Figure:
    """Precision and recall of each class on the test set, side by side."""
    names = [row["class"] for row in per_class]
    with matplotlib.rc_context(STYLE):
        figure = _figure((max(6.0, 0.5 * len(names) + 2.5), 4.0))
        axes = figure.add_subplot()
        x = np.arange(len(names))
        axes.bar(x - 0.2, [row["precision"] for row in per_class], width=0.4, color=PALETTE[0], label="precision")
        axes.bar(x + 0.2, [row["recall"] for row in per_class], width=0.4, color=PALETTE[1], label="recall")
        long_names = max(map(len, names), default=0) > 3
        axes.set_xticks(x, names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
        axes.set(
            title="Precision and recall per class (best model, test set)",
            xlabel="class",
            ylabel="score",
            ylim=(0, 1.05),
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return figure


def reliability_chart(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], temperature: float) -> Figure:
    """Reliability diagram of the test set: accuracy against mean confidence per confidence bin, before and
    after temperature scaling (the diagonal is calibrated); marker area follows the bin's examples."""
    with matplotlib.rc_context(STYLE):
        figure = _figure((5.5, 4.6))
        axes = figure.add_subplot()
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
        for rows, colour, name in (
            (before, PALETTE[1], "as trained"),
            (after, PALETTE[0], f"temperature {temperature:.2f}"),
        ):
            if not rows:
                continue
            confidence = [row["confidence"] for row in rows]
            accuracy = [row["accuracy"] for row in rows]
            sizes = [12 + 4 * math.sqrt(row["examples"]) for row in rows]
            axes.plot(confidence, accuracy, color=colour, linewidth=1)
            axes.scatter(confidence, accuracy, s=sizes, color=colour, label=name, zorder=3)
        axes.set(
            title="Reliability of the kept model (test set)",
            xlabel="confidence (top class probability)",
            ylabel="accuracy",
            xlim=(0, 1.02),
            ylim=(0, 1.02),
        )
        axes.legend(loc="upper left", fontsize=9)
    return figure


def transferability_chart(table: pd.DataFrame, kendall_tau: dict[str, float | None], scores: Sequence[str]) -> Figure:
    """One panel per transferability score: each backbone's score against its best fine-tuned validation accuracy."""
    tried = table.dropna(subset=["best_val_accuracy"])
    palette = colours(table["backbone"].astype(str))
    with matplotlib.rc_context(STYLE):
        figure = _figure((4.0 * len(scores), 4.0))
        panels = figure.subplots(1, len(scores), squeeze=False)[0]
        for axes, score in zip(panels, scores):
            for row in tried.itertuples():
                value = getattr(row, score)
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                axes.scatter(value, row.best_val_accuracy, color=palette[str(row.backbone)], s=50, zorder=3)
                axes.annotate(
                    str(row.backbone),
                    (value, row.best_val_accuracy),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
            axes.margins(0.25)  # room for the names written beside the points
            tau = kendall_tau.get(score)
            axes.set(
                title=f"{score} (Kendall tau {'n/a' if tau is None else f'{tau:+.2f}'})",
                xlabel=score,
                ylabel="best validation accuracy",
            )
        figure.suptitle("Transferability score (before any fine-tuning) against the best validation accuracy reached")
    return figure
