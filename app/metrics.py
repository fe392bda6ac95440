"""Prometheus metrics, all under the `mms_` prefix, labelled by encoder where it applies."""

from prometheus_client import Counter, Gauge, Histogram

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_COST_BUCKETS = tuple(2**k for k in range(4, 24, 2))
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("mms_requests", "HTTP requests by route and status.", ["route", "method", "status"])
REQUEST_SECONDS = Histogram("mms_request_seconds", "HTTP request latency.", ["route"], buckets=_SECONDS_BUCKETS)

QUEUE_DEPTH = Gauge("mms_queue_items", "Items waiting in an encoder's queue.", ["encoder"])
BATCH_SIZE = Histogram("mms_batch_items", "Items per forward pass.", ["encoder"], buckets=_BATCH_SIZE_BUCKETS)
BATCH_COST = Histogram("mms_batch_cost", "Budget units per forward pass.", ["encoder"], buckets=_COST_BUCKETS)
QUEUE_SECONDS = Histogram("mms_queue_seconds", "Time an item waited for its batch.", ["encoder"], buckets=_SECONDS_BUCKETS)
PREPROCESS_SECONDS = Histogram(
    "mms_preprocess_seconds", "Time to decode and prepare one item.", ["encoder"], buckets=_SECONDS_BUCKETS
)
FORWARD_SECONDS = Histogram("mms_forward_seconds", "Time of one forward pass.", ["encoder"], buckets=_SECONDS_BUCKETS)
ITEMS_REJECTED = Counter("mms_items_rejected", "Items refused because the queue was full.", ["encoder"])
ITEMS_EXPIRED = Counter("mms_items_expired", "Items dropped before the forward pass past their deadline.", ["encoder"])
ITEMS_DROPPED = Counter("mms_items_dropped", "Items dropped because their client went away.", ["encoder"])
