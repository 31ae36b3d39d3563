"""Draws docs/dgc.png, the README's picture of one DGC step on one worker.

    python docs/make_figure.py
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = [
    ("gradient g\n(this worker)", "#dbe9f6"),
    ("local clip\nto C / sqrt(N)", "#dbe9f6"),
    ("momentum\ncorrection\nu = m u + g\nv = v + u", "#fde2c8"),
    ("top-k of |v|\n(k = 0.1% of size,\nsampled threshold)", "#fde2c8"),
    ("mask sent:\nv[S] = 0, u[S] = 0", "#fde2c8"),
    ("ONE all-gather:\nvalues + indices\nof all variables", "#d5f0d5"),
    ("w -= lr * sum of\nall workers' entries\n(sparse scatter)", "#d5f0d5"),
]


def main():
    fig, ax = plt.subplots(figsize=(15, 2.8))
    ax.set_xlim(0, len(BOXES) * 2.1)
    ax.set_ylim(0, 2.4)
    ax.axis("off")
    for i, (text, color) in enumerate(BOXES):
        x = i * 2.1 + 0.1
        ax.add_patch(FancyBboxPatch((x, 0.5), 1.8, 1.3, boxstyle="round,pad=0.05",
                                    facecolor=color, edgecolor="#555555"))
        ax.text(x + 0.9, 1.15, text, ha="center", va="center", fontsize=9)
        if i:
            ax.add_patch(FancyArrowPatch((x - 0.28, 1.15), (x - 0.02, 1.15),
                                         arrowstyle="-|>", mutation_scale=12, color="#333333"))
    ax.text(2 * 2.1 + 0.1, 2.1, "kept on the worker: residual v and momentum u (ON_READ variables)",
            fontsize=9, color="#a0522d")
    ax.text(5 * 2.1 + 0.1, 0.15, "identical on every worker", fontsize=9, color="#2e7d32")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dgc.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()
