"""EfficientNet-Lite0 through timm with the converted package weights, on real photos."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import timm.data
import torch
import torchvision.transforms.functional as TF
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from app.encoders import efficientnet_lite
from app.encoders.base import Prepared
from app.encoders.image_timm import PACKAGE_WEIGHTS, TimmImageEncoder, load_model
from app.errors import PayloadTooLarge, UnsupportedMedia
from tests.support.images import resized_copy

MODEL_NAME = "tf_efficientnet_lite0"
CPU = torch.device("cpu")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = (967, 968, 504)  # espresso, cup, coffee mug


def make_encoder(**overrides: object) -> TimmImageEncoder:
    options: dict[str, object] = {
        "model_name": MODEL_NAME,
        "weights": PACKAGE_WEIGHTS,
        "device": CPU,
        "max_pixels": 40_000_000,
        "min_side": 1,
    }
    options.update(overrides)
    return TimmImageEncoder(**options)


@pytest.fixture(scope="module")
def encoder() -> TimmImageEncoder:
    return make_encoder()


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    return efficientnet_lite.load_source_state_dict(efficientnet_lite.package_weight_path())


@pytest.fixture(scope="module")
def reference_model(source_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The efficientnet-lite-pytorch model with the package's original weights."""
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(source_state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def prepared_photos(encoder: TimmImageEncoder, photo_jpegs: dict[str, bytes]) -> dict[str, Prepared]:
    return {name: encoder.preprocess(data) for name, data in photo_jpegs.items()}


# Weight conversion


def test_conversion_loads_strict(source_state: dict[str, torch.Tensor]) -> None:
    converted = efficientnet_lite.convert_state_dict(source_state)
    model = timm.create_model(MODEL_NAME, pretrained=False)
    result = model.load_state_dict(converted, strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert len(converted) == len(source_state)


def test_conversion_first_block_roles(source_state: dict[str, torch.Tensor]) -> None:
    converted = efficientnet_lite.convert_state_dict(source_state)
    # `_bn1` follows the depthwise conv in both blocks, which timm calls bn1 in the
    # first (no expansion) block and bn2 in an inverted residual block.
    assert converted["blocks.0.0.bn1.weight"] is source_state["_blocks.0._bn1.weight"]
    assert converted["blocks.1.0.bn2.weight"] is source_state["_blocks.1._bn1.weight"]
    assert converted["blocks.0.0.conv_pw.weight"] is source_state["_blocks.0._project_conv.weight"]
    assert converted["blocks.1.0.conv_pw.weight"] is source_state["_blocks.1._expand_conv.weight"]
    assert converted["blocks.6.0.conv_pwl.weight"] is source_state["_blocks.15._project_conv.weight"]


def test_conversion_rejects_unknown_layer(source_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="_se_reduce"):
        efficientnet_lite.convert_state_dict({**source_state, "_blocks.3._se_reduce.weight": torch.zeros(1)})


def test_conversion_rejects_extra_block(source_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="block 16"):
        efficientnet_lite.convert_state_dict({**source_state, "_blocks.16._bn2.weight": torch.zeros(1)})


def test_package_weight_path() -> None:
    path = efficientnet_lite.package_weight_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert path.is_file()


# Parity with the reference implementation


def test_logits_match_reference(
    encoder: TimmImageEncoder, reference_model: torch.nn.Module, prepared_photos: dict[str, Prepared]
) -> None:
    batch = [prepared_photos["cat"], prepared_photos["coffee"], Prepared(data=torch.randn(3, 224, 224), cost=0)]
    pixels = torch.stack([item.data for item in batch])
    plain_timm, _ = load_model(MODEL_NAME, PACKAGE_WEIGHTS)
    with torch.inference_mode():
        expected = reference_model(pixels)
        converted = plain_timm.eval()(pixels)
        served = encoder.classify_logits(batch)
    # Measured on 2 cores of an AMD EPYC CPU with torch 2.14.1: 0.0 for the same layout, and
    # under 1e-5 for the served model, whose channels_last layout takes other kernels.
    assert (converted - expected).abs().max().item() <= 1e-5
    assert (served - expected).abs().max().item() <= 1e-4


# Preprocessing


def test_preprocess_matches_timm_transform(encoder: TimmImageEncoder, photo_jpegs: dict[str, bytes]) -> None:
    model = timm.create_model(MODEL_NAME, pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    for name in ("cat", "rocket"):
        with Image.open(io.BytesIO(photo_jpegs[name])) as image:
            expected = transform(image.convert("RGB"))
        assert torch.equal(encoder.preprocess(photo_jpegs[name]).data, expected), name


def test_preprocess_is_resize_crop_normalise(encoder: TimmImageEncoder, photo_jpegs: dict[str, bytes]) -> None:
    with Image.open(io.BytesIO(photo_jpegs["coffee"])) as image:
        resized = TF.resize(image.convert("RGB"), 256, interpolation=TF.InterpolationMode.BICUBIC)
    expected = (TF.to_tensor(TF.center_crop(resized, [224, 224])) - 0.5) / 0.5
    prepared = encoder.preprocess(photo_jpegs["coffee"])
    assert prepared.data.shape == (3, 224, 224)
    assert torch.allclose(prepared.data, expected, atol=1e-6, rtol=0)


def test_data_config_lite0(encoder: TimmImageEncoder) -> None:
    config = encoder.data_config
    assert config["input_size"] == (3, 224, 224)
    assert config["interpolation"] == "bicubic"
    assert tuple(config["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(config["std"]) == (0.5, 0.5, 0.5)
    assert config["crop_pct"] == 0.875  # 224 / 0.875 = 256 before the crop
    assert config["crop_mode"] == "center"


def test_data_config_override_input_size(photo_jpegs: dict[str, bytes]) -> None:
    encoder = make_encoder(data_config={"input_size": (3, 256, 256)})
    prepared = encoder.preprocess(photo_jpegs["cat"])
    assert prepared.data.shape == (3, 256, 256)
    assert prepared.cost == 256 * 256


def test_data_config_unknown_key() -> None:
    with pytest.raises(ValueError, match="img_sz"):
        make_encoder(data_config={"img_sz": 300})


def test_preprocess_cost_and_info(prepared_photos: dict[str, Prepared]) -> None:
    prepared = prepared_photos["cat"]
    assert prepared.cost == 224 * 224
    assert prepared.info == {"width": 451, "height": 300}


def test_preprocess_rejects_bad_input(encoder: TimmImageEncoder, photo_jpegs: dict[str, bytes]) -> None:
    with pytest.raises(UnsupportedMedia):
        encoder.preprocess(b"just some text")
    small_limit = make_encoder(max_pixels=10_000)
    with pytest.raises(PayloadTooLarge):
        small_limit.preprocess(photo_jpegs["cat"])


# Classification and embeddings


def test_classifier_names_cat(encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared]) -> None:
    top = int(encoder.classify_logits([prepared_photos["cat"]]).argmax())
    assert top in IMAGENET_CATS


def test_classifier_names_coffee(encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared]) -> None:
    top = int(encoder.classify_logits([prepared_photos["coffee"]]).argmax())
    assert top in IMAGENET_COFFEE


def test_embedding_shape_and_norm(encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared]) -> None:
    vectors = encoder.forward(list(prepared_photos.values()))
    assert encoder.dim == 1280
    assert vectors.shape == (len(prepared_photos), 1280)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embedding_nearest_own_copy(
    encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared], photo_jpegs: dict[str, bytes]
) -> None:
    names = list(prepared_photos)
    originals = encoder.forward([prepared_photos[name] for name in names])
    copies = encoder.forward(
        [encoder.preprocess(resized_copy(photo_jpegs[name], 0.6, "JPEG", quality=70)) for name in names]
    )
    similarity = originals @ copies.T
    for row, name in enumerate(names):
        others = np.delete(similarity[row], row)
        assert similarity[row, row] > others.max(), name


def test_batch_invariance(encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared]) -> None:
    alone = encoder.forward([prepared_photos["cat"]])[0]
    batched = encoder.forward(list(prepared_photos.values()))
    position = list(prepared_photos).index("cat")
    assert np.abs(batched[position] - alone).max() <= 1e-5


# Weights and identity


def test_revision_is_weight_sha256(encoder: TimmImageEncoder) -> None:
    expected = hashlib.sha256(efficientnet_lite.package_weight_path().read_bytes()).hexdigest()[:12]
    assert encoder.revision == expected
    assert encoder.describe()["dimension"] == 1280


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_file(
    suffix: str,
    tmp_path: Path,
    encoder: TimmImageEncoder,
    source_state: dict[str, torch.Tensor],
    prepared_photos: dict[str, Prepared],
) -> None:
    converted = efficientnet_lite.convert_state_dict(source_state)
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file({key: value.contiguous() for key, value in converted.items()}, path)
    else:
        torch.save(converted, path)

    from_file = make_encoder(weights=str(path))
    batch = [prepared_photos["coffee"]]
    assert np.array_equal(from_file.forward(batch), encoder.forward(batch))
    assert from_file.revision == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        make_encoder(weights=str(tmp_path / "missing.safetensors"))


def test_package_weights_other_model() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        make_encoder(model_name="resnet18")


def test_warmup_runs(encoder: TimmImageEncoder) -> None:
    prepared = encoder.preprocess(encoder.example_payload())
    assert prepared.data.shape == (3, 224, 224)
    encoder.warmup(batch_sizes=(1, 2))


def test_half_dtype_ignored_on_cpu() -> None:
    assert make_encoder(dtype="float16").autocast_dtype is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autocast_close_to_cpu(
    dtype: str, encoder: TimmImageEncoder, prepared_photos: dict[str, Prepared]
) -> None:
    cuda_encoder = make_encoder(device=torch.device("cuda"), dtype=dtype)
    batch = list(prepared_photos.values())
    with torch.inference_mode():
        on_cuda = cuda_encoder.forward(batch)
    on_cpu = encoder.forward(batch)
    cosine = (on_cuda * on_cpu).sum(axis=1)
    assert cosine.min() > 0.999
