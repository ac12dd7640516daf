"""Log output of `serve`: text for people, or one JSON object per line for log pipelines.

The access log (one line per inference request) carries the request's id, adapter, tenant,
worker, status and latency as fields; never a prompt, a body or a key, since nothing passes
those to a logger.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

ACCESS = logging.getLogger("lora_router.access")
"""Silent unless `serve --access-log`: at thousands of requests a second, a line each is a choice."""
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("request_id", "method", "path", "adapter", "tenant", "worker", "status", "latency_ms")
"""Record attributes (`extra=`) a JSON line carries beside the message."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def configure(level: str, log_format: str, access_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    ACCESS.setLevel(logging.INFO if access_log else logging.WARNING)
