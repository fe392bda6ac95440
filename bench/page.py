"""Render a benchmark's results and summary as the Markdown page docs/benchmarks.md."""

from typing import Any


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def machine_section(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    machine = meta["machine"]
    quiet = results.get("quiet") or {}
    memory = machine.get("memory_bytes")
    rows = [
        ["CPU (lscpu model name)", machine["cpu_model"]],
        ["cores (os.cpu_count)", str(machine["cpu_count"])],
        ["memory", f"{memory / 2**30:.1f} GiB" if memory else "-"],
        ["GPU", machine.get("gpu") or "none (CPU)"],
        ["device, torch threads (bare)", _bare_device(results)],
        ["torch, Python", f"{machine['torch']}, {machine['python']}"],
        ["load generator", machine["wrk"]],
        ["MMS_* settings", ", ".join(f"{k}={v}" for k, v in sorted(meta["env"].items())) or "defaults"],
        ["load average (1, 5, 15 min) at start", _loads(meta.get("load_average_start"))],
        ["load average before the measurements", _loads(quiet.get("after"))],
        ["1-minute load average at the start of each repeat", _loads([r["load_average"][0] for r in results["repeats"]])],
        ["load average at the end", _loads(meta.get("load_average_end"))],
        ["date (UTC)", f"{meta['started']} to {meta.get('finished', '-')}"],
    ]
    lines = ["## Machine and command", ""]
    lines += table(["", ""], rows)
    lines += ["```sh", meta["command"], "```", ""]
    lines += [
        f"Repeats: {meta['repeats']}, alternating the bare measurements with wrk runs of "
        f"{meta['duration_s']:g} s per workload and concurrency; wrk threads: {meta['wrk_threads']}.",
        "",
    ]
    if quiet and not quiet.get("quiet", True):
        lines += [
            f"**Busy machine.** The 1-minute load average was still {quiet['after'][0]:.2f} "
            f"(above {quiet['threshold']:g}) after waiting {quiet['waited_s']:.0f} s, so other work shared "
            "the cores during these measurements and the figures are lower and noisier than on a quiet machine.",
            "",
        ]
    elif quiet:
        lines += [f"Waited {quiet['waited_s']:.0f} s for a 1-minute load average of {quiet['threshold']:g} or less.", ""]
    return lines


def _loads(values: list[float] | None) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "-"


def _bare_device(results: dict[str, Any]) -> str:
    bare = results["repeats"][0]["bare"]
    return f"{bare['device']}, {bare['torch_threads']}"


def targets_section(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    rows = [[row["target"], row["measured"], row["status"]] for row in summary["targets"]]
    lines = ["## Targets", ""] + table(["target", "measured (medians)", "status"], rows)
    if not (results.get("quiet") or {}).get("quiet", True):
        lines += [
            "These figures come from a busy machine (see above and Reading the figures), so a status here "
            "is no evidence either way for the targets that compare with the bare pipeline or with another server.",
            "",
        ]
    return lines


def bare_section(summary: dict[str, Any]) -> list[str]:
    bare = summary["bare"]
    sizes = sorted({size for row in bare.values() for size in row.get("by_batch", {})})
    header = ["modality", "batch-1 time (ms)"] + [f"items/s at batch {size}" for size in sizes] + ["best items/s"]
    rows = []
    for modality, row in bare.items():
        by_batch = row.get("by_batch", {})
        regimes = row.get("regime_by_batch", {})
        cells = [f"{fmt(by_batch.get(size))} ({regimes[size]})" if size in regimes else "-" for size in sizes]
        rows.append([modality, fmt(row["batch1_ms"], 2), *cells, fmt(row["best_items_per_s"])])
    return [
        "## Bare pipeline",
        "",
        "Preprocessing of B payloads on one thread, then one forward pass of the batch, in one process "
        "with no HTTP (`bench/bare.py`). The `all` row is one three-modality sample: batch-1 time is the "
        "sum of the three, items/s is 1 / (sum of 1 / best items/s). Each batch size ran twice, under "
        "libgomp's default wait policy and under OMP_WAIT_POLICY=PASSIVE, and the faster one is kept (named "
        "in brackets): on a shared machine the default policy's spinning slows a single-team process down.",
        "",
        *table(header, rows),
        f"Other processes kept {fmt(next(iter(bare.values())).get('foreign_cores'), 2)} cores busy on average "
        "during the bare measurements (median over the repeats; see Reading the figures).",
        "",
    ]


def served_section(summary: dict[str, Any]) -> list[str]:
    header = [
        "workload", "concurrency", "items/s", "p50 (ms)", "p99 (ms)", "vs bare best", "p50 - bare batch-1 (ms)",
        "errors", "other processes (cores)",
    ]  # fmt: skip
    rows = []
    for workload, by_concurrency in summary["served"].items():
        for concurrency, row in by_concurrency.items():
            rows.append([
                workload,
                concurrency,
                fmt(row["items_per_s"]),
                fmt(row["p50_ms"], 2),
                fmt(row["p99_ms"], 2),
                fmt(row["vs_bare"], 2, " x"),
                fmt(row["p50_minus_bare_ms"], 2) if row["p50_minus_bare_ms"] is None else f"{row['p50_minus_bare_ms']:+.2f}",
                str(row["errors"]),
                fmt(row.get("foreign_cores"), 2),
            ])  # fmt: skip
    return [
        "## Served: POST /v1/embed",
        "",
        "One sample per request, multipart body prepared once (`bench/wrk/post.lua`). Each figure is the "
        "median over the repeats; ratios divide medians. The last column is the mean number of cores that "
        "processes outside the benchmark kept busy during the runs.",
        "",
    ] + table(header, rows)


def compare_section(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    compare = summary["compare"]
    if not compare:
        return []
    name = results["meta"]["compare"]["name"]
    header = ["concurrency", "this service items/s", f"{name} items/s", f"{name} p50 (ms)", f"{name} p99 (ms)", "ratio"]
    rows = [
        [c, fmt(row["ours_items_per_s"]), fmt(row["items_per_s"]), fmt(row["p50_ms"], 2), fmt(row["p99_ms"], 2),
         fmt(row["ours_vs_other"], 2, " x")]
        for c, row in compare.items()
    ]  # fmt: skip
    return [f"## Text against {name}", "", f"The same sentence posted to {name}'s `{results['meta']['compare']['path']}`."
            " Setup in bench/README.md.", ""] + table(header, rows)  # fmt: skip


def start_memory_section(results: dict[str, Any]) -> list[str]:
    start = results.get("start")
    rss = results.get("rss_bytes")
    if not start and rss is None:
        return []
    rows = []
    if start:
        rows.append(["cold start to /readyz 200 (first start of the run)", fmt(start["cold_s"], 1, " s")])
        rows.append(["warm start to /readyz 200 (second start)", fmt(start["warm_s"], 1, " s")])
    ready_rss = results.get("rss_ready_bytes")
    if ready_rss is not None:
        rows.append(["server RSS when ready, before any request (VmRSS)", f"{ready_rss / 2**20:.0f} MiB"])
    peak_rss = results.get("rss_peak_bytes")
    if peak_rss is not None:
        rows.append(["server peak RSS, during the load (VmHWM)", f"{peak_rss / 2**20:.0f} MiB"])
    if rss is not None:
        settle = f", idle for {results['rss_settle_s']:g} s" if "rss_settle_s" in results else ""
        rows.append([f"server RSS after the load runs{settle} (VmRSS)", f"{rss / 2**20:.0f} MiB"])
    return ["## Start and memory", ""] + table(["", ""], rows)


def batching_section(summary: dict[str, Any]) -> list[str]:
    batching = summary["batching"]
    if not batching:
        return []
    header = ["batching", "items/s", "p50 (ms)", "p99 (ms)", "encoder", "forward s", "batches", "mean batch", "busy share"]
    rows = []
    for mode, label in (("on", "on (defaults)"), ("off", "off (MMS_MAX_BATCH_SIZE=1)")):
        data = batching[mode]
        for index, (encoder, stats) in enumerate(data["encoders"].items()):
            head = [label, fmt(data["items_per_s"]), fmt(data["p50_ms"], 1), fmt(data["p99_ms"], 1)] if index == 0 else ["", "", "", ""]
            rows.append(head + [encoder, fmt(stats["forward_s"], 2), fmt(stats["batches"], 0),
                                fmt(stats["mean_batch_items"], 1), fmt(stats["busy_share"], 2)])  # fmt: skip
    return [
        f"## Batching: all three modalities at concurrency {batching['concurrency']}",
        "",
        "Forward seconds, batches and mean batch size per encoder come from the difference of "
        "`mms_forward_seconds` and `mms_batch_items` on /metrics around one run (medians over the repeats); "
        "busy share is forward seconds over the run's wall time.",
        "",
        *table(header, rows),
        f"Limiting encoder with batching on: **{batching['on']['limiting']}**; "
        f"with batching off: **{batching['off']['limiting']}** (most forward seconds).",
        "",
    ]


def threads_section(summary: dict[str, Any]) -> list[str]:
    threads = summary["threads"]
    if not threads:
        return []
    workloads = list(threads["rows"][0]["runs"])
    header = ["MMS_TORCH_THREADS", "MMS_PREPROCESS_THREADS"] + [f"{w} items/s" for w in workloads] + [
        f"{w} p99 (ms)" for w in workloads
    ]
    rows = []
    for row in threads["rows"]:
        runs = row["runs"]
        rows.append([str(row["torch_threads"]), str(row["preprocess_threads"])]
                    + [fmt(runs[w]["items_per_s"]) for w in workloads]
                    + [fmt(runs[w]["latency_ms"]["p99"], 1) for w in workloads])  # fmt: skip
    best = threads["best"]
    concurrency = threads["rows"][0]["concurrency"]
    return [
        f"## CPU split between torch and preprocessing threads (concurrency {concurrency}, one run each)",
        "",
        *table(header, rows),
        f"Best for `{threads['ranked_by']}`: MMS_TORCH_THREADS={best['torch_threads']}, "
        f"MMS_PREPROCESS_THREADS={best['preprocess_threads']}.",
        "",
    ]


def reading_section() -> list[str]:
    return [
        "## Reading the figures",
        "",
        "- The bare figures are the reference for every ratio, so they are only as good as the quiet of the "
        "machine. A bare loop never sleeps: when other processes keep cores busy it gets only its fair share "
        "of them, and torch's intra-op threads wait for each other at every operator. A server at low "
        "concurrency sleeps between requests and is scheduled as soon as it wakes. On a busy machine the "
        "bare side therefore suffers more than the served side, and a served/bare ratio above 1 is a sign "
        "of that, not of a fast server. Trust the ratios only where the `other processes` figures are near 0.",
        "- wrk keeps every connection busy (a closed loop): latency at concurrency 8 and 64 includes the "
        "queueing in the service, and at concurrency 1 the p50 minus the bare batch-1 time is the cost of "
        "HTTP, multipart parsing, scheduling and the JSON response.",
        "- Items/s counts responses with a 2xx or 3xx status; the errors column counts the others, wrk's "
        "timeouts (30 s) and socket errors.",
        "- On a CPU machine the service's own work shares the cores with the forward passes: HTTP and "
        "multipart parsing, tokenizing, the JSON response and the metrics on the event loop thread, and "
        "decoding in the preprocessing pool. The bare loop has no HTTP work, but it preprocesses each batch on "
        "one thread before the forward pass, while the other core waits. The service preprocesses during the "
        "previous batch's forward pass. A served/bare ratio can therefore fall on either side of 1, by which of "
        "the two costs is larger. Image preprocessing (decoding and resizing a 640x480 JPEG) is a large share "
        "of the bare image loop, so image can run above 1.",
        "- Thread CPU times were read from /proc/PID/task during 8 s of text at concurrency 64, in three runs "
        "on the 2-core machine on 2026-12-05. The event loop thread used 0.7 to 0.9 ms of CPU per request, and "
        "the two torch threads 5.9 to 7.1 ms per item. Before the service exempted its loaded objects from Python's "
        "garbage collector, the event loop thread used 1.0 to 1.4 ms per request. Full collections then walked "
        "half a million objects three times in 10 s, and each stalled the event loop for 0.2 s.",
        "- Run-to-run noise on that machine: bare text at batch 32 gave 313 items/s in one run and 273 in a run "
        "two hours later. Served audio at concurrency 64 gave 68 to 83 items/s in separate 8 s runs of the "
        "same code. A second full run on 2026-12-05, started 8 minutes after the one on this page ended, gave "
        "text 0.93 at concurrency 64 and 0.73 at 8, image 1.01 and audio 0.89 (78.9 against 89.1 items/s). "
        "A ratio within about 0.1 of its target can fall on the other side in another run.",
        "- Audio on the same machine: at concurrency 64 the service ran batches of 32 clips (128 GE2E "
        "windows). Each forward pass took 390 to 420 ms (mms_forward_seconds on /metrics), against 300 to "
        "325 ms for the same batch alone in one process. Thread CPU times from /proc/PID/task over 8 s show "
        "where the time goes. The two torch threads spent 25 ms of CPU per clip, against about 19.5 ms alone. "
        "The pool used 1.9 ms per clip and the event loop 0.75 ms. The LSTM's forward pass is 480 small steps "
        "(160 frames, 3 layers), and both torch threads meet at the end of each one. Whenever a pool or event "
        "loop thread holds one of the two cores, the other torch thread waits for its partner. In one process, "
        "preprocessing 32 clips (about 35 ms) before the forward pass was faster than preprocessing them on two "
        "threads during it, which made the pass 45 to 75 ms longer. Holding the pool back while a pass runs "
        "(scheduling class SCHED_IDLE) starved it instead: batches fell to one clip. Lowering the pool threads' "
        "priority (nice 10 and 19) and raising glibc's mmap and trim thresholds changed nothing beyond the noise.",
        "- Torch on threads other than the device thread: libgomp keeps a team of worker threads for every "
        "thread that runs a parallel operator. Once the process has more OpenMP threads than cores, libgomp "
        "stops letting them spin while they wait. A single /v1/classify request, whose fusion head runs on the "
        "event loop, used to start a second team; from then on GE2E at batch 1 took 40 ms instead of 12 ms, "
        "and audio at concurrency 1 fell from 61 to 23 items/s. With MMS_TORCH_THREADS set, every "
        "preprocessing thread also started a team through MKL. The event loop and the pool now keep torch, "
        "MKL included, to their own thread, so only the device thread runs a team. The bare loop runs on the "
        "main thread of its own process and never had a second team.",
        "",
    ]


def render_page(results: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Throughput and latency of the service under load, against the same encoders run bare. "
        "Rerun with `make bench` (or `.venv/bin/python -m bench.run`); bench/README.md explains the options. "
        "This page is generated from a results file under bench/results/.",
        "",
    ]
    lines += machine_section(results)
    lines += targets_section(results, summary)
    lines += bare_section(summary)
    lines += served_section(summary)
    lines += compare_section(results, summary)
    lines += start_memory_section(results)
    lines += batching_section(summary)
    lines += threads_section(summary)
    lines += reading_section()
    return "\n".join(lines).rstrip() + "\n"
