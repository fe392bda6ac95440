"""Keep soak tests out of the default run: they start only when `-m` names the soak marker."""

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak test, minutes long; run it with `pytest -m soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
