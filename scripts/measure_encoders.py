"""Measure memory and speed of the hub pipelines' encoders with random weights of the real sizes.

No hub is reachable here, so each model is built from a hand-written config of the
published architecture (roberta-base, xlm-roberta-base, clip-vit-base-patch32,
wav2vec2-base), with random weights, and saved as a local folder. Tokenizers are small
stand-ins trained on a few sentences, so inputs are sized by token count, which is what
the cost depends on. Whisper tiny.en is measured with its real weights, converted by
scripts/convert_whisper_ct2.py. Every model loads through the service's registry and is
timed through `Encoder.forward`, each in a fresh process so memory figures do not mix.

    python -m scripts.measure_encoders            # all models, CPU; from the repository root
    python -m scripts.measure_encoders --only clip-vision --device cuda
"""

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CORPUS = ["word " * 20, "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore."]
MODELS = ("roberta-base", "xlm-roberta-base", "clip-text", "clip-vision", "wav2vec2-base", "whisper-tiny-en")


def build_folder(name: str, root: Path) -> tuple[str, str, dict[str, object]]:
    """Write model `name` with random weights; return (encoder type, source, options)."""
    import torch
    import transformers as tf
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    torch.manual_seed(0)
    folder = root / name
    folder.mkdir(parents=True)
    base = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    if name == "roberta-base":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(folder))
        tokenizer = tf.RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
        config = tf.RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, **base)
        tf.RobertaModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return "hf-text", str(folder), {"pooling": "mean"}
    if name == "xlm-roberta-base":
        unigram = SentencePieceUnigramTokenizer()
        unigram.train_from_iterator(CORPUS, vocab_size=60, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        pieces = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
        config = tf.XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, **base)
        tf.XLMRobertaModel(config).save_pretrained(folder)
        tf.XLMRobertaTokenizer(vocab=pieces).save_pretrained(folder)
        return "hf-text", str(folder), {"pooling": "mean"}
    if name in ("clip-text", "clip-vision"):
        text = tf.CLIPTextConfig(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
            max_position_embeddings=77, projection_dim=512, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
        vision = tf.CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=512, **base)
        config = tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=512)
        tf.CLIPModel(config).save_pretrained(folder)
        alphabet = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
        vocab = {token: i for i, token in enumerate(["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)])}
        tf.CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
        tf.CLIPImageProcessor().save_pretrained(folder)
        return ("hf-clip-text" if name == "clip-text" else "hf-image"), str(folder), {}
    if name == "wav2vec2-base":
        tf.Wav2Vec2Model(tf.Wav2Vec2Config()).save_pretrained(folder)
        tf.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
        return "hf-audio", str(folder), {"window_seconds": 10}
    if name == "whisper-tiny-en":
        from scripts.convert_whisper_ct2 import convert, package_folder

        convert(package_folder(), folder)
        return "hf-audio", str(folder), {"max_windows": 2}
    raise ValueError(f"unknown model {name}; choose from {MODELS}")


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def speech(seconds: float, rate: int = 16_000) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(0)
    times = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * 180 * times) + 0.02 * rng.standard_normal(times.size)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def workloads(kind: str) -> dict[str, list[object]]:
    if kind in ("hf-text", "hf-clip-text"):
        sentence = " ".join(["word"] * 14)
        if kind == "hf-clip-text":
            return {"1 x 16 tokens": [sentence[:14]], "32 x 16 tokens": [sentence[:14]] * 32}
        return {"1 x 16 tokens": [sentence], "32 x 16 tokens": [sentence] * 32, "1 x 512 tokens": [" ".join(["word"] * 600)]}
    if kind == "hf-image":
        from app.encoders.image_timm import example_jpeg

        return {"1 image": [example_jpeg()], "8 images": [example_jpeg()] * 8}
    return {"1 x 5 s": [speech(5)], "4 x 5 s": [speech(5)] * 4, "1 x 20 s": [speech(20)]}


def measure(name: str, root: Path, device_name: str, repeats: int) -> dict[str, object]:
    """Load the encoder that `build_folder` wrote under `root` and time it; run in a fresh process."""
    import torch

    # Imported before the first memory reading, so the figures count the model, not the libraries.
    import app.encoders.audio_hf
    import app.encoders.image_hf
    import app.encoders.text_hf  # noqa: F401
    from app.encoders.registry import ENCODER_BUILDERS
    from app.pipeline import BuildContext, EncoderSpec
    from app.settings import Settings

    kind, source, options = json.loads((root / f"{name}.json").read_text())
    device = torch.device(device_name)
    before = rss_mib()
    started = time.perf_counter()
    spec = EncoderSpec(type=kind, model=name, source=source, **options)
    encoder = ENCODER_BUILDERS[kind](spec, BuildContext(Path(root), device, Settings()))
    load_s = time.perf_counter() - started
    loaded = rss_mib()
    parameters = sum(p.numel() for p in encoder.model.parameters())
    timings = {}
    for label, payloads in workloads(kind).items():
        prepared = [encoder.preprocess(payload) for payload in payloads]
        wall, cpu = [], []
        with torch.inference_mode():
            encoder.forward(prepared)
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                tick, cpu_tick = time.perf_counter(), time.process_time()
                encoder.forward(prepared)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall.append(time.perf_counter() - tick)
                cpu.append(time.process_time() - cpu_tick)
        # CPU time of this process varies less than wall time when other work shares the cores.
        timings[label] = {"wall_ms": round(1000 * statistics.median(wall)), "cpu_ms": round(1000 * statistics.median(cpu))}
    return {
        "model": name,
        "type": kind,
        "parameters_m": round(parameters / 1e6, 1),
        "weights_fp32_mib": round(parameters * 4 / 2**20),
        "load_s": round(load_s, 1),
        # transformers maps safetensors files, so weights count in RSS once a forward
        # pass has touched them: the figure after the passes is the steady state.
        "rss_after_load_mib": round(loaded - before),
        "rss_after_forward_mib": round(rss_mib() - before),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "forward_median": timings,
        "load_average": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "device": device_name,
    }


def compare_whisper_backends(repeats: int) -> dict[str, object]:
    """Time Whisper tiny.en's encoder in transformers (converted weights) and in CTranslate2.

    Both run in float32 on the CPU over the same log-mel windows of 30 s. CTranslate2
    also runs int8 weights, its fastest CPU mode. Needs `pip install ctranslate2==4.8.5`.
    """
    import ctranslate2
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    from scripts.convert_whisper_ct2 import convert, package_folder

    results: dict[str, object] = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as root:
        folder = convert(package_folder(), Path(root))
        encoder = WhisperModel.from_pretrained(folder).get_encoder().eval()
        extractor = WhisperFeatureExtractor.from_pretrained(folder)
    wave = np.sin(np.arange(16_000 * 5) / 16_000 * 2 * np.pi * 180).astype(np.float32)
    one = extractor(wave, sampling_rate=16_000, return_tensors="np")["input_features"]
    backends = {
        "transformers float32": lambda batch: encoder(torch.from_numpy(batch)),
        **{
            f"ctranslate2 {compute}": (
                lambda batch, model=ctranslate2.models.Whisper(
                    str(package_folder()), device="cpu", compute_type=compute, intra_threads=torch.get_num_threads()
                ): model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)
            )
            for compute in ("float32", "int8")
        },
    }
    for windows in (1, 4):
        batch = np.ascontiguousarray(np.repeat(one, windows, axis=0))
        for name, run in backends.items():
            wall, cpu = [], []
            with torch.inference_mode():
                run(batch)
                for _ in range(repeats):
                    tick, cpu_tick = time.perf_counter(), time.process_time()
                    run(batch)
                    wall.append(time.perf_counter() - tick)
                    cpu.append(time.process_time() - cpu_tick)
            results[f"{name}, {windows} x 30 s"] = {
                "wall_ms": round(1000 * statistics.median(wall)),
                "cpu_ms": round(1000 * statistics.median(cpu)),
            }
    results["load_average"] = os.getloadavg()[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MODELS, help="Measure one model.")
    parser.add_argument("--device", default="cpu", help="Device to run on: cpu or cuda[:N].")
    parser.add_argument("--repeats", type=int, default=3, help="Timed forward passes per workload (median).")
    parser.add_argument(
        "--whisper-backends", action="store_true", help="Compare Whisper in transformers and CTranslate2 instead."
    )
    parser.add_argument("--step", choices=("build", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.whisper_backends:
        print(json.dumps(compare_whisper_backends(args.repeats)))
        return
    if args.step == "build":
        (args.root / f"{args.only}.json").write_text(json.dumps(build_folder(args.only, args.root)))
        return
    if args.step == "measure":
        print(json.dumps(measure(args.only, args.root, args.device, args.repeats)))
        return

    # Building and measuring run in separate processes, so the memory that building
    # a model takes does not hide in the measured process's figures.
    common = [sys.executable, "-m", "scripts.measure_encoders", "--device", args.device, "--repeats", str(args.repeats)]
    for name in [args.only] if args.only else MODELS:
        with tempfile.TemporaryDirectory() as root:
            subprocess.run([*common, "--only", name, "--step", "build", "--root", root], capture_output=True, check=True)
            result = subprocess.run(
                [*common, "--only", name, "--step", "measure", "--root", root], capture_output=True, text=True, check=True
            )
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
