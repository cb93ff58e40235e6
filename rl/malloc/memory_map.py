"""The memory map of a placement: what a person looks at to see where a solver put the program's buffers.

Time (schedule position) runs along x, the fast-memory address along y (from 0 to the capacity, a dashed
line); each buffer in fast memory is a rectangle ``[start, end + 1) x [offset, offset + size)`` coloured by
its benefit density, the benefit per byte and schedule step it occupies (``benefit / (size x (end - start +
1))``, log scale: what XLA's memory-space assignment trades off, Mankowitz et al. / the mallocMuZero paper,
Sec. 2). :func:`save_comparison` draws several placements of one instance side by side on one colour scale.
"""
from __future__ import annotations

import pathlib

import numpy as np

from rl.malloc import validate
from rl.malloc.instance import Instance


def benefit_density(inst: Instance) -> np.ndarray:
    """float64 [n]: benefit per byte per schedule step of each buffer's rectangle."""
    return inst.benefits / (inst.sizes * (inst.ends - inst.starts + 1)).astype(np.float64)


def rectangles(inst: Instance, offsets: np.ndarray) -> np.ndarray:
    """float64 [k, 5]: (x, y, width, height, density) of every buffer in fast memory (offset >= 0)."""
    fast = np.flatnonzero(np.asarray(offsets) >= 0)
    return np.stack([inst.starts[fast], np.asarray(offsets)[fast], inst.ends[fast] - inst.starts[fast] + 1,
                     inst.sizes[fast], benefit_density(inst)[fast]], axis=1).astype(np.float64).reshape(-1, 5)


def _byte_scale(capacity: int) -> tuple[float, str]:
    for factor, unit in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if capacity >= 4 * factor:
            return float(factor), unit
    return 1.0, "bytes"


def save_comparison(inst: Instance, placements: list[tuple[str, np.ndarray]], path: str | pathlib.Path) -> None:
    """Writes a PNG with one memory map per (label, offsets) placement, side by side, sharing the colour scale
    of benefit density; each panel's title gives the label, the normalised benefit and the buffers placed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    density = benefit_density(inst)
    positive = density[density > 0]
    norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.0001)) if len(positive) else None
    scale, unit = _byte_scale(inst.capacity)
    fig, axes = plt.subplots(1, len(placements), figsize=(6.5 * len(placements), 4.8), squeeze=False,
                             sharey=True, constrained_layout=True)
    mappable = None
    for ax, (label, offsets) in zip(axes[0], placements):
        rect = rectangles(inst, offsets)
        patches = [Rectangle((x, y / scale), w, h / scale) for x, y, w, h, _ in rect]
        coll = PatchCollection(patches, cmap="viridis", norm=norm, edgecolor="black", linewidth=0.15)
        coll.set_array(np.maximum(rect[:, 4], positive.min() if len(positive) else 1.0))
        ax.add_collection(coll)
        mappable = coll
        ax.axhline(inst.capacity / scale, color="crimson", linestyle="--", linewidth=1.0, label="capacity")
        ax.set_xlim(0, max(inst.horizon, 1))
        ax.set_ylim(0, inst.capacity / scale * 1.06)
        nb = validate.normalised_benefit(inst, offsets)
        ax.set_title(f"{label}: benefit {nb:.4f}, {len(rect)} of {inst.num_buffers} buffers in fast memory",
                     fontsize=9)
        ax.set_xlabel("schedule position")
        ax.legend(loc="upper right", fontsize=7)
    axes[0][0].set_ylabel(f"fast-memory address ({unit})")
    if mappable is not None and norm is not None:
        fig.colorbar(mappable, ax=axes[0].tolist(), label="benefit density (ns per byte per step)")
    fig.suptitle(f"{inst.name}: capacity {inst.capacity / scale:.3g} {unit}", fontsize=10)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
