"""Fusion modules: shapes, masking of absent modalities, and the concat module against WeightedConcat."""

import numpy as np
import pytest
import torch

from app.fusion.concat import WeightedConcat
from app.fusion.modules import (
    FUSION_MODULES,
    ConcatFusion,
    FusionClassifier,
    LateFusion,
    build_fusion,
    masked_softmax,
)

DIMS = {"text": 384, "image": 1280, "audio": 256}
LABELS = 4


def unit_rows(count: int, dim: int, seed: int) -> torch.Tensor:
    rows = torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(rows, dim=1)


def inputs(count: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    return {m: unit_rows(count, d, seed + i) for i, (m, d) in enumerate(DIMS.items())}


def build(kind: str) -> FusionClassifier:
    torch.manual_seed(0)
    return FusionClassifier(build_fusion(kind, DIMS, LABELS), LABELS).eval()


@pytest.mark.parametrize("kind", sorted(FUSION_MODULES))
def test_fusion_output_shape(kind: str) -> None:
    model = build(kind)
    mask = torch.ones(6, 3, dtype=torch.bool)
    with torch.no_grad():
        fused = model.fusion(inputs(), mask)
        logits = model(inputs(), mask)
    assert fused.shape == (6, model.fusion.out_dim)
    assert logits.shape == (6, LABELS)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", sorted(FUSION_MODULES))
def test_fusion_ignores_absent_modality(kind: str) -> None:
    model = build(kind)
    mask = torch.tensor([[True, True, False], [True, False, True], [False, True, False]])
    zeroed = {m: e * mask[:, i : i + 1] for i, (m, e) in enumerate(inputs(3).items())}
    # The masked slots get other vectors: the output must not move.
    noisy = {m: torch.where(mask[:, i : i + 1], zeroed[m], unit_rows(3, DIMS[m], 99)) for i, m in enumerate(DIMS)}
    with torch.no_grad():
        clean_logits = model(zeroed, mask)
        noisy_logits = model(noisy, mask)
    assert torch.allclose(clean_logits, noisy_logits, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(FUSION_MODULES))
def test_fusion_reads_present_modality(kind: str) -> None:
    model = build(kind)
    mask = torch.ones(2, 3, dtype=torch.bool)
    first = inputs(2, seed=0)
    changed = {**first, "audio": unit_rows(2, DIMS["audio"], 42)}
    with torch.no_grad():
        assert not torch.allclose(model(first, mask), model(changed, mask))


def test_concat_matches_weighted_concat() -> None:
    weights = {"text": 2.0, "image": 1.0, "audio": 0.5}
    module = ConcatFusion(DIMS, weights)
    reference = WeightedConcat(DIMS, weights)
    vectors = inputs(1)
    for present in (["text", "image", "audio"], ["text", "audio"], ["image"]):
        mask = torch.tensor([[m in present for m in DIMS]])
        masked = {m: vectors[m] * (m in present) for m in DIMS}
        expected = reference.fuse({m: vectors[m][0].numpy() for m in present}, reference.resolve_weights(None, present))
        got = module(masked, mask)[0].numpy()
        assert np.allclose(got, expected, atol=1e-6)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5


@pytest.mark.parametrize("kind", ["weighted-average", "late", "weighted-concat"])
def test_static_weights_cover_present(kind: str) -> None:
    fusion = build(kind).fusion
    mask = torch.tensor([[True, False, True], [False, True, False]])
    weights = fusion.static_weights(mask)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    assert (weights[~mask] == 0).all()


def test_late_fusion_head_is_identity() -> None:
    model = build(LateFusion.kind)
    assert isinstance(model.head, torch.nn.Identity)
    assert model.fusion.out_dim == LABELS


def test_masked_softmax_zeroes_absent() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0]])
    result = masked_softmax(logits, torch.tensor([[True, False, True]]))
    assert result[0, 1] == 0
    assert torch.isclose(result.sum(), torch.tensor(1.0))


def test_build_fusion_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown fusion type 'sum'"):
        build_fusion("sum", DIMS, LABELS)
