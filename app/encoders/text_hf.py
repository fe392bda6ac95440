"""Text encoders loaded with transformers Auto classes from a folder or the hub."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from app.encoders.base import Encoder, Prepared
from app.encoders.weights import fingerprint_files
from app.errors import InvalidInput, PayloadTooLarge

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls")


@dataclass(slots=True)
class TokenizedText:
    input_ids: list[int]


def read_folder_pooling(folder: Path) -> str | None:
    """Return the pooling mode that a sentence-transformers folder declares, if any."""
    config_path = folder / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


def read_folder_max_tokens(folder: Path) -> int | None:
    """Return sentence-transformers' `max_seq_length`, the length the model was trained on."""
    config_path = folder / "sentence_bert_config.json"
    if not config_path.is_file():
        return None
    value = json.loads(config_path.read_text()).get("max_seq_length")
    return int(value) if value else None


class HFTextEncoder(Encoder):
    """A BERT- or RoBERTa-family encoder with CLS or attention-masked mean pooling."""

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
        local_files_only: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        folder = Path(source)
        self.tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, local_files_only=local_files_only
        )
        model = AutoModel.from_pretrained(source, revision=revision, local_files_only=local_files_only)
        self.model = model.eval().to(device=device, dtype=dtype)
        self.pooling = pooling or read_folder_pooling(folder) or "mean"
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        self.max_chars = max_chars
        self.max_tokens = max_tokens or read_folder_max_tokens(folder) or self._position_limit()
        self.special_token_count = self.tokenizer.num_special_tokens_to_add()
        super().__init__(
            model_id=model_id,
            revision=revision or _weights_fingerprint(folder),
            dim=int(model.config.hidden_size),
            device=device,
        )

    def _position_limit(self) -> int:
        """Return the longest input the position embeddings allow.

        RoBERTa-family configs list two more positions than usable tokens, because
        their positions start after the padding index.
        """
        config = self.model.config
        positions = int(getattr(config, "max_position_embeddings", 512))
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):
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
        input_ids = self.tokenizer(payload, truncation=True, max_length=self.max_tokens)["input_ids"]
        if len(input_ids) <= self.special_token_count:
            raise InvalidInput(
                "text has no tokens left after the tokenizer's normalisation; send visible characters",
                field="text",
                value=payload[:40],
            )
        token_count = len(input_ids)
        if token_count >= self.max_tokens:
            # Only a text that reached the limit can have been cut: count it in full.
            content = self.tokenizer(payload, add_special_tokens=False, verbose=False)["input_ids"]
            token_count = len(content) + self.special_token_count
        info = {"tokens": token_count, "truncated": token_count > self.max_tokens, "max_tokens": self.max_tokens}
        return Prepared(data=TokenizedText(input_ids), cost=len(input_ids), info=info)

    @staticmethod
    def batch_cost(costs: list[int]) -> int:
        # Right padding makes every row as long as the longest one.
        return max(costs) * len(costs)

    def forward(self, batch: list[Prepared]) -> np.ndarray:
        rows = [item.data.input_ids for item in batch]
        width = max(len(row) for row in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)

        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.cpu().numpy()

    def example_payload(self) -> str:
        return "A short sentence used to warm the text encoder up before the service is ready."


def _weights_fingerprint(folder: Path) -> str:
    """Return a short identifier of a local folder's weight files."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return fingerprint_files(files) if files else "unknown"
