"""Text encoders loaded with transformers from a folder, an installed package or the hub.

Families: BERT, RoBERTa and XLM-RoBERTa (AutoModel with CLS or attention-masked mean
pooling), sentence-transformers folders (their own pooling config), and the CLIP text
tower (the projected text embedding, in the same space as CLIP's image embedding).
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.encoders.base import Prepared
from app.encoders.hf_common import (
    HFEncoder,
    autocast_dtype,
    check_missing_weights,
    check_weights_present,
    load_pretrained,
    offline_mode,
    weights_revision,
)
from app.errors import InvalidInput, PayloadTooLarge

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "projection")
LONG_TEXT_MODES = ("truncate", "window")
DEFAULT_MAX_WINDOWS = 16
# Maximum text length, in characters, tokenized on the event loop. MiniLM's fast
# tokenizer took 0.06 ms for 107 characters and 0.17 ms for 500 on one core of a 2-core
# machine, about what a hand-off to a pool thread costs, and 1.2 ms for 2,000.
INLINE_MAX_CHARS = 500
# RoBERTa-family position ids start after the padding index, so the first
# pad_token_id + 1 positions of the table never hold a token.
_OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert")
_CLIP_MODEL_TYPES = ("clip", "clip_text_model")
# sentence-transformers modules that this encoder reproduces; any other (Dense, ...) is rejected.
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(slots=True)
class TokenizedText:
    windows: list[list[int]]
    """Token ids of each window, special tokens included; one window unless long_text is 'window'."""
    weights: list[int]
    """Content tokens per window, the weight of its embedding in the average."""

    @property
    def input_ids(self) -> list[int]:
        """The first window's ids: the whole (possibly truncated) input when there is one window."""
        return self.windows[0]


@dataclass(frozen=True, slots=True)
class FolderLayout:
    """Location of the transformer inside a folder, and the settings a sentence-transformers folder declares."""

    model_folder: str
    pooling: str | None = None
    max_tokens: int | None = None


def read_folder_pooling(folder: Path) -> str | None:
    """Return the pooling mode that a sentence-transformers `1_Pooling` folder declares, if any."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    # sentence-transformers 6 writes "pooling_mode"; older releases write one boolean per mode.
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [key.removeprefix("pooling_mode_") for key, on in config.items() if key.startswith("pooling_mode_") and on]
    modes = [modes] if isinstance(modes, str) else list(modes)
    names = {"cls_token": "cls", "mean_tokens": "mean", "cls": "cls", "mean": "mean"}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(f"{config_path} declares pooling {modes}; this encoder supports one of cls or mean")
    return names[modes[0]]


def read_folder_layout(folder: Path) -> FolderLayout:
    """Read a sentence-transformers `modules.json`, or treat the folder as a plain transformers one."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return FolderLayout(model_folder=str(folder))
    modules = json.loads(modules_path.read_text())
    kinds = {module["type"].rsplit(".", 1)[-1]: module.get("path", "") for module in modules}
    unsupported = sorted(set(kinds) - set(_SUPPORTED_MODULES))
    if unsupported:
        raise ValueError(f"{modules_path} uses modules {unsupported}; only {list(_SUPPORTED_MODULES)} are supported")
    model_folder = folder / kinds.get("Transformer", "")
    pooling = read_folder_pooling(folder / kinds["Pooling"]) if "Pooling" in kinds else None
    max_tokens = None
    bert_config = model_folder / "sentence_bert_config.json"
    if bert_config.is_file():
        # The length the model was trained on, usually below what its positions allow.
        value = json.loads(bert_config.read_text()).get("max_seq_length")
        max_tokens = int(value) if value else None
    return FolderLayout(model_folder=str(model_folder), pooling=pooling, max_tokens=max_tokens)


class HFTextEncoder(HFEncoder):
    """A transformers text encoder with CLS, attention-masked mean or CLIP projection pooling.

    Text longer than the model's limit is truncated, and the item's info reports the cut with
    the full token count. With long_text="window" it is instead split into windows of at
    most max_tokens (special tokens included), up to max_windows, whose embeddings are
    averaged, weighted by their content tokens.
    """

    modality = "text"
    cost_unit = "tokens"
    pads_to_longest = True

    def __init__(
        self,
        *,
        source: str,
        model_id: str,
        device: torch.device,
        max_chars: int,
        revision: str | None = None,
        pooling: str | None = None,
        max_tokens: int | None = None,
        local_files_only: bool | None = None,
        dtype: str | torch.dtype = "float32",
        long_text: str = "truncate",
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        layout = read_folder_layout(Path(source)) if Path(source).is_dir() else FolderLayout(model_folder=source)
        offline = offline_mode() if local_files_only is None else local_files_only
        self.tokenizer, model, self.pooling = _load(layout, pooling, model_id=model_id, revision=revision, offline=offline)
        self.model = model.eval().to(device)
        self.autocast_dtype = autocast_dtype(dtype, device, label=f"text encoder {model_id}")

        if long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text must be one of {LONG_TEXT_MODES}, got {long_text!r}")
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.long_text = long_text
        self.max_windows = max_windows
        self.max_chars = max_chars
        self.max_tokens = min(max_tokens or layout.max_tokens or self._position_limit(), self._position_limit())
        self.special_token_count = self.tokenizer.num_special_tokens_to_add()
        self._windows = _window_tokenizer(self.tokenizer, self.max_tokens, model_id)
        dim = model.config.projection_dim if self.pooling == "projection" else model.config.hidden_size
        super().__init__(
            model_id=model_id,
            revision=weights_revision(layout.model_folder, revision),
            dim=int(dim),
            device=device,
        )

    def _position_limit(self) -> int:
        """Return the longest input, special tokens included, that the position embeddings allow.

        RoBERTa-family configs list two more positions than usable tokens (514 for 512),
        because their positions start after the padding index.
        """
        config = self.model.config
        positions = int(getattr(config, "max_position_embeddings", 512))
        if config.model_type in _OFFSET_POSITION_MODELS:
            positions -= int(config.pad_token_id) + 1
        return min(positions, int(self.tokenizer.model_max_length))

    def preprocess(self, payload: str) -> Prepared:
        if len(payload) > self.max_chars:
            raise PayloadTooLarge(
                f"text has {len(payload)} characters, above the limit of {self.max_chars}",
                field="text",
                value=len(payload),
                limit=self.max_chars,
            )
        _check_encodable(payload)
        windows, token_count = self._tokenize(payload)
        if len(windows[0]) <= self.special_token_count:
            raise InvalidInput(
                "text has no tokens left after the tokenizer's normalisation; send visible characters",
                field="text",
                value=payload[:40],
            )
        kept = windows[: self.max_windows]
        info = {
            "tokens": token_count,
            "truncated": token_count > self.max_tokens and (self.long_text == "truncate" or len(windows) > len(kept)),
            "max_tokens": self.max_tokens,
        }
        if self.long_text == "window":
            info["windows"] = len(kept)
        weights = [len(window) - self.special_token_count for window in kept]
        return Prepared(data=TokenizedText(kept, weights), cost=self._item_cost(kept), info=info)

    def preprocess_inline(self, payload: str) -> Prepared | None:
        """Tokenize a text of up to INLINE_MAX_CHARS characters at once; leave longer ones to the pool.

        Such a text takes the tokenizer less time than handing it to a pool thread and
        back costs. Tokenizing it on the event loop also keeps the hand-off's latency out
        of the time that concurrent callers need to refill a batch.
        """
        if len(payload) > INLINE_MAX_CHARS:
            return None
        return self.preprocess(payload)

    def _tokenize(self, payload: str) -> tuple[list[list[int]], int]:
        """Return the token ids of each window and the token count of the whole text.

        The windows tokenizer cuts the text into windows of at most max_tokens. In
        "truncate" mode only the first window is kept, but the count includes them all.
        """
        if len(payload) <= INLINE_MAX_CHARS:
            encoding = self._windows.encode(payload)
        else:
            # encode_batch releases the GIL, so a long text does not hold up the event loop.
            [encoding] = self._windows.encode_batch([payload])
        windows = [encoding.ids, *(window.ids for window in encoding.overflowing)]
        token_count = sum(len(window) - self.special_token_count for window in windows) + self.special_token_count
        if self.long_text == "truncate":
            windows = windows[:1]
        return windows, token_count

    def _item_cost(self, windows: list[list[int]]) -> int:
        # A multi-window item is charged as full-width rows (padding included), so the
        # batch cost below can recover its row count.
        if len(windows) == 1:
            return len(windows[0])
        return len(windows) * self.max_tokens

    def batch_cost(self, costs: list[int]) -> int:
        """Return rows x width of the padded batch: right padding makes every row as long as the longest."""
        rows = sum(max(1, -(-cost // self.max_tokens)) for cost in costs)
        width = min(max(costs), self.max_tokens)
        return rows * width

    def _embed(self, items: Sequence[TokenizedText]) -> torch.Tensor:
        """Return one pooled row per item: the weighted mean of its unit-norm window embeddings."""
        rows = [window for item in items for window in item.windows]
        width = max(len(row) for row in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)

        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "projection":
            pooled = outputs.text_embeds
        elif self.pooling == "cls":
            pooled = outputs.last_hidden_state[:, 0]
        else:
            hidden = outputs.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if all(len(item.windows) == 1 for item in items):
            return pooled.float()
        return _average_windows(pooled.float(), items)

    def example_payload(self) -> str:
        return "A short sentence used to warm the text encoder up before the service is ready."


def _check_encodable(payload: str) -> None:
    """Reject unpaired UTF-16 surrogates, which the Rust tokenizers raise TypeError on."""
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError as exc:
        code_point = f"U+{ord(payload[exc.start]):04X}"
        raise InvalidInput(
            f"text has an unpaired surrogate {code_point} at index {exc.start}, which is not valid Unicode text; "
            "send UTF-8 text",
            field="text",
            value=code_point,
        ) from exc


def _window_tokenizer(tokenizer: PreTrainedTokenizerBase, max_tokens: int, model_id: str) -> Tokenizer:
    """Return a private copy of the fast tokenizer, set once to cut text into windows of `max_tokens`.

    Calling the transformers tokenizer rewrites the truncation settings of its shared Rust
    object on every call, which concurrent callers must then lock around, and its Python
    wrapper costs several times the tokenization of a sentence. This copy keeps one
    setting, so any thread may call it at once.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(
            f"text encoder {model_id}: its tokenizer {type(tokenizer).__name__} has no fast (Rust) tokenizer; "
            "save one with tokenizer.json in the model folder"
        )
    windows = Tokenizer.from_str(backend.to_str())
    windows.no_padding()
    windows.enable_truncation(max_tokens, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    return windows


def _load(
    layout: FolderLayout, pooling: str | None, *, model_id: str, revision: str | None, offline: bool
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, str]:
    """Load the tokenizer and the model of `layout`, and return them with the pooling to use."""
    folder = layout.model_folder
    options = {"revision": revision, "local_files_only": offline}
    check_weights_present(folder, model_id=model_id, revision=revision, local_files_only=offline)
    tokenizer = load_pretrained(lambda: AutoTokenizer.from_pretrained(folder, **options), folder, model_id=model_id)
    config = load_pretrained(lambda: AutoConfig.from_pretrained(folder, **options), folder, model_id=model_id)
    chosen = _pick_pooling(pooling or layout.pooling, config.model_type, model_id)
    model_class = CLIPTextModelWithProjection if chosen == "projection" else AutoModel
    model, loading_info = load_pretrained(
        lambda: model_class.from_pretrained(folder, output_loading_info=True, **options), folder, model_id=model_id
    )
    check_missing_weights(loading_info, model_id=model_id)
    return tokenizer, model, chosen


def _pick_pooling(requested: str | None, model_type: str, model_id: str) -> str:
    pooling = requested or ("projection" if model_type in _CLIP_MODEL_TYPES else "mean")
    if pooling not in POOLING_MODES:
        raise ValueError(f"text encoder {model_id}: pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if (pooling == "projection") != (model_type in _CLIP_MODEL_TYPES):
        raise ValueError(f"text encoder {model_id}: pooling 'projection' is for CLIP models only, not {model_type}")
    return pooling


def _average_windows(pooled: torch.Tensor, items: Sequence[TokenizedText]) -> torch.Tensor:
    rows = []
    start = 0
    for item in items:
        windows = F.normalize(pooled[start : start + len(item.windows)], dim=-1)
        weights = torch.tensor(item.weights, dtype=windows.dtype, device=windows.device).unsqueeze(-1)
        rows.append((windows * weights).sum(dim=0) / weights.sum())
        start += len(item.windows)
    return torch.stack(rows)
