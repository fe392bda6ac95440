"""Shared fixtures; the modules under tests/support hold the real-input generators."""

pytest_plugins = [
    "tests.support.images",
    "tests.support.speech",
]
