"""The engine: a preprocessing pool, per-encoder micro-batchers and one device worker."""
