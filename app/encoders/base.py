"""The contract every encoder follows: preprocess on the CPU, forward on the device.

The engine calls `preprocess` from a thread pool, one item at a time, and `forward`
from the single device worker thread with a batch of prepared items. Routes never
touch torch: they only see the numpy arrays that `forward` returns.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass(slots=True)
class Prepared:
    """One preprocessed input, ready to be collated with others into a batch."""

    data: Any
    """CPU tensors for this item alone, in whatever form the encoder's collate expects."""
    cost: int
    """Batch budget units: tokens for text, pixels for images, windows for audio."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts reported back to the client, such as the token count or the duration."""


class Encoder(ABC):
    """A pretrained model for one modality that maps inputs to L2-normalised vectors."""

    modality: ClassVar[str]
    cost_unit: ClassVar[str]
    pads_to_longest: ClassVar[bool] = False
    """True when a batch costs rows x longest item, so grouping similar items saves work."""

    def __init__(self, *, model_id: str, revision: str, dim: int, device: torch.device) -> None:
        self.model_id = model_id
        self.revision = revision
        self.dim = dim
        self.device = device

    @abstractmethod
    def preprocess(self, payload: Any) -> Prepared:
        """Validate and prepare one input on the CPU; raise a ServiceError for bad input.

        Thread-safe: several pool threads call it at once.
        """

    def preprocess_inline(self, payload: Any) -> Prepared | None:
        """Preprocess `payload` on the calling thread when that costs less than a hand-off to the pool.

        The engine calls it on the event loop, so an encoder that overrides it returns at
        once (within a fraction of a millisecond), or returns None to send the payload to
        the pool. The base class always returns None.
        """
        return None

    @abstractmethod
    def forward(self, batch: list[Prepared]) -> np.ndarray:
        """Embed a batch on the device and return float32 rows of unit L2 norm.

        Called only from the device worker thread, under torch.inference_mode. Row i
        must not depend on the other items of the batch (up to float rounding).
        """

    @staticmethod
    def batch_cost(costs: list[int]) -> int:
        """Return what a batch of items with these costs spends of the budget."""
        return sum(costs)

    @abstractmethod
    def example_payload(self) -> Any:
        """Return a realistic input used to warm the encoder up before readiness."""

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run forward passes at realistic batch shapes so the first request is not slow."""
        prepared = self.preprocess(self.example_payload())
        with torch.inference_mode():
            for size in batch_sizes:
                self.forward([prepared] * size)

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "model": self.model_id,
            "revision": self.revision,
            "dimension": self.dim,
            "cost_unit": self.cost_unit,
        }
