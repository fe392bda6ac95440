"""Train every fusion strategy and every single-modality head on the demo, and print the comparison table.

Usage: python -m demo.compare [--manifest .cache/demo/manifest.jsonl] [--out .cache/demo-runs] [--seeds 0 1 2]

Each run is `mms train` with its defaults (the function behind it, so the encoders load
once). Scores are on the demo's test split, averaged over the seeds. The table is the
one in docs/training.md; the per-seed scores go to OUT/comparison.json.
"""

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.fusion.modules import FUSION_MODULES
from app.settings import PROJECT_ROOT
from app.training.embeddings import default_cache_dir
from app.training.trainer import TrainSettings
from app.training.workflow import EncodeOptions, TrainRequest, load_encoders, train

STRATEGIES = ("weighted-concat", "weighted-average", "late", "gated", "attention")
MODALITIES = ("text", "image", "audio")
COLUMNS = ("complete", "without text", "without image", "without audio")


def runs() -> list[tuple[str, str, list[str] | None]]:
    """Return (row name, fusion, modalities) of every run: the strategies, then one modality each."""
    rows: list[tuple[str, str, list[str] | None]] = [(kind, kind, None) for kind in STRATEGIES]
    rows += [(f"{modality} only (linear head)", "weighted-concat", [modality]) for modality in MODALITIES]
    return rows


def compare(manifest: Path, out: Path, seeds: Sequence[int], cache_dir: Path) -> dict[str, Any]:
    pipeline_dir = PROJECT_ROOT / "models" / "default"
    pipeline = load_encoders(pipeline_dir, "cpu")
    encode = EncodeOptions(cache_dir=cache_dir, device="cpu", progress=False)
    scores: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name, fusion, modalities in runs():
        for seed in seeds:
            request = TrainRequest(
                manifest=manifest,
                pipeline=pipeline_dir,
                out=out / f"{fusion}-{'-'.join(modalities or ['all'])}-seed{seed}",
                settings=dataclasses.replace(TrainSettings(), fusion=fusion, seed=seed),
                encode=encode,
                modalities=modalities,
            )
            metrics = train(request, pipeline=pipeline)
            for condition, result in metrics["test"].items():
                entry = {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}
                scores.setdefault(name, {}).setdefault(condition, []).append(entry)
    (out / "comparison.json").write_text(json.dumps({"seeds": list(seeds), "scores": scores}, indent=2) + "\n")
    return scores


def format_table(scores: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """Return a markdown table: one row per run, accuracy / macro-F1 per condition (seed means)."""
    header = "| head | " + " | ".join(f"{c}: acc / F1" for c in COLUMNS) + " |"
    lines = [header, "| --- |" + " ---: |" * len(COLUMNS)]
    for name, conditions in scores.items():
        cells = []
        for column in COLUMNS:
            runs_here = conditions.get(column)
            if not runs_here:
                cells.append("n/a")
                continue
            accuracy = statistics.mean(r["accuracy"] for r in runs_here)
            macro_f1 = statistics.mean(r["macro_f1"] for r in runs_here)
            cells.append(f"{accuracy:.3f} / {macro_f1:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path(".cache/demo/manifest.jsonl"), help="demo manifest")
    parser.add_argument("--out", type=Path, default=Path(".cache/demo-runs"), help="folder of the trained runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="embedding cache folder")
    args = parser.parse_args(argv)
    assert set(STRATEGIES) == set(FUSION_MODULES), "every fusion strategy has a row"
    scores = compare(args.manifest, args.out, args.seeds, args.cache_dir)
    print(format_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
