"""Logging set-up for the service process; called once from the app's lifespan, never on import."""

import json
import logging
import time

import transformers.utils.logging as transformers_logging

from app.api.context import current_request_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    service_logger = logging.getLogger("app")
    service_logger.handlers[:] = [handler]
    service_logger.setLevel(level.upper())
    service_logger.propagate = False
    # Per-file progress bars from transformers would flood a service log.
    transformers_logging.disable_progress_bar()
