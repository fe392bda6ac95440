"""The bare pipeline: preprocessing and forward passes in one process, with no HTTP and no engine.

Loads the pipeline with the service's own loader and encoder classes, under the same
MMS_* settings (device, torch threads), then times `preprocess` of B payloads followed
by one `forward` of the batch, under torch.inference_mode as the device worker runs it.
Preprocessing runs on one thread here, where the service spreads it over its pool.

    python -m bench.bare --inputs DIR [--modalities text,image] [--batch-sizes 1,8,32]

prints one JSON object on stdout: per modality and batch size, the median seconds per
batch, items/s and the preprocess and forward shares.
"""

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.encoders.base import Encoder
from app.encoders.registry import ENCODER_BUILDERS
from app.engine.worker import pick_device
from app.pipeline import load_pipeline
from app.settings import Settings
from bench.inputs import read_payloads

logger = logging.getLogger("bench.bare")

WARMUP_ITERATIONS = 2
MIN_ITERATIONS = 3


def time_batch(encoder: Encoder, payload: Any, batch_size: int) -> tuple[float, float]:
    """Return the seconds spent preprocessing `batch_size` copies of `payload` and in one forward pass."""
    started = time.perf_counter()
    prepared = [encoder.preprocess(payload) for _ in range(batch_size)]
    preprocessed = time.perf_counter()
    with torch.inference_mode():
        encoder.forward(prepared)  # returns numpy rows, so a CUDA forward has finished here
    return preprocessed - started, time.perf_counter() - preprocessed


def measure(encoder: Encoder, payload: Any, batch_size: int, min_time_s: float) -> dict[str, float]:
    """Time whole batches until `min_time_s` has passed (at least 3); return medians and items/s."""
    for _ in range(WARMUP_ITERATIONS):
        time_batch(encoder, payload, batch_size)
    preprocess_s: list[float] = []
    forward_s: list[float] = []
    started = time.perf_counter()
    while len(forward_s) < MIN_ITERATIONS or time.perf_counter() - started < min_time_s:
        pre, fwd = time_batch(encoder, payload, batch_size)
        preprocess_s.append(pre)
        forward_s.append(fwd)
    totals = [pre + fwd for pre, fwd in zip(preprocess_s, forward_s, strict=True)]
    batch_s = statistics.median(totals)
    return {
        "batch_size": batch_size,
        "iterations": len(totals),
        "batch_s": batch_s,
        # The fastest batch shows what the hardware can do when no other process interferes.
        "batch_s_min": min(totals),
        "item_ms": 1000 * batch_s / batch_size,
        "items_per_s": batch_size / batch_s,
        "preprocess_s": statistics.median(preprocess_s),
        "forward_s": statistics.median(forward_s),
    }


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the rows of one modality with its best items/s, the batch size reaching it, and the batch-1 time."""
    best = max(rows, key=lambda row: row["items_per_s"])
    batch_one = next((row for row in rows if row["batch_size"] == 1), None)
    return {
        "batches": rows,
        "best_batch_size": best["batch_size"],
        "best_items_per_s": best["items_per_s"],
        "batch1_ms": batch_one["batch_s"] * 1000 if batch_one else None,
    }


def combine_regimes(regimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge bare results taken under several OpenMP wait policies, keeping the faster row per batch size.

    Each kept row names its regime. The merged result is the strongest reference the
    machine produced, so no ratio against it flatters the service.
    """
    first = next(iter(regimes.values()))
    modalities: dict[str, Any] = {}
    for modality in first["modalities"]:
        rows = []
        for index in range(len(first["modalities"][modality]["batches"])):
            candidates = [
                {**result["modalities"][modality]["batches"][index], "regime": name} for name, result in regimes.items()
            ]
            rows.append(max(candidates, key=lambda row: row["items_per_s"]))
        modalities[modality] = summarize_rows(rows)
    foreign = [r["foreign_cores"] for r in regimes.values() if r.get("foreign_cores") is not None]
    return {
        "device": first["device"],
        "torch_threads": first["torch_threads"],
        "modalities": modalities,
        "foreign_cores": sum(foreign) / len(foreign) if foreign else None,
    }


def run(inputs: Path, modalities: list[str], batch_sizes: list[int], min_time_s: float) -> dict[str, Any]:
    settings = Settings()
    device = pick_device(settings.device)
    # Same rule as the engine: torch's own default unless MMS_TORCH_THREADS sets it.
    if device.type == "cpu" and settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    load_started = time.perf_counter()
    pipeline = load_pipeline(settings.pipelines[0], settings, device, ENCODER_BUILDERS)
    load_s = time.perf_counter() - load_started
    payloads = read_payloads(inputs)

    results: dict[str, Any] = {}
    for modality in modalities:
        encoder = pipeline.encoders[modality]
        encoder.warmup()
        rows = [measure(encoder, payloads[modality], size, min_time_s) for size in batch_sizes]
        results[modality] = summarize_rows(rows)
        logger.info(
            "%s: best %.1f items/s at batch %d",
            modality,
            results[modality]["best_items_per_s"],
            results[modality]["best_batch_size"],
        )
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_s": load_s,
        "modalities": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the bare pipeline per modality, with no HTTP.")
    parser.add_argument("--inputs", type=Path, required=True, help="Folder written by bench.inputs.")
    parser.add_argument("--modalities", default="text,image,audio", help="Comma-separated modalities.")
    parser.add_argument("--batch-sizes", default="1,8,32", help="Comma-separated batch sizes.")
    parser.add_argument("--min-time", type=float, default=2.0, help="Seconds of timed batches per batch size.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    result = run(
        args.inputs,
        [m for m in args.modalities.split(",") if m],
        [int(size) for size in args.batch_sizes.split(",")],
        args.min_time,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
