"""Markdown tables from the benchmark JSON files (what BENCHMARKS.md quotes).

python benchmarks/report.py                      # benchmarks/results/cpu.json (+ effect.json)
python benchmarks/report.py benchmarks/results/nvidia-h100-80gb-hbm3.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER = {
    "simsiam": {1.0: "x1.55", 0.75: "x1.45", 0.5: "x1.24", 0.25: "x1.16"},
    "dino": {1.0: "x2.15", 0.75: "x1.68", 0.5: "x1.56", 0.25: "x1.5"},
}


def _f(x, fmt):
    return "n/a" if x is None else fmt.format(x)


def _order(r: dict):
    hosts, methods = ["lightly", "mmselfsup", "solo-learn"], ["simsiam", "simclr", "dino"]
    base = r["method"].split(" ")[0]
    return (
        hosts.index(r["host"]) if r["host"] in hosts else 9,
        methods.index(base) if base in methods else 9,
        r["method"],
        r.get("variant", "") != "default",
        r.get("variant", ""),
        -(r.get("resolution") or 0),
    )


def step_table(records: list[dict]) -> str:
    records = sorted((r for r in records if r["kind"] == "step"), key=_order)
    rows = [
        "| host | method | variant | selection res. | ratio (median) | min–max | host step | HVS step | peak mem. ratio | core share | paper Table 14 |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["kind"] != "step":
            continue
        paper = PAPER.get(r["method"], {}).get(r["resolution"], "") if r["variant"] == "default" and r["cap"] in (None, 128) else ""
        variant = r["variant"] + (
            f" (cap {r['cap']})" if r.get("cap") else (" (exact)" if r["method"] == "dino" and r["variant"] == "default" else "")
        )
        rows.append(
            f"| {r['host']} | {r['method']} | {variant} | {r['resolution']:.0%} | x{r['ratio']:.3f} | "
            f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['host_ms']:.0f} ms | {r['hvs_ms']:.0f} ms | "
            f"{_f(r.get('memory_ratio'), 'x{:.3f}')} | {r['core_share']:.2%} | {paper} |"
        )
    return "\n".join(rows)


def core_table(records: list[dict]) -> str:
    records = sorted((r for r in records if r["kind"] == "step"), key=_order)
    rows = ["| host | method | variant | res. | core ms | parts (ms) |", "|---|---|---|---|---|---|"]
    for r in records:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["core_parts_ms"].items())
        rows.append(f"| {r['host']} | {r['method']} | {r['variant']} | {r['resolution']:.0%} | {r['core_ms']:.2f} | {parts} |")
    return "\n".join(rows)


def memory_table(records: list[dict]) -> str:
    records = sorted((r for r in records if r["kind"] == "step"), key=_order)
    rows = ["| host | method | res. | host step peak | HVS step peak | ratio | step delta host → HVS |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("memory_ratio") is not None:
            rows.append(
                f"| {r['host']} | {r['method']} | {r['resolution']:.0%} | {r['host_peak_mb']:.0f} MB | {r['hvs_peak_mb']:.0f} MB | "
                f"x{r['memory_ratio']:.3f} | {r['host_step_mb']:.0f} → {r['hvs_step_mb']:.0f} MB (x{r['memory_delta_ratio']:.2f}) |"
            )
    return "\n".join(rows)


def knob_table(records: list[dict]) -> str:
    rows = ["| host | method | knob | HVS on | amortised ratio |", "|---|---|---|---|---|"]
    for r in records:
        if r["kind"] == "knob":
            args = ", ".join(f"{k}={v}" for k, v in r["knob_args"].items())
            rows.append(
                f"| {r['host']} | {r['method']} | {args} | {r['hvs_fraction']:.0%} of {r['steps'] * r['reps']} steps | x{r['ratio']:.3f} |"
            )
    return "\n".join(rows)


def search_table(records: list[dict]) -> str:
    rows = ["| search | combinations | ce shape | time | per 256 samples |", "|---|---|---|---|---|"]
    for r in records:
        if r["kind"] in ("exact_search", "capped_search"):
            name = "exact (top-k per global pair)" if r["kind"] == "exact_search" else f"capped ({r['cap']} random)"
            rows.append(f"| {name} | {r['combinations']} | [4, 20, {r['batch']}] | {r['ms']:.3f} ms | {r['ms_per_256']:.3f} ms |")
    return "\n".join(rows)


def effect_tables(effect: dict) -> str:
    """The effect study's tables (the same as ``benchmarks/effect.py --report-only`` prints)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hvs_effect", ROOT / "benchmarks" / "effect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    meta = effect["_meta"]
    return mod.tables({c: effect[c] for c in meta["cells"]}, meta["default_cell"])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else ROOT / "benchmarks" / "results" / "cpu.json"
    records = json.loads(path.read_text())
    first = next((r for r in records if r["kind"] == "step"), records[0])
    print(f"### {path.name}: device {first['device']}, {first['threads']} threads, torch {first['torch']}, lightly {first['lightly']}\n")
    for title, fn in (
        ("Step-time ratio (HVS step / host step)", step_table),
        ("Peak memory", memory_table),
        ("Core share breakdown", core_table),
        ("Cost knobs (HVSSchedule)", knob_table),
        ("DINO combination search (core only)", search_table),
    ):
        print(f"#### {title}\n\n{fn(records)}\n")
    checks = path.with_suffix(".checks.json")
    if checks.is_file():
        print("#### Targets\n\n| target | value | limit | |\n|---|---|---|---|")
        for c in json.loads(checks.read_text()):
            v = c["value"]
            val = (
                "n/a"
                if v is None
                else (f"{v:.2%}" if "share" in c["target"] else (f"{v:.3f} ms" if "search" in c["target"] else f"x{v:.3f}"))
            )
            lim = f"{c['limit']:.0%}" if "share" in c["target"] else (f"{c['limit']} ms" if "search" in c["target"] else f"x{c['limit']}")
            print(f"| {c['target']} | {val} | {lim} | {c['status']} |")
        print()
    effect = path.parent / "effect.json"
    if effect.is_file() and not argv:
        print(f"#### Effect study\n\n{effect_tables(json.loads(effect.read_text()))}\n")


if __name__ == "__main__":
    main()
