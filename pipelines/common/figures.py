"""Matplotlib for the report stages: a headless backend, imported when drawn.

Report figures are read at natural size in the Snakemake report's content
pane, which cuts what is taller or wider than the window at the top and left:
:data:`MAX_PX` is what a laptop window shows of it (1366 x 768 less the
report's menu, about 400 px wide while it lists a category with its labels),
and each report stage sizes its figure to stay inside.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pipelines.common.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
MAX_PX = (940, 720)  # width, height


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, out_png: Path, *, dpi: int = DPI) -> None:
    """Write ``fig`` as a PNG atomically, byte-stable, then close it.

    Args:
        fig: the figure.
        out_png: where to write it.
        dpi: pixels per inch.
    """
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(
            tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None}
        )
    pyplot().close(fig)
