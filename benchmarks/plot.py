"""The scaling benchmark's plot: time against N, measured and extrapolated pushes apart."""

from __future__ import annotations

from typing import Any

from benchmarks.summary import NEAR_LIMIT


def plot(results: dict[str, Any], path: str) -> list[str]:
    """Draw time against N: whole runs, transfers, the push (measured or extrapolated), S/B.

    :returns: the legend's labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]["rows"]
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    pushed = [r for r in rows if r["central_basis"] != "none"]
    if pushed:
        ax.plot(
            [r["n"] for r in pushed],
            [r["central_s"].get("median") or r["central_s"]["extrapolated"] for r in pushed],
            "-",
            color="tab:red",
            alpha=0.4,
        )
    for basis, marker, label in (
        ("measured", "s", "central push (scp), measured"),
        ("extrapolated", "s", "central push, extrapolated (not measured)"),
    ):
        picked = [r for r in rows if r["central_basis"] == basis]
        if picked:
            key = "median" if basis == "measured" else "extrapolated"
            ys = [r["central_s"][key] for r in picked]
            face = "tab:red" if basis == "measured" else "none"
            ax.plot(
                [r["n"] for r in picked],
                ys,
                marker,
                color="tab:red",
                markerfacecolor=face,
                markersize=8,
                linestyle="none",
                label=label,
            )
    for key, style, label in (
        ("wall_s", "o-", "fabmurder, whole run (median, min-max)"),
        ("transfer_s", "^--", "fabmurder, transfer window (median, min-max)"),
    ):
        med = [r[key]["median"] for r in rows]
        err = [
            [m - r[key]["min"] for m, r in zip(med, rows, strict=True)],
            [r[key]["max"] - m for m, r in zip(med, rows, strict=True)],
        ]
        ax.errorbar(ns, med, yerr=err, fmt=style, color="tab:blue", capsize=3, label=label)
    ax.plot(
        ns,
        [r["model_swarm_s"] for r in rows],
        ":",
        color="tab:blue",
        label="model: transfer, r = 1",
    )
    ax.plot(ns, [r["ideal_s"] for r in rows], "--", color="gray", label="ideal S/B")
    ax.plot(ns, [NEAR_LIMIT * r["ideal_s"] for r in rows], ":", color="gray", label="1.25 × S/B")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("peers N")
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"{results['size_mib']} MiB to N peers, {results['rate_mbit']:g} Mbit/s per host")
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(fontsize=7)
    fig.tight_layout()
    labels = [t.get_text() for t in legend.get_texts()]
    fig.savefig(path)
    plt.close(fig)
    return labels
