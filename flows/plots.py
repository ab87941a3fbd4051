"""PNG plots rendered locally (DVC's HTML plots load vega from a CDN; these need nothing)."""

from __future__ import annotations

from pathlib import Path


def reward_curve_png(history: list[dict], path: Path) -> Path:
    """Mean reward (with +-1 std band) and mean completion length per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    its = [h["iteration"] for h in history]
    mean = [h.get("reward/total/mean") or 0.0 for h in history]
    std = [h.get("reward/total/std") or 0.0 for h in history]
    length = [h.get("completion/length_mean") or 0.0 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(its, mean, marker="o", color="#4c72b0")
    ax1.fill_between(its, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                     alpha=0.2, color="#4c72b0")
    ax1.set(xlabel="iteration", ylabel="reward (mean +- std)", title="training reward")
    ax2.plot(its, length, marker="o", color="#dd8452")
    ax2.set(xlabel="iteration", ylabel="tokens", title="completion length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
