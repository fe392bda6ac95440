"""Load benchmark of the service against the bare pipeline: `python -m bench.run` (or `make bench`).

One run starts the service on 127.0.0.1 (or drives `--url`), then repeats, alternating:
the bare pipeline (bench.bare, in its own process) and wrk against POST /v1/embed for
each workload and concurrency, plus `--compare-url` when given. It also measures cold
and warm start to ready, the server's RSS after the load, the all-modality workload
with batching off (MMS_MAX_BATCH_SIZE=1), and a grid of MMS_TORCH_THREADS x
MMS_PREPROCESS_THREADS. Results go to bench/results/*.json and docs/benchmarks.md.
See bench/README.md.
"""

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.bare import combine_regimes
from bench.cpu import ForeignCpu
from bench.inputs import WORKLOAD_FIELDS, Body, write_inputs
from bench.machine import load_average, machine_info, wait_for_quiet
from bench.served import (
    Server,
    check_body,
    metrics_delta,
    rss_bytes,
    run_wrk,
    scrape_encoder_metrics,
    start_server,
    stop_server,
)

logger = logging.getLogger("bench.run")

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DOC = BENCH_DIR.parent / "docs" / "benchmarks.md"
EMBED_PATH = "/v1/embed"
SETTLE_S = 3.0
"""Idle seconds before the RSS reading after the load: past the service's default MMS_IDLE_TRIM_S."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)

    parser.add_argument("--url", help="Drive a running service at this base URL instead of starting one.")
    parser.add_argument("--quick", action="store_true", help="Smoke check: one repeat, 3 s runs, no results page.")
    parser.add_argument("--modalities", default="text,image,audio,all", help="Workloads: text, image, audio, all.")
    parser.add_argument("--concurrency", default="1,8,64", help="Comma-separated wrk connection counts.")
    parser.add_argument("--duration", type=float, help="Seconds per wrk run (default 10, --quick 3).")
    parser.add_argument("--repeats", type=int, help="Alternating bare/served repeats (default 3, --quick 1).")
    parser.add_argument("--batch-sizes", default="1,8,32", help="Bare batch sizes.")
    parser.add_argument(
        "--wrk-threads", type=int, default=max(1, min(4, (os.cpu_count() or 1) // 4)), help="wrk threads (default cores / 4, 1 to 4)."
    )

    parser.add_argument("--compare-url", help="Base URL of another server to drive with --compare-body.")
    parser.add_argument("--compare-body", type=Path, help="Request body file for --compare-url (JSON).")
    parser.add_argument("--compare-path", default="/embeddings", help="Path posted on --compare-url.")
    parser.add_argument("--compare-content-type", default="application/json")
    parser.add_argument("--compare-name", default="Infinity", help="Name of the other server in the page.")

    parser.add_argument("--thread-grid", help="torch:preprocess pairs, e.g. '1:1,2:1'; default from the core count.")
    parser.add_argument("--skip-threads", action="store_true", help="Skip the thread-split grid.")

    parser.add_argument("--quiet-load", type=float, default=1.0, help="1-minute load average to wait for.")
    parser.add_argument(
        "--max-wait", type=float, help="Maximum seconds to wait for a quiet machine (default 1200, --quick 0)."
    )
    parser.add_argument("--doc", type=Path, help=f"Results page to write (default {DEFAULT_DOC}; none with --quick).")
    parser.add_argument("--render", type=Path, help="Only render this results JSON into the page.")
    args = parser.parse_args(argv)

    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.max_wait is None:
        args.max_wait = 0.0 if args.quick else 1200.0
    args.workloads = [w for w in args.modalities.split(",") if w]
    unknown = sorted(set(args.workloads) - set(WORKLOAD_FIELDS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOAD_FIELDS)}")
    args.concurrencies = [int(c) for c in args.concurrency.split(",")]
    if (args.compare_url is None) != (args.compare_body is None):
        parser.error("--compare-url and --compare-body go together")
    return args


def bare_modalities(workloads: list[str]) -> list[str]:
    needed = {field for workload in workloads for field in WORKLOAD_FIELDS[workload]}
    return [m for m in ("text", "image", "audio") if m in needed]


def bare_regimes() -> dict[str, dict[str, str]]:
    """Return the OpenMP settings to run the bare pipeline under, by name.

    libgomp (GCC's OpenMP runtime, which torch's Linux wheels use) spins at each barrier
    before it sleeps, and spins far less once the process has more OpenMP threads than
    cores (do_spin in libgomp's config/linux/wait.h). The service's process has several
    teams (device and preprocessing threads) and so spins little. The bare process has
    one team of as many threads as cores and spins fully, which starves its own threads
    whenever another process runs on a core. Running the bare pipeline with both wait
    policies and keeping the faster row per batch size gives the strongest reference.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return {os.environ["OMP_WAIT_POLICY"].lower(): {}}
    return {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def measure_bare(inputs: Path, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Run bench.bare in a fresh process per OpenMP regime, then merge the regimes.

    The processes see the same MMS_* environment as the server. `server` idles meanwhile,
    and its PID keeps its CPU time out of `foreign_cores`.
    """
    regimes = {name: measure_bare_once(inputs, server, env, args) for name, env in bare_regimes().items()}
    return {**combine_regimes(regimes), "regimes": regimes}


def measure_bare_once(
    inputs: Path, server: Server, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.bare",
        "--inputs", str(inputs),
        "--modalities", ",".join(bare_modalities(args.workloads)),
        "--batch-sizes", args.batch_sizes,
        "--min-time", "0.3" if args.quick else "2",
    ]  # fmt: skip
    with ForeignCpu([server.pid]) as foreign:
        completed = subprocess.run(
            command, cwd=BENCH_DIR.parent, env={**os.environ, **env}, capture_output=True, text=True, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.bare failed with code {completed.returncode}:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["foreign_cores"] = foreign.cores
    return result


def drive(server: Server, body: Body, concurrency: int, duration_s: float, args: argparse.Namespace) -> dict[str, Any]:
    """Run wrk against the server's POST /v1/embed and record the cores other processes used meanwhile."""
    with ForeignCpu([server.pid]) as foreign:
        result = run_wrk(server.url + EMBED_PATH, body, concurrency, duration_s, args.wrk_threads)
    result["foreign_cores"] = foreign.cores
    return result


def warm_up(server: Server, bodies: dict[str, Body], workloads: list[str], args: argparse.Namespace) -> None:
    """Run each workload briefly at the top concurrency, so first-batch costs stay out of the figures."""
    for workload in workloads:
        drive(server, bodies[workload], max(args.concurrencies), 1 if args.quick else 3, args)


def sweep(server: Server, bodies: dict[str, Body], args: argparse.Namespace) -> dict[str, Any]:
    """Run wrk for every workload and concurrency; also diff /metrics around the top-concurrency run."""
    runs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, Any] = {}
    top = max(args.concurrencies)
    for workload in args.workloads:
        runs[workload] = {}
        for concurrency in args.concurrencies:
            before = scrape_encoder_metrics(server.url) if concurrency == top else None
            result = drive(server, bodies[workload], concurrency, args.duration, args)
            if before is not None:
                metrics[workload] = metrics_delta(before, scrape_encoder_metrics(server.url))
            runs[workload][str(concurrency)] = result
            logger.info(
                "%s c%d: %.1f items/s, p50 %.1f ms, p99 %.1f ms, other processes %.2f cores",
                workload, concurrency, result["items_per_s"], result["latency_ms"]["p50"], result["latency_ms"]["p99"],
                result["foreign_cores"],
            )  # fmt: skip
    return {"runs": runs, "metrics": metrics}


def sweep_compare(bodies: dict[str, Body], args: argparse.Namespace) -> dict[str, Any]:
    url = args.compare_url.rstrip("/") + args.compare_path
    runs = {}
    for concurrency in args.concurrencies:
        result = run_wrk(url, bodies["compare"], concurrency, args.duration, args.wrk_threads)
        runs[str(concurrency)] = result
        logger.info("%s c%d: %.1f items/s", args.compare_name, concurrency, result["items_per_s"])
    return runs


def run_repeats(server: Server, inputs: Path, bodies: dict[str, Body], args: argparse.Namespace) -> list[dict[str, Any]]:
    repeats = []
    for index in range(args.repeats):
        logger.info("repeat %d of %d: bare pipeline", index + 1, args.repeats)
        entry: dict[str, Any] = {"load_average": load_average(), "bare": measure_bare(inputs, server, args)}
        logger.info("bare done; other processes used %.2f cores meanwhile", entry["bare"]["foreign_cores"])
        logger.info("repeat %d of %d: served", index + 1, args.repeats)
        entry["served"] = sweep(server, bodies, args)
        if args.compare_url:
            entry["compare"] = sweep_compare(bodies, args)
        repeats.append(entry)
    return repeats


def measure_batching_off(bodies: dict[str, Body], log_dir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the all-modality workload at the top concurrency with MMS_MAX_BATCH_SIZE=1."""
    if "all" not in args.workloads:
        return None
    top = max(args.concurrencies)
    server = start_server({"MMS_MAX_BATCH_SIZE": "1"}, log_dir / "server-batching-off.log")
    try:
        warm_up(server, bodies, ["all"], args)
        runs, metrics = [], []
        for _ in range(args.repeats):
            before = scrape_encoder_metrics(server.url)
            runs.append(drive(server, bodies["all"], top, args.duration, args))
            metrics.append(metrics_delta(before, scrape_encoder_metrics(server.url)))
            logger.info("batching off, all c%d: %.1f items/s", top, runs[-1]["items_per_s"])
    finally:
        stop_server(server)
    return {"concurrency": top, "runs": runs, "metrics": metrics}


def thread_grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.thread_grid:
        return [(int(t), int(p)) for t, p in (pair.split(":") for pair in args.thread_grid.split(","))]
    cores = os.cpu_count() or 1
    torch_options = sorted({1, max(1, cores // 2), cores})
    preprocess_options = sorted({1, 2, max(2, cores // 2)})
    return [(t, p) for t in torch_options for p in preprocess_options]


def measure_thread_split(bodies: dict[str, Body], log_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Serve at each torch/preprocess thread pair and run the text and all workloads at the top concurrency."""
    workloads = [w for w in ("all", "text") if w in args.workloads] or args.workloads[:1]
    top = max(args.concurrencies)
    results = []
    for torch_threads, preprocess_threads in thread_grid(args):
        env = {"MMS_TORCH_THREADS": str(torch_threads), "MMS_PREPROCESS_THREADS": str(preprocess_threads)}
        server = start_server(env, log_dir / f"server-threads-{torch_threads}-{preprocess_threads}.log")
        try:
            warm_up(server, bodies, workloads, args)
            runs = {w: drive(server, bodies[w], top, args.duration, args) for w in workloads}
        finally:
            stop_server(server)
        logger.info(
            "threads torch=%d preprocess=%d: %s", torch_threads, preprocess_threads,
            ", ".join(f"{w} {r['items_per_s']:.1f} items/s" for w, r in runs.items()),
        )  # fmt: skip
        results.append(
            {"torch_threads": torch_threads, "preprocess_threads": preprocess_threads, "concurrency": top, "runs": runs}
        )
    return results


def measure_own_server(inputs: Path, bodies: dict[str, Body], log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Cold then warm start, the alternating repeats on the warm server, and its RSS after them.

    "Cold" is the first start of this run: the page cache may already hold the weights
    from earlier runs, so it is a first start of the process, not of the machine.
    """
    cold = start_server({}, log_dir / "server-cold.log")
    stop_server(cold)
    server = start_server({}, log_dir / "server.log")
    results: dict[str, Any] = {"start": {"cold_s": cold.ready_s, "warm_s": server.ready_s}}
    logger.info("start to ready: cold %.1f s, warm %.1f s", cold.ready_s, server.ready_s)
    try:
        assert server.pid is not None
        results["rss_ready_bytes"] = rss_bytes(server.pid)
        for workload in args.workloads:
            check_body(server.url + EMBED_PATH, bodies[workload])
        warm_up(server, bodies, args.workloads, args)
        results["repeats"] = run_repeats(server, inputs, bodies, args)
        results["rss_peak_bytes"] = rss_bytes(server.pid, "VmHWM")
        # Past the idle time after which the service hands freed heap memory back.
        time.sleep(SETTLE_S)
        results["rss_bytes"] = rss_bytes(server.pid)
        results["rss_settle_s"] = SETTLE_S
    finally:
        stop_server(server)
    return results


def measure_given_server(inputs: Path, bodies: dict[str, Body], args: argparse.Namespace) -> dict[str, Any]:
    server = Server(args.url.rstrip("/"), None, None, None)
    for workload in args.workloads:
        check_body(server.url + EMBED_PATH, bodies[workload])
    warm_up(server, bodies, args.workloads, args)
    return {"repeats": run_repeats(server, inputs, bodies, args)}


def run(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Run every measurement; server logs go to bench/results/logs-STAMP/."""
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.run " + shlex.join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "load_average_start": load_average(),
            "env": {key: value for key, value in os.environ.items() if key.startswith("MMS_")},
            "quick": args.quick,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "concurrencies": args.concurrencies,
            "workloads": args.workloads,
            "wrk_threads": args.wrk_threads,
            "url": args.url,
            "compare": {"url": args.compare_url, "path": args.compare_path, "name": args.compare_name}
            if args.compare_url
            else None,
        }
    }
    log_dir = RESULTS_DIR / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        inputs = Path(folder)
        bodies = write_inputs(inputs)
        # Waiting comes first, so both the start times and the load runs see the quiet machine.
        results["quiet"] = wait_for_quiet(args.quiet_load, args.max_wait)
        if args.compare_body:
            bodies["compare"] = Body(args.compare_body, args.compare_content_type)
            check_body(args.compare_url.rstrip("/") + args.compare_path, bodies["compare"])
        if args.url:
            results.update(measure_given_server(inputs, bodies, args))
        else:
            results.update(measure_own_server(inputs, bodies, log_dir, args))
            results["batching_off"] = measure_batching_off(bodies, log_dir, args)
            results["threads"] = [] if args.skip_threads else measure_thread_split(bodies, log_dir, args)
    results["meta"]["load_average_end"] = load_average()
    results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /readyz poll otherwise
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        stamp = time.strftime("%Y%m%dT%H%M%S") + ("-quick" if args.quick else "")
        results = run(args, stamp)
        path = RESULTS_DIR / f"{stamp}.json"
        path.write_text(json.dumps(results, indent=1))
        logger.info("results written to %s", path)
    page = report.render(results)
    # A smoke check's figures never replace the results page unless --doc is given.
    doc = args.doc or (None if results["meta"]["quick"] else DEFAULT_DOC)
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(page)
        logger.info("results page written to %s", doc)
    else:
        print(page)


if __name__ == "__main__":
    main()
