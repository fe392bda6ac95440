"""Trained heads on disk: save and load, the checks at load time, and the engine-facing fusion."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from app.errors import InvalidInput
from app.fusion.heads import LinearHead, load_head
from app.fusion.modules import FusionClassifier, build_fusion
from app.fusion.trained import HeadConfig, TrainedFusion, TrainedHead, save_head
from app.pipeline import FusionSpec

DIMS = {"text": 384, "image": 1280, "audio": 256}
REVISIONS = {"text": "t1", "image": "i1", "audio": "a1"}
LABELS = ["cat", "dog", "fox"]


def sample(seed: int, modalities: tuple[str, ...] = ("text", "image", "audio")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = {m: rng.standard_normal(DIMS[m]).astype(np.float32) for m in modalities}
    return {m: v / np.linalg.norm(v) for m, v in vectors.items()}


def write_head(folder: Path, kind: str = "attention") -> FusionClassifier:
    torch.manual_seed(1)
    model = FusionClassifier(build_fusion(kind, DIMS, len(LABELS)), len(LABELS)).eval()
    encoders = {m: {"model": f"{m}-model", "revision": REVISIONS[m]} for m in DIMS}
    save_head(folder, model, LABELS, HeadConfig(kind, model.fusion.options(), DIMS, encoders))
    return model


@pytest.mark.parametrize("kind", ["attention", "gated", "late", "weighted-average", "weighted-concat"])
def test_head_round_trip(tmp_path: Path, kind: str) -> None:
    model = write_head(tmp_path / "head", kind)
    head = load_head(tmp_path, DIMS, REVISIONS)
    assert isinstance(head, TrainedHead)
    assert head.labels == LABELS
    rows = [sample(0), sample(1, ("text",)), sample(2, ("image", "audio"))]
    expected = [model(*_one(row)).detach().numpy()[0] for row in rows]
    assert np.allclose(head.logits(rows), np.stack(expected), atol=1e-6)


def _one(row: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    embeddings = {m: torch.from_numpy(row[m])[None] if m in row else torch.zeros(1, d) for m, d in DIMS.items()}
    return embeddings, torch.tensor([[m in row for m in DIMS]])


def test_head_probabilities_sum_to_one(tmp_path: Path) -> None:
    write_head(tmp_path / "head")
    head = load_head(tmp_path, DIMS, REVISIONS)
    probabilities = head.probabilities(np.zeros(1), sample(3))
    assert probabilities.shape == (3,)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-6


def test_head_rejects_other_dims(tmp_path: Path) -> None:
    write_head(tmp_path / "head")
    with pytest.raises(ValueError, match="768"):
        load_head(tmp_path, {**DIMS, "text": 768}, REVISIONS)


def test_head_rejects_sample_without_its_modalities(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FusionClassifier(build_fusion("gated", {"text": 384}, 3), 3)
    save_head(tmp_path / "head", model, LABELS, HeadConfig("gated", model.fusion.options(), {"text": 384}, {}))
    head = load_head(tmp_path, DIMS, REVISIONS)
    with pytest.raises(InvalidInput) as caught:
        head.probabilities(np.zeros(1), sample(0, ("image",)))
    assert caught.value.field == "sample"
    assert "text" in caught.value.detail


def test_head_without_config_is_linear(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    (tmp_path / "head").mkdir()
    save_file({"weight": np.zeros((3, 1920), np.float32), "bias": np.zeros(3, np.float32)}, tmp_path / "head/head.safetensors")
    (tmp_path / "head/labels.json").write_text(json.dumps(LABELS))
    assert isinstance(load_head(tmp_path, DIMS, REVISIONS), LinearHead)


def test_trained_fusion_rejects_weights(tmp_path: Path) -> None:
    write_head(tmp_path / "head")
    fusion = TrainedFusion(load_head(tmp_path, DIMS, REVISIONS))
    with pytest.raises(InvalidInput) as caught:
        fusion.resolve_weights({"text": 2.0}, ["text"])
    assert caught.value.field == "weights"
    assert "attention" in caught.value.detail


def test_trained_fusion_vector_is_unit(tmp_path: Path) -> None:
    write_head(tmp_path / "head", "weighted-average")
    fusion = TrainedFusion(load_head(tmp_path, DIMS, REVISIONS))
    weights = fusion.resolve_weights(None, ["text", "audio"])
    vector = fusion.fuse(sample(4, ("text", "audio")), weights)
    assert sorted(weights) == ["audio", "text"]
    assert abs(sum(weights.values()) - 1.0) < 1e-6
    assert vector.shape == (256,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_trained_fusion_identity_follows_weights(tmp_path: Path) -> None:
    write_head(tmp_path / "a" / "head", "gated")
    first = TrainedFusion(load_head(tmp_path / "a", DIMS, REVISIONS)).identity
    write_head(tmp_path / "b" / "head", "attention")
    second = TrainedFusion(load_head(tmp_path / "b", DIMS, REVISIONS)).identity
    assert first.startswith("gated:")
    assert second.startswith("attention:")
    assert first.split(":")[1] != second.split(":")[1]


def test_fusion_spec_trained_takes_no_weights() -> None:
    with pytest.raises(ValidationError, match="learns its modality weights"):
        FusionSpec(type="trained", weights={"text": 1.0})
