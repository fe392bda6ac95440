"""Group-aware train/validation/test split: samples that share a source stay in one split.

Two samples share a source when they have the same text (compared case- and
space-insensitively), the same image source or the same audio source. A file's source
is its `image_source` or `audio_source` column, or else the file's content, so copies
of one file count as one source. Sources link samples into groups (connected
components), and whole groups are dealt to the splits.
"""

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.training.manifest import SPLITS, Manifest, ManifestError, Row


@dataclass(frozen=True, slots=True)
class SplitFractions:
    validation: float = 0.15
    test: float = 0.15

    def targets(self) -> dict[str, float]:
        return {"train": 1.0 - self.validation - self.test, "validation": self.validation, "test": self.test}


def source_keys(row: Row, file_hashes: Mapping[Path, str]) -> list[tuple[str, str]]:
    """Return the (kind, id) pairs of the sources a sample is made from."""
    keys = []
    if row.text is not None:
        keys.append(("sentence", " ".join(row.text.casefold().split())))
    if row.image is not None:
        keys.append(("image", row.image_source or file_hashes[row.image]))
    if row.audio is not None:
        keys.append(("audio", row.audio_source or file_hashes[row.audio]))
    return keys


def find_groups(rows: Sequence[Row], file_hashes: Mapping[Path, str]) -> list[list[int]]:
    """Return the groups of row indices linked by a shared source, in order of first appearance."""
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        for key in source_keys(row, file_hashes):
            if key in first_seen:
                parent[root(i)] = root(first_seen[key])
            else:
                first_seen[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    return list(groups.values())


def split_rows(
    manifest: Manifest, file_hashes: Mapping[Path, str], seed: int, fractions: SplitFractions
) -> dict[str, list[Row]]:
    """Split the manifest's rows, by its `split` column when it has one, else by seeded groups.

    Raise ManifestError when a split is empty, when a source crosses splits, or when a
    validation or test label never occurs in train.
    """
    rows = manifest.rows
    if rows[0].split is not None:
        splits = {name: [row for row in rows if row.split == name] for name in SPLITS}
    else:
        splits = _deal_groups(rows, find_groups(rows, file_hashes), seed, fractions)
    problems = _empty_splits(splits, rows, file_hashes) + _crossing_sources(splits, file_hashes) + _unseen_labels(splits)
    if problems:
        raise ManifestError(manifest.path, problems)
    return splits


def _deal_groups(
    rows: Sequence[Row], groups: list[list[int]], seed: int, fractions: SplitFractions
) -> dict[str, list[Row]]:
    """Deal groups, largest first and ties in seeded random order, to the split furthest below its share."""
    order = list(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=len, reverse=True)
    targets = {name: share * len(rows) for name, share in fractions.targets().items()}
    counts = dict.fromkeys(SPLITS, 0)
    assigned: dict[str, list[int]] = {name: [] for name in SPLITS}
    for group in order:
        name = max(SPLITS, key=lambda s: (targets[s] - counts[s]) / targets[s] if targets[s] > 0 else float("-inf"))
        assigned[name].extend(group)
        counts[name] += len(group)
    return {name: [rows[i] for i in sorted(indices)] for name, indices in assigned.items()}


def _empty_splits(splits: Mapping[str, list[Row]], rows: Sequence[Row], file_hashes: Mapping[Path, str]) -> list[str]:
    empty = [name for name in SPLITS if not splits[name]]
    if not empty:
        return []
    if rows[0].split is not None:
        return [f"split '{name}' is empty: no row has split '{name}'" for name in empty]
    group_count = len(find_groups(rows, file_hashes))
    return [
        f"split '{name}' is empty: the {len(rows)} samples form only {group_count} independent groups "
        "(samples sharing a text, an image source or an audio source stay together); add samples from "
        "other sources or change --val-fraction and --test-fraction"
        for name in empty
    ]


def _crossing_sources(splits: Mapping[str, list[Row]], file_hashes: Mapping[Path, str]) -> list[str]:
    owner: dict[tuple[str, str], tuple[str, Row]] = {}
    problems = []
    for name in SPLITS:
        for row in splits[name]:
            for key in source_keys(row, file_hashes):
                first = owner.setdefault(key, (name, row))
                if first[0] != name:
                    problems.append(
                        f"line {row.line}: its {key[0]} source is also in line {first[1].line}, but line "
                        f"{row.line} is in {name} and line {first[1].line} in {first[0]}; a source must stay in one split"
                    )
                    break
    return problems


def _unseen_labels(splits: Mapping[str, list[Row]]) -> list[str]:
    seen = {row.label for row in splits["train"]}
    problems = []
    for name in ("validation", "test"):
        for row in splits[name]:
            if row.label not in seen:
                problems.append(f"line {row.line}: label '{row.label}' is in {name} but never in train")
                seen.add(row.label)
    if len({row.label for row in splits["train"]}) < 2:
        problems.append("train has fewer than 2 distinct labels; a classifier needs at least 2")
    return problems
