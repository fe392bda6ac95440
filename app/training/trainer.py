"""The training loop: cross-entropy, AdamW, warm-up then cosine decay, clipping, early stopping.

Everything random (initialisation, dropout, batch order, modality dropout) follows from
`seed`, so one seed on one machine and thread count gives the same weights.
"""

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from app.fusion.modules import FusionClassifier, build_fusion
from app.training.dataset import EmbeddedSplit, conditions, drop_modalities

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainSettings:
    fusion: str = "attention"
    fusion_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    """Share of all planned steps over which the learning rate rises linearly from 0."""
    grad_clip: float = 1.0
    """Largest L2 norm of the gradient of all parameters together."""
    patience: int = 15
    """Epochs without a better validation loss before training stops."""
    label_smoothing: float = 0.0
    class_weights: bool = False
    """Weigh the loss of each class by the inverse of its train frequency."""
    modality_dropout: float = 0.15
    """Probability of hiding each present modality of a training sample (one always stays)."""
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class TrainResult:
    model: FusionClassifier
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]


def fit(
    train: EmbeddedSplit,
    validation: EmbeddedSplit,
    dims: Mapping[str, int],
    labels: Sequence[str],
    settings: TrainSettings,
) -> TrainResult:
    """Train a fusion module and classifier; return the one of the epoch with the best validation loss."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    fusion = build_fusion(settings.fusion, dims, len(labels), settings.fusion_options)
    model = FusionClassifier(fusion, len(labels))

    class_weights = _class_weights(train, len(labels)) if settings.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=settings.label_smoothing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(settings.epochs * steps_per_epoch, settings.warmup_fraction)
    )

    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(1, settings.epochs + 1):
        train_loss = _train_epoch(model, train, loss_fn, optimizer, scheduler, settings, generator)
        val_loss, val_accuracy = validation_scores(model, validation)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy})
        logger.info(
            "epoch %d/%d: train loss %.4f, validation loss %.4f, accuracy %.3f, lr %.2e",
            epoch, settings.epochs, train_loss, val_loss, val_accuracy, scheduler.get_last_lr()[0],
        )
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            logger.info("stopping early: no better validation loss for %d epochs", settings.patience)
            break
    model.load_state_dict(best_state)
    model.eval()
    logger.info("kept epoch %d (validation loss %.4f)", best_epoch, best_loss)
    return TrainResult(model, best_epoch, len(history), history)


def _train_epoch(
    model: FusionClassifier,
    train: EmbeddedSplit,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: TrainSettings,
    generator: torch.Generator,
) -> float:
    model.train()
    order = torch.randperm(len(train), generator=generator)
    total, count = 0.0, 0
    for start in range(0, len(train), settings.batch_size):
        batch = drop_modalities(train.subset(order[start : start + settings.batch_size]), settings.modality_dropout, generator)
        loss = loss_fn(model(batch.embeddings, batch.mask), batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / count


def validation_scores(model: FusionClassifier, validation: EmbeddedSplit) -> tuple[float, float]:
    """Return cross-entropy and accuracy averaged over the complete samples and each modality dropped.

    Averaging over the drop conditions picks weights that also hold up when a modality is missing.
    """
    model.eval()
    losses, accuracies = [], []
    with torch.no_grad():
        for name, keep in conditions(validation.modalities).items():
            if name.startswith("only"):
                continue
            view = validation.with_modalities(keep)
            if len(view) == 0:
                continue
            logits = model(view.embeddings, view.mask)
            losses.append(float(nn.functional.cross_entropy(logits, view.targets)))
            accuracies.append(float((logits.argmax(dim=1) == view.targets).float().mean()))
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies)


def _class_weights(train: EmbeddedSplit, label_count: int) -> torch.Tensor:
    counts = torch.bincount(train.targets, minlength=label_count).float()
    # Classes absent from train get weight 0 instead of a division by zero.
    return torch.where(counts > 0, counts.sum() / (label_count * counts.clamp(min=1)), torch.zeros_like(counts))


def _warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
