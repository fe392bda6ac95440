"""The `mms` command line: `train` and `evaluate` a head, `embed` and `classify` through a server."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers.utils.logging as transformers_logging

from app.client import add_client_commands
from app.fusion.modules import FUSION_MODULES
from app.settings import PROJECT_ROOT
from app.training.embeddings import EncodingError, default_cache_dir
from app.training.manifest import ManifestError
from app.training.split import SplitFractions
from app.training.trainer import TrainSettings
from app.training.workflow import EncodeOptions, TrainRequest, UsageError, evaluate, pipeline_folder, train

DEFAULTS = TrainSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mms", description="Multimodal embedding service tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands.add_parser("train", help="train a fusion and classification head on a manifest"))
    _add_evaluate(commands.add_parser("evaluate", help="score a trained pipeline on a manifest, with a modality ablation"))
    add_client_commands(commands)
    return parser


def _add_encoding_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoding")
    group.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                       help="folder of cached embeddings (default: %(default)s)")
    group.add_argument("--device", default="cpu", help="device of the encoders: cpu, cuda, cuda:N or auto (default: cpu)")
    group.add_argument("--encode-batch", type=int, default=16, help="inputs per encoder forward pass (default: 16)")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="JSONL or CSV manifest: text, image, audio, label columns")
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write, such as models/NAME")
    parser.add_argument("--pipeline", default="default", help="name under --models-dir, or folder, of the pipeline whose encoders to use")
    parser.add_argument("--models-dir", type=Path, default=PROJECT_ROOT / "models", help="folder of pipelines (default: %(default)s)")
    parser.add_argument("--fusion", choices=sorted(FUSION_MODULES), default=DEFAULTS.fusion, help="fusion strategy (default: %(default)s)")
    parser.add_argument("--modalities", help="comma-separated subset of the pipeline's modalities to train on")
    parser.add_argument("--label-column", default="label", help="manifest column that contains the label (default: label)")
    parser.add_argument("--embed-fusion", choices=("trained", "weighted-concat"), default="trained",
                        help="what /v1/embed of a new pipeline folder returns (default: trained)")

    split = parser.add_argument_group("split")
    split.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the split, initialisation and batches")
    split.add_argument("--val-fraction", type=float, default=0.15, help="share of samples for validation (default: 0.15)")
    split.add_argument("--test-fraction", type=float, default=0.15, help="share of samples for test (default: 0.15)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="most epochs (default: %(default)s)")
    optim.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="samples a step (default: %(default)s)")
    optim.add_argument("--lr", type=float, default=DEFAULTS.learning_rate, help="peak AdamW learning rate (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay (default: %(default)s)")
    optim.add_argument("--warmup", type=float, default=DEFAULTS.warmup_fraction,
                       help="share of steps with a linear warm-up before the cosine decay (default: %(default)s)")
    optim.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip, help="max gradient L2 norm (default: %(default)s)")
    optim.add_argument("--patience", type=int, default=DEFAULTS.patience,
                       help="epochs without a better validation loss before stopping (default: %(default)s)")
    optim.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing, help="cross-entropy label smoothing (default: 0)")
    optim.add_argument("--class-weights", action="store_true", help="weigh the loss by inverse class frequency")
    optim.add_argument("--modality-dropout", type=float, default=DEFAULTS.modality_dropout,
                       help="probability of hiding each modality of a training sample (default: %(default)s)")

    module = parser.add_argument_group("fusion module")
    module.add_argument("--fusion-dim", type=int, help="size of the shared space (weighted-average, attention, gated)")
    module.add_argument("--heads", type=int, help="attention heads (attention)")
    module.add_argument("--dropout", type=float, help="dropout inside the module (attention, gated)")
    _add_encoding_options(parser)


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline_dir", type=Path, help="pipeline folder written by `mms train`")
    parser.add_argument("manifest", type=Path, help="JSONL or CSV manifest with labels")
    parser.add_argument("--split", choices=("all", "train", "validation", "test"), default="all",
                        help="rows to score: all, or one split (from the split column, else recomputed "
                             "with the training seed and fractions) (default: all)")
    _add_encoding_options(parser)


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    options = {name: value for name, value in (("dim", args.fusion_dim), ("heads", args.heads), ("dropout", args.dropout))
               if value is not None}
    return TrainSettings(
        fusion=args.fusion,
        fusion_options=options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_fraction=args.warmup,
        grad_clip=args.grad_clip,
        patience=args.patience,
        label_smoothing=args.label_smoothing,
        class_weights=args.class_weights,
        modality_dropout=args.modality_dropout,
        seed=args.seed,
    )


def run_train(args: argparse.Namespace) -> None:
    request = TrainRequest(
        manifest=args.manifest,
        pipeline=pipeline_folder(args.pipeline, args.models_dir),
        out=args.out,
        settings=_train_settings(args),
        encode=_encode_options(args),
        modalities=[m.strip() for m in args.modalities.split(",")] if args.modalities else None,
        label_column=args.label_column,
        fractions=SplitFractions(validation=args.val_fraction, test=args.test_fraction),
        embed_fusion=args.embed_fusion,
    )
    train(request)


def run_evaluate(args: argparse.Namespace) -> None:
    evaluate(args.pipeline_dir, args.manifest, _encode_options(args), split=args.split)


def _encode_options(args: argparse.Namespace) -> EncodeOptions:
    if args.threads:
        torch.set_num_threads(args.threads)
    return EncodeOptions(cache_dir=args.cache_dir, device=args.device, batch_size=args.encode_batch, progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return 0 on success, 2 on a rejected manifest or option."""
    args = build_parser().parse_args(argv)
    if args.command in ("embed", "classify"):
        return int(args.handler(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    transformers_logging.disable_progress_bar()
    commands = {"train": run_train, "evaluate": run_evaluate}
    try:
        commands[args.command](args)
    except (ManifestError, EncodingError, UsageError, FileNotFoundError, FileExistsError) as exc:
        print(f"mms {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
