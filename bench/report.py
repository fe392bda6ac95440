"""Turn a results JSON of bench.run into medians, ratios, target checks and a Markdown page."""

import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from bench import targets
from bench.page import render_page

MODALITIES = ("text", "image", "audio")


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize_bare(repeats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return per modality the medians over repeats of best items/s, batch-1 ms and items/s per batch size.

    `all` is the bare equivalent of one three-modality sample: its items/s is
    1 / (sum over modalities of 1 / best items/s), its batch-1 time the sum of theirs.
    """
    bare: dict[str, dict[str, Any]] = {}
    for modality in MODALITIES:
        rows = [r["bare"]["modalities"][modality] for r in repeats if modality in r["bare"]["modalities"]]
        if not rows:
            continue
        sizes = [batch["batch_size"] for batch in rows[0]["batches"]]
        bare[modality] = {
            "best_items_per_s": median(row["best_items_per_s"] for row in rows),
            "batch1_ms": median(row["batch1_ms"] for row in rows),
            "best_batch_size": Counter(row["best_batch_size"] for row in rows).most_common(1)[0][0],
            "by_batch": {
                size: median(b["items_per_s"] for row in rows for b in row["batches"] if b["batch_size"] == size)
                for size in sizes
            },
            "regime_by_batch": {
                size: Counter(
                    b.get("regime", "default") for row in rows for b in row["batches"] if b["batch_size"] == size
                ).most_common(1)[0][0]
                for size in sizes
            },
        }
    foreign = median(r["bare"].get("foreign_cores") for r in repeats)
    for row in bare.values():
        row["foreign_cores"] = foreign
    if all(m in bare for m in MODALITIES):
        bare["all"] = {
            "best_items_per_s": 1 / sum(1 / bare[m]["best_items_per_s"] for m in MODALITIES),
            "batch1_ms": sum(bare[m]["batch1_ms"] for m in MODALITIES),
            "foreign_cores": foreign,
        }
    return bare


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the medians over repeats of one workload at one concurrency, and the errors summed."""
    return {
        "items_per_s": median(r["items_per_s"] for r in runs),
        "p50_ms": median(r["latency_ms"]["p50"] for r in runs),
        "p99_ms": median(r["latency_ms"]["p99"] for r in runs),
        "errors": sum(sum(r["errors"].values()) for r in runs),
        "foreign_cores": median(r.get("foreign_cores") for r in runs),
        "repeats": len(runs),
    }


def summarize_served(repeats: list[dict[str, Any]], bare: dict[str, Any]) -> dict[str, dict[str, Any]]:
    served: dict[str, dict[str, Any]] = {}
    for workload, by_concurrency in repeats[0]["served"]["runs"].items():
        served[workload] = {}
        for concurrency in by_concurrency:
            row = summarize_runs([r["served"]["runs"][workload][concurrency] for r in repeats])
            reference = bare.get(workload, {})
            row["vs_bare"] = ratio(row["items_per_s"], reference.get("best_items_per_s"))
            batch1_ms = reference.get("batch1_ms")
            # Only at concurrency 1 does the p50 hold no queueing, so only there is it overhead.
            at_one = concurrency == "1" and batch1_ms is not None
            row["p50_minus_bare_ms"] = row["p50_ms"] - batch1_ms if at_one else None
            served[workload][concurrency] = row
    return served


def summarize_compare(repeats: list[dict[str, Any]], served: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    if "compare" not in repeats[0]:
        return None
    compare = {}
    for concurrency in repeats[0]["compare"]:
        row = summarize_runs([r["compare"][concurrency] for r in repeats])
        ours = served.get("text", {}).get(concurrency, {}).get("items_per_s")
        row["ours_items_per_s"] = ours
        row["ours_vs_other"] = ratio(ours, row["items_per_s"])
        compare[concurrency] = row
    return compare


def summarize_encoder_metrics(deltas: list[dict[str, dict[str, float]]], run_seconds: float | None) -> dict[str, Any]:
    """Return per encoder the medians of forward seconds, batches and mean batch size over runs.

    `busy_share` is forward seconds over the run's wall time; the limiting encoder is the
    one whose forward passes took the most time.
    """
    encoders = sorted({name for delta in deltas for name in delta})
    table = {}
    for name in encoders:
        forward_s = median(d[name]["forward_s"] for d in deltas if name in d)
        batches = median(d[name]["batches"] for d in deltas if name in d)
        items = median(d[name].get("items", 0.0) for d in deltas if name in d)
        # Older results files lack batches_taken; the forward count is then the closest figure.
        taken = median(d[name].get("batches_taken", d[name]["batches"]) for d in deltas if name in d)
        table[name] = {
            "forward_s": forward_s,
            "batches": batches,
            "mean_batch_items": ratio(items, taken),
            "busy_share": ratio(forward_s, run_seconds),
        }
    limiting = max(table, key=lambda name: table[name]["forward_s"] or 0.0) if table else None
    return {"encoders": table, "limiting": limiting}


def summarize_batching(results: dict[str, Any], served: dict[str, Any]) -> dict[str, Any] | None:
    off = results.get("batching_off")
    if not off:
        return None
    concurrency = str(off["concurrency"])
    repeats = results["repeats"]
    on_deltas = [r["served"]["metrics"]["all"] for r in repeats if "all" in r["served"]["metrics"]]
    on_seconds = median(r["served"]["runs"]["all"][concurrency]["duration_s"] for r in repeats)
    off_seconds = median(run["duration_s"] for run in off["runs"])
    return {
        "concurrency": concurrency,
        "on": {**served["all"][concurrency], **summarize_encoder_metrics(on_deltas, on_seconds)},
        "off": {**summarize_runs(off["runs"]), **summarize_encoder_metrics(off["metrics"], off_seconds)},
    }


def summarize_threads(results: dict[str, Any]) -> dict[str, Any] | None:
    grid = results.get("threads") or []
    if not grid:
        return None
    key = "all" if "all" in grid[0]["runs"] else next(iter(grid[0]["runs"]))
    best = max(grid, key=lambda row: row["runs"][key]["items_per_s"])
    return {"rows": grid, "ranked_by": key, "best": best}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    repeats = results["repeats"]
    bare = summarize_bare(repeats)
    served = summarize_served(repeats, bare)
    summary = {
        "bare": bare,
        "served": served,
        "compare": summarize_compare(repeats, served),
        "batching": summarize_batching(results, served),
        "threads": summarize_threads(results),
    }
    summary["targets"] = targets.check(results, summary)
    return summary


def render(results: dict[str, Any]) -> str:
    return render_page(results, summarize(results))
