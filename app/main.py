"""The ASGI application: `uvicorn app.main:app` serves it."""

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api.auth import ApiKeyMiddleware
from app.api.docs import install_docs
from app.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.api.openai import router as openai_router
from app.api.problems import install_problem_handlers
from app.api.routes import router
from app.engine.engine import Engine
from app.logs import configure_logging
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(settings.log_level)
    engine = Engine(settings)
    app.state.engine = engine
    _drain_on_sigterm(engine, settings.shutdown_drain_s)
    # Loading runs in the background so /healthz responds while the encoders load.
    loading = asyncio.create_task(engine.start(), name="load-pipelines")
    try:
        yield
    finally:
        engine.draining = True
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await engine.stop()
        logger.info("stopped")


def _drain_on_sigterm(engine: Engine, drain_s: float) -> None:
    """Turn /readyz to 503 as soon as SIGTERM arrives, and keep serving for `drain_s`.

    During the drain the service still accepts and serves requests, so that load
    balancers polling /readyz take it out of rotation before its socket closes. Then
    uvicorn's own shutdown runs: it stops accepting connections and waits for the
    requests in flight (queued ones included), up to --timeout-graceful-shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def handle_sigterm(signum: int, frame: FrameType | None) -> None:
        if not callable(server_handler):
            return
        if engine.draining:  # a second SIGTERM skips the rest of the drain
            server_handler(signum, frame)
            return
        engine.draining = True
        logger.info("SIGTERM received: draining for %.1f s with %d items queued", drain_s, engine.queued_items())
        loop.call_soon_threadsafe(loop.call_later, drain_s, server_handler, signum, None)

    signal.signal(signal.SIGTERM, handle_sigterm)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Multimodal embedding service",
        version=__version__,
        description=(
            "Embeds and classifies samples made of a text, an image and an audio clip. "
            "POST one sample as multipart/form-data to /v1/embed or /v1/classify."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    install_docs(app)
    app.include_router(router)
    app.include_router(openai_router)
    # Added first, so it runs inside CORS: a 401 carries CORS headers and preflights need no key.
    app.add_middleware(ApiKeyMiddleware, api_keys=settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app


app = create_app()
