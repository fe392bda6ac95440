"""The service's performance targets, checked against a benchmark summary.

Each check returns a row: the target in words, the measured value, and a status of
"met", "not met" or "not measured" (when the run skipped what the target needs).
"""

from typing import Any

MIN_TEXT_C64_VS_BARE = 0.9
MIN_TEXT_C8_VS_BARE = 0.7
MAX_C1_OVERHEAD_MS = 5.0
MIN_SINGLE_MODALITY_C64_VS_BARE = 0.9
MIN_TEXT_VS_OTHER = 1.15
MAX_RSS_BYTES = 1.2e9
MAX_WARM_START_S = 15.0


def _row(target: str, measured: str | None, met: bool | None) -> dict[str, Any]:
    if met is None:
        status = "not measured"
    elif met:
        status = "met"
    else:
        status = "not met"
    return {"target": target, "measured": measured or "-", "status": status}


def _served(summary: dict[str, Any], workload: str, concurrency: str) -> dict[str, Any] | None:
    return summary["served"].get(workload, {}).get(concurrency)


def _vs_bare(summary: dict[str, Any], workload: str, concurrency: str, minimum: float) -> dict[str, Any]:
    row = _served(summary, workload, concurrency)
    target = f"{workload}, concurrency {concurrency}: items/s >= {minimum:g} x bare best"
    if row is None or row["vs_bare"] is None:
        return _row(target, None, None)
    bare = summary["bare"][workload]["best_items_per_s"]
    measured = f"{row['items_per_s']:.1f} vs {bare:.1f} items/s = {row['vs_bare']:.2f} x"
    return _row(target, measured, row["vs_bare"] >= minimum)


def _c1_latency(summary: dict[str, Any]) -> dict[str, Any]:
    row = _served(summary, "text", "1")
    target = f"text, concurrency 1: p50 <= bare batch-1 time + {MAX_C1_OVERHEAD_MS:g} ms"
    if row is None or row["p50_minus_bare_ms"] is None:
        return _row(target, None, None)
    bare_ms = summary["bare"]["text"]["batch1_ms"]
    measured = f"p50 {row['p50_ms']:.2f} ms vs bare {bare_ms:.2f} ms ({row['p50_minus_bare_ms']:+.2f} ms)"
    return _row(target, measured, row["p50_minus_bare_ms"] <= MAX_C1_OVERHEAD_MS)


def _vs_other(summary: dict[str, Any], name: str, concurrency: str) -> dict[str, Any]:
    target = f"text, concurrency {concurrency}: items/s >= {MIN_TEXT_VS_OTHER:g} x {name}"
    row = (summary["compare"] or {}).get(concurrency)
    if row is None or row["ours_vs_other"] is None:
        return _row(target, None, None)
    measured = f"{row['ours_items_per_s']:.1f} vs {row['items_per_s']:.1f} items/s = {row['ours_vs_other']:.2f} x"
    return _row(target, measured, row["ours_vs_other"] >= MIN_TEXT_VS_OTHER)


def _rss(results: dict[str, Any]) -> dict[str, Any]:
    target = f"RSS after the load <= {MAX_RSS_BYTES / 1e9:g} GB"
    rss = results.get("rss_bytes")
    if rss is None:
        return _row(target, None, None)
    return _row(target, f"{rss / 1e9:.2f} GB ({rss / 2**20:.0f} MiB)", rss <= MAX_RSS_BYTES)


def _warm_start(results: dict[str, Any]) -> dict[str, Any]:
    target = f"warm start to /readyz 200 <= {MAX_WARM_START_S:g} s"
    warm = (results.get("start") or {}).get("warm_s")
    if warm is None:
        return _row(target, None, None)
    return _row(target, f"{warm:.1f} s", warm <= MAX_WARM_START_S)


def check(results: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    name = (results["meta"].get("compare") or {}).get("name", "the other server")
    return [
        _vs_bare(summary, "text", "64", MIN_TEXT_C64_VS_BARE),
        _vs_bare(summary, "text", "8", MIN_TEXT_C8_VS_BARE),
        _c1_latency(summary),
        _vs_bare(summary, "image", "64", MIN_SINGLE_MODALITY_C64_VS_BARE),
        _vs_bare(summary, "audio", "64", MIN_SINGLE_MODALITY_C64_VS_BARE),
        _vs_other(summary, name, "8"),
        _vs_other(summary, name, "64"),
        _rss(results),
        _warm_start(results),
    ]
