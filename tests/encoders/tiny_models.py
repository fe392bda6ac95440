"""Builders of tiny, randomly initialised models of every encoder family, saved like hub folders.

Each builder writes a folder that `from_pretrained` loads exactly as it loads a hub
checkpoint: config.json, model.safetensors and the family's own tokenizer, image
processor or feature extractor. Sizes are tiny (hidden 32, 2 layers) so the whole set
builds in seconds on two cores. Tokenizers are trained on CORPUS with the `tokenizers`
library. Weights are random (seeded), so tests compare the service with plain
transformers, never with meaningful embeddings.
"""

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import timm
import torch
from tokenizers import SentencePieceUnigramTokenizer, pre_tokenizers
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    BertConfig,
    BertModel,
    BertTokenizer,
    BitImageProcessor,
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizer,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizer,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A cat is sleeping on the sofa while the rain falls outside.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "She sells sea shells by the sea shore every summer.",
    "word word word word word word word word",
    "今天天气很好，我们去公园散步吧。",
    "机器学习模型把文本变成向量。",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
IMAGE_SIDE = 32


def _seed() -> None:
    torch.manual_seed(0)


def _save(model: torch.nn.Module, folder: Path, *processors: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for processor in processors:
        processor.save_pretrained(folder)
    return folder


# Text


def _byte_level_bpe(folder: Path) -> RobertaTokenizer:
    trainer = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=specials)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(folder))
    return RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def build_roberta(folder: Path) -> Path:
    """RoBERTa with a byte-level BPE tokenizer; 514 positions like roberta-base.

    The tokenizer sets no model_max_length, so the usable length (512) must come from
    the position embeddings minus the two positions before the padding index.
    """
    _seed()
    tokenizer = _byte_level_bpe(folder)
    config = RobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2, **SMALL
    )
    # The hub's roberta-base is a masked-LM checkpoint; AutoModel drops the LM head on load.
    return _save(RobertaForMaskedLM(config), folder, tokenizer)


def build_xlm_roberta(folder: Path) -> Path:
    """XLM-RoBERTa with a sentencepiece-style unigram tokenizer trained on English, Chinese and German."""
    _seed()
    trainer = SentencePieceUnigramTokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer.train_from_iterator(CORPUS * 4, vocab_size=300, special_tokens=specials, unk_token="<unk>")
    pieces = [(piece, score) for piece, score in json.loads(trainer.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizer(vocab=pieces)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=514, pad_token_id=1, **SMALL)
    return _save(XLMRobertaModel(config), folder, tokenizer)


def _word_piece_vocab() -> dict[str, int]:
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(CORPUS * 4, vocab_size=300, min_frequency=1)
    return trainer.get_vocab()


def build_bert(folder: Path) -> Path:
    _seed()
    tokenizer = BertTokenizer(vocab=_word_piece_vocab())
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **SMALL)
    return _save(BertModel(config), folder, tokenizer)


def build_sentence_transformers(folder: Path) -> Path:
    """A sentence-transformers folder (BERT, CLS pooling, Normalize) written by sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    bert = build_bert(folder.parent / f"{folder.name}-bert")
    transformer = Transformer(str(bert), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling, Normalize()]).save(str(folder))
    return folder


# Images and CLIP


def _clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE: every byte alone and as a word end, and no merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(f"{char}</w>" for char in alphabet)]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[])


def build_clip(folder: Path) -> Path:
    """Both CLIP towers with projections into one 16-dimensional space."""
    _seed()
    tokenizer = _clip_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SMALL,
    )
    vision = CLIPVisionConfig(image_size=IMAGE_SIDE, patch_size=8, projection_dim=16, **SMALL)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    return _save(CLIPModel(config), folder, tokenizer, processor)


def build_vit(folder: Path) -> Path:
    _seed()
    config = ViTConfig(image_size=IMAGE_SIDE, patch_size=8, **SMALL)
    processor = ViTImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    return _save(ViTModel(config), folder, processor)


def build_dinov2(folder: Path) -> Path:
    _seed()
    config = Dinov2Config(image_size=IMAGE_SIDE, patch_size=8, **SMALL)
    processor = BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        do_convert_rgb=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return _save(Dinov2Model(config), folder, processor)


def build_convnext(folder: Path) -> Path:
    _seed()
    config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_channels=3)
    processor = ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIDE}, crop_pct=0.875)
    return _save(ConvNextModel(config), folder, processor)


TIMM_MODEL = "test_vit"


def build_timm(folder: Path) -> Path:
    """Return a .safetensors file of timm's `test_vit`, in timm's own parameter naming."""
    _seed()
    model = timm.create_model(TIMM_MODEL, pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TIMM_MODEL}.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path


# Audio

_WAVEFORM_CONV = {"conv_dim": (16, 16, 16), "conv_kernel": (10, 4, 4), "conv_stride": (5, 4, 4)}
_WAVEFORM_COMMON = {**SMALL, **_WAVEFORM_CONV, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def build_wav2vec2(folder: Path) -> Path:
    """wav2vec 2.0 base style: group-norm feature encoder, no attention mask from the extractor."""
    _seed()
    config = Wav2Vec2Config(feat_extract_norm="group", do_stable_layer_norm=False, **_WAVEFORM_COMMON)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True, return_attention_mask=False)
    return _save(Wav2Vec2Model(config), folder, extractor)


def build_hubert(folder: Path) -> Path:
    """HuBERT large style: layer-norm feature encoder and an attention mask."""
    _seed()
    config = HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **_WAVEFORM_COMMON)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True, return_attention_mask=True)
    return _save(HubertModel(config), folder, extractor)


def build_wavlm(folder: Path) -> Path:
    _seed()
    config = WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=32, **_WAVEFORM_COMMON)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True, return_attention_mask=True)
    return _save(WavLMModel(config), folder, extractor)


def build_ast(folder: Path) -> Path:
    """Audio Spectrogram Transformer over 128 frames (1.28 s) of 32 mel bins."""
    _seed()
    config = ASTConfig(num_mel_bins=32, max_length=128, frequency_stride=10, time_stride=10, **SMALL)
    extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=128, sampling_rate=16_000)
    return _save(ASTModel(config), folder, extractor)


def build_whisper(folder: Path) -> Path:
    """A whole Whisper (encoder and decoder), saved like the hub's WhisperForConditionalGeneration."""
    _seed()
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=16,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
        begin_suppress_tokens=None,
    )
    extractor = WhisperFeatureExtractor(feature_size=16)
    return _save(WhisperForConditionalGeneration(config), folder, extractor)


def build_clap(folder: Path) -> Path:
    """A whole CLAP (unfused HTS-AT audio tower and a RoBERTa text tower) at 48 kHz, 1 s windows."""
    _seed()
    audio = ClapAudioConfig(
        spec_size=64,
        num_mel_bins=16,
        window_size=4,
        patch_size=4,
        patch_stride=(4, 4),
        patch_embeds_hidden_size=16,
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        projection_dim=16,
        projection_hidden_size=32,
        enable_fusion=False,
    )
    text = ClapTextConfig(vocab_size=64, max_position_embeddings=64, projection_dim=16, **SMALL)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    extractor = ClapFeatureExtractor(
        feature_size=16, sampling_rate=48_000, hop_length=480, max_length_s=1, truncation="rand_trunc"
    )
    return _save(ClapModel(config), folder, extractor)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "roberta": build_roberta,
    "xlm-roberta": build_xlm_roberta,
    "bert": build_bert,
    "sentence-transformers": build_sentence_transformers,
    "clip": build_clip,
    "vit": build_vit,
    "dinov2": build_dinov2,
    "convnext": build_convnext,
    "timm": build_timm,
    "wav2vec2": build_wav2vec2,
    "hubert": build_hubert,
    "wavlm": build_wavlm,
    "ast": build_ast,
    "whisper": build_whisper,
    "clap": build_clap,
}


@functools.cache
def _root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tiny-models-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tiny_model(name: str) -> Path:
    """Build family `name` once per test session, in a temporary folder removed at exit."""
    return BUILDERS[name](_root() / name)
