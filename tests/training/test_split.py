"""Group-aware seeded split: samples that share a sentence, photo or recording stay in one split."""

from pathlib import Path

import pytest

from app.training.manifest import Manifest, ManifestError, Row
from app.training.split import SplitFractions, find_groups, split_rows


def make_rows(count: int) -> tuple[list[Row], dict[Path, str]]:
    """Rows whose photos repeat every 10 samples and whose recordings repeat every 7 (by content)."""
    rows, hashes = [], {}
    for i in range(count):
        image, audio = Path(f"/data/img{i}.jpg"), Path(f"/data/rec{i}.wav")
        hashes[image], hashes[audio] = f"image-hash-{i}", f"audio-hash-{i % 7 if i < 14 else i}"
        rows.append(Row(line=i + 1, id=str(i), label=("a", "b")[i % 2], text=f"Sentence number {i}.",
                        image=image, audio=audio, image_source=f"photo-{i % 10 if i < 20 else i}"))
    return rows, hashes


def test_groups_follow_shared_sources() -> None:
    rows, hashes = make_rows(30)
    groups = {frozenset(g) for g in find_groups(rows, hashes)}
    # Photos link i and i + 10 below 20, recordings link i and i + 7 below 14; chains of
    # both give three groups, and rows 20-29 share nothing.
    assert frozenset({0, 3, 6, 7, 10, 13, 16, 17}) in groups
    assert frozenset({1, 4, 8, 11, 14, 18}) in groups
    assert frozenset({2, 5, 9, 12, 15, 19}) in groups
    assert len(groups) == 3 + 10


def test_groups_join_same_text_ignoring_case() -> None:
    rows = [Row(line=1, id="1", label="a", text="A cat  sleeps."), Row(line=2, id="2", label="b", text="a cat sleeps.")]
    assert find_groups(rows, {}) == [[0, 1]]


def test_split_keeps_groups_whole() -> None:
    rows, hashes = make_rows(80)
    splits = split_rows(Manifest(Path("m.jsonl"), rows, "label"), hashes, seed=3, fractions=SplitFractions())
    where = {row.line: name for name, part in splits.items() for row in part}
    assert len({where[i + 1] for i in (0, 3, 6, 7, 10, 13, 16, 17)}) == 1
    assert len({where[i + 1] for i in (1, 4, 8, 11, 14, 18)}) == 1
    assert sum(len(part) for part in splits.values()) == 80


def test_split_same_seed_same_split() -> None:
    rows, hashes = make_rows(80)
    manifest = Manifest(Path("m.jsonl"), rows, "label")
    first = split_rows(manifest, hashes, seed=7, fractions=SplitFractions())
    again = split_rows(manifest, hashes, seed=7, fractions=SplitFractions())
    other = split_rows(manifest, hashes, seed=8, fractions=SplitFractions())
    assert {k: [r.line for r in v] for k, v in first.items()} == {k: [r.line for r in v] for k, v in again.items()}
    assert {k: [r.line for r in v] for k, v in first.items()} != {k: [r.line for r in v] for k, v in other.items()}


def test_split_sizes_near_fractions() -> None:
    rows, hashes = make_rows(120)
    splits = split_rows(Manifest(Path("m.jsonl"), rows, "label"), hashes, seed=0, fractions=SplitFractions(0.2, 0.2))
    sizes = {name: len(part) for name, part in splits.items()}
    assert 60 <= sizes["train"] <= 84
    assert 16 <= sizes["validation"] <= 32
    assert 16 <= sizes["test"] <= 32


def test_split_too_few_groups_is_empty_split() -> None:
    rows, hashes = make_rows(14)
    # One photo for all: a single group cannot fill three splits.
    rows = [Row(**{**{f: getattr(r, f) for f in Row.__slots__}, "image_source": "photo"}) for r in rows]
    with pytest.raises(ManifestError) as caught:
        split_rows(Manifest(Path("m.jsonl"), rows, "label"), hashes, seed=0, fractions=SplitFractions())
    assert "is empty: the 14 samples form only 1 independent groups" in str(caught.value)
