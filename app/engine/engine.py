"""The engine: loads pipelines, then runs each sample through preprocess, batch and fuse."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from app import metrics
from app.encoders.base import Prepared
from app.encoders.registry import ENCODER_BUILDERS
from app.engine.batcher import Batcher, BatchLimits, largest_batch
from app.engine.memory import freeze_loaded_objects
from app.engine.tuning import BatchSizeCache, best_batch_size
from app.engine.worker import DeviceWorker, keep_torch_on_calling_thread, pick_device
from app.errors import InvalidInput, NotFound, NotReady, ServiceError, TimedOut
from app.pipeline import MODALITIES, Pipeline, load_pipeline
from app.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Sample:
    """One multimodal input; a modality left as None is absent."""

    text: str | None = None
    image: bytes | None = None
    audio: bytes | None = None

    def payloads(self) -> dict[str, Any]:
        present = {"text": self.text, "image": self.image, "audio": self.audio}
        return {m: value for m, value in present.items() if value is not None}


@dataclass(slots=True)
class EmbedResult:
    pipeline: Pipeline
    vector: np.ndarray
    weights: dict[str, float]
    space: str
    per_modality: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.per_modality]


# Images per batch on the CPU when MMS_MAX_BATCH_PIXELS is unset.
CPU_IMAGE_BATCH = 8


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.pipelines: dict[str, Pipeline] = {}
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self._worker = DeviceWorker(self.device, settings.idle_trim_s)
        self._pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess", initializer=keep_torch_on_calling_thread
        )
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._loop_thread_limits: threadpool_limits | None = None
        self._max_rows: dict[tuple[str, str], int] = {}

    # Lifecycle

    async def start(self) -> None:
        """Load and warm every pipeline, then start the batchers and turn ready."""
        started = time.perf_counter()
        # Fusion heads run torch on the event loop, and only the device thread may run it on several threads.
        self._loop_thread_limits = keep_torch_on_calling_thread()
        try:
            await self._worker.run_setup(self._load)
        except Exception:
            self.load_error = "pipelines failed to load; see the log"
            logger.exception("loading pipelines failed")
            raise
        for (name, modality), batcher in self._create_batchers().items():
            self._batchers[(name, modality)] = batcher
            batcher.start()
        frozen = freeze_loaded_objects()
        self.ready = True
        logger.info(
            "ready in %.1f s on %s: pipelines %s; %d objects exempt from garbage collection",
            time.perf_counter() - started,
            self.device,
            list(self.pipelines),
            frozen,
        )

    def _load(self) -> None:
        """Load and warm up every pipeline; runs on the device thread."""
        if self.device.type == "cpu" and self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        for name in self.settings.pipelines:
            pipeline = load_pipeline(name, self.settings, self.device, ENCODER_BUILDERS)
            for modality, encoder in pipeline.encoders.items():
                rows = largest_batch(encoder, self._limits(modality))
                if self.settings.tune_batch_size:
                    rows = best_batch_size(encoder, rows, self.device, BatchSizeCache(self.settings.batch_size_cache))
                self._max_rows[(name, modality)] = rows
                # Warming up at the largest batch that will run allocates what serving needs, and no more.
                logger.info("warming up %s/%s at batch sizes 1 and %d", name, modality, rows)
                encoder.warmup((1, rows))
            self.pipelines[name] = pipeline

    def max_batch_rows(self, pipeline: str, modality: str) -> int:
        """Return the row cap of one encoder's batches.

        The cap is the most rows of the encoder's example input that the limits allow,
        or the measured best batch size when MMS_TUNE_BATCH_SIZE is on.
        """
        return self._max_rows[(pipeline, modality)]

    def _limits(self, modality: str, max_rows: int | None = None) -> BatchLimits:
        budgets = {
            "text": self.settings.max_batch_tokens,
            "image": self.settings.max_batch_pixels or self._default_image_budget(),
            "audio": self.settings.max_batch_windows,
        }
        return BatchLimits(
            max_batch_size=max_rows or self.settings.max_batch_size,
            max_batch_cost=budgets[modality],
            max_queue_items=self.settings.max_queue_items,
            max_wait_s=self.settings.max_wait_ms / 1000,
            refill_wait=self.settings.refill_wait,
        )

    def _default_image_budget(self) -> int:
        images = CPU_IMAGE_BATCH if self.device.type == "cpu" else self.settings.max_batch_size
        return images * 224 * 224

    def _create_batchers(self) -> dict[tuple[str, str], Batcher]:
        batchers = {}
        for name, pipeline in self.pipelines.items():
            for modality, encoder in pipeline.encoders.items():
                limits = self._limits(modality, self._max_rows[(name, modality)])
                batchers[(name, modality)] = Batcher(f"{name}/{modality}", encoder, self._worker, limits)
        return batchers

    async def stop(self) -> None:
        self.ready = False
        for batcher in self._batchers.values():
            await batcher.stop()
        self._worker.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop_thread_limits is not None:
            self._loop_thread_limits.restore_original_limits()
            self._loop_thread_limits = None

    def queued_items(self) -> int:
        return sum(b.queued for b in self._batchers.values())

    # Requests

    def pipeline(self, name: str) -> Pipeline:
        if not self.ready:
            raise NotReady("the service is still loading its encoders; retry shortly")
        if name not in self.pipelines:
            raise NotFound(
                f"pipeline '{name}' is not loaded; loaded pipelines: {sorted(self.pipelines)}",
                field="pipeline",
                value=name,
            )
        return self.pipelines[name]

    async def embed(
        self,
        pipeline_name: str,
        sample: Sample,
        *,
        weights: Mapping[str, float] | None = None,
        timeout_s: float | None = None,
    ) -> EmbedResult:
        pipeline = self.pipeline(pipeline_name)
        payloads = sample.payloads()
        self._check_modalities(pipeline, payloads)
        present = [m for m in MODALITIES if m in payloads]
        resolved = pipeline.fusion.resolve_weights(weights, present)
        timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_s
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                prepared = await self.prepare(pipeline, sample)
                vectors = await self.forward(pipeline, prepared, deadline)
        except TimeoutError as exc:
            raise TimedOut(f"the request did not finish within its deadline of {timeout:g} s") from exc

        fused = pipeline.fusion.fuse(vectors, resolved)
        merged = {**pipeline.fusion.default_weights, **(weights or {})}
        return EmbedResult(
            pipeline=pipeline,
            vector=fused,
            weights=resolved,
            space=pipeline.space(merged),
            per_modality=vectors,
            info={m: prepared[m].info for m in present},
        )

    async def prepare(self, pipeline: Pipeline, sample: Sample) -> dict[str, Prepared]:
        """Preprocess every modality of a sample in the pool; raise the first failure."""
        payloads = sample.payloads()
        return await _all_or_nothing({m: self._preprocess(pipeline, m, payloads[m]) for m in payloads})

    async def forward(
        self, pipeline: Pipeline, prepared: Mapping[str, Prepared], deadline: float
    ) -> dict[str, np.ndarray]:
        """Queue prepared items with their batchers and wait for all of their embeddings."""
        return await _all_or_nothing(
            {m: self._batchers[(pipeline.name, m)].submit(item, deadline) for m, item in prepared.items()}
        )

    @staticmethod
    def _check_modalities(pipeline: Pipeline, payloads: Mapping[str, Any]) -> None:
        if not payloads:
            raise InvalidInput(
                "the sample is empty; send at least one of the fields text, image or audio",
                field="sample",
            )
        for modality in payloads:
            if modality not in pipeline.encoders:
                raise InvalidInput(
                    f"pipeline '{pipeline.name}' has no {modality} encoder; "
                    f"it accepts {sorted(pipeline.encoders)}",
                    field=modality,
                )

    async def _preprocess(self, pipeline: Pipeline, modality: str, payload: Any) -> Prepared:
        encoder = pipeline.encoders[modality]
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared = encoder.preprocess_inline(payload)
        if prepared is None:
            prepared = await loop.run_in_executor(self._pool, encoder.preprocess, payload)
        metrics.PREPROCESS_SECONDS.labels(f"{pipeline.name}/{modality}").observe(time.perf_counter() - started)
        return prepared


async def _all_or_nothing(coroutines: Mapping[str, Awaitable[T]]) -> dict[str, T]:
    """Await every coroutine; on the first failure cancel the rest and raise that failure.

    Cancelling matters for the batchers: a cancelled item is dropped before the forward
    pass, so a sample whose image is invalid does not spend device time on its text.
    """
    if len(coroutines) == 1:  # nothing to cancel on failure, so no task is needed
        [(key, only)] = coroutines.items()
        return {key: await only}
    tasks = {key: asyncio.ensure_future(coro) for key, coro in coroutines.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks.values():
            task.cancel()
    failures = [t.exception() for t in tasks.values() if t.done() and not t.cancelled() and t.exception()]
    service_errors = [e for e in failures if isinstance(e, ServiceError)]
    if service_errors or failures:
        raise (service_errors or failures)[0]  # type: ignore[misc]
    return {key: task.result() for key, task in tasks.items()}
