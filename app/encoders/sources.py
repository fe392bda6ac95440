"""Resolve where an encoder's weights live: an installed package, a local folder or the hub."""

import importlib.metadata
from pathlib import Path

from app.errors import NotFound

PACKAGE_SCHEME = "pkg:"


def package_file(distribution: str, relative_path: str) -> Path:
    """Return the path of a file or folder shipped inside an installed distribution.

    The file is found through the distribution's metadata rather than by importing
    it, because some weight-carrying packages (resemblyzer) fail to import.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise NotFound(
            f"package '{distribution}' is not installed; install it with pip to get its weights",
            field="source",
            value=distribution,
        ) from exc
    path = Path(str(dist.locate_file(relative_path)))
    if not path.exists():
        raise NotFound(
            f"'{relative_path}' was not found inside package '{distribution}' (looked in {path})",
            field="source",
            value=relative_path,
        )
    return path


def resolve_source(source: str, base_dir: Path) -> str:
    """Turn a pipeline's `source` into what `from_pretrained` takes.

    `pkg:DIST/path/inside` points into an installed distribution, a path that exists
    (absolute, or relative to the pipeline folder) is used as a local folder, and
    anything else is passed on as a Hugging Face hub id.
    """
    if source.startswith(PACKAGE_SCHEME):
        distribution, _, relative = source[len(PACKAGE_SCHEME) :].partition("/")
        return str(package_file(distribution, relative))
    local = (base_dir / source).expanduser()
    if local.exists():
        return str(local.resolve())
    return source
