"""A small Python client for the service, and the `mms embed` / `mms classify` commands.

    from app.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.embed(text="a cat", image="cat.jpg")
        print(result["dimension"], result["embedding"][:4])
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
PREVIEW_VALUES = 8
FileInput = str | os.PathLike[str] | bytes | None


class RequestFailed(Exception):
    """The service returned an error; `problem` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


def _file_part(field: str, value: FileInput) -> tuple[str, bytes] | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return (field, value)
    path = Path(value)
    return (path.name, path.read_bytes())


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def embed(
        self,
        *,
        text: str | None = None,
        image: FileInput = None,
        audio: FileInput = None,
        pipeline: str = "default",
        weights: dict[str, float] | None = None,
        return_modalities: bool = False,
    ) -> dict[str, Any]:
        """Embed one sample; image and audio are file paths or raw bytes."""
        form = self._form(text, image, audio, pipeline, weights)
        form.append(("return_modalities", (None, "true" if return_modalities else "false")))
        return self._post("/v1/embed", form)

    def classify(
        self,
        *,
        text: str | None = None,
        image: FileInput = None,
        audio: FileInput = None,
        pipeline: str = "default",
        top_k: int | None = None,
    ) -> dict[str, Any]:
        form = self._form(text, image, audio, pipeline, None)
        if top_k is not None:
            form.append(("top_k", (None, str(top_k))))
        return self._post("/v1/classify", form)

    def models(self) -> dict[str, Any]:
        return self._checked(self._http.get("/v1/models"))

    @staticmethod
    def _form(
        text: str | None, image: FileInput, audio: FileInput, pipeline: str, weights: dict[str, float] | None
    ) -> list[tuple[str, Any]]:
        form: list[tuple[str, Any]] = [("pipeline", (None, pipeline))]
        if text is not None:
            form.append(("text", (None, text)))
        for field, value in (("image", image), ("audio", audio)):
            part = _file_part(field, value)
            if part is not None:
                form.append((field, part))
        if weights:
            form.append(("weights", (None, json.dumps(weights))))
        return form

    def _post(self, path: str, form: list[tuple[str, Any]]) -> dict[str, Any]:
        return self._checked(self._http.post(path, files=form))

    @staticmethod
    def _checked(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:500]}
            raise RequestFailed(response.status_code, problem)
        return response.json()


def add_client_commands(subcommands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register `embed` and `classify` on the project's CLI."""
    for name, help_text in (("embed", "embed one sample"), ("classify", "classify one sample")):
        command = subcommands.add_parser(name, help=help_text)
        command.add_argument("--url", default=os.environ.get("MMS_URL", DEFAULT_URL), help="service URL (env MMS_URL)")
        command.add_argument("--api-key", default=os.environ.get("MMS_API_KEY"), help="Bearer key (env MMS_API_KEY)")
        command.add_argument("--pipeline", default="default")
        command.add_argument("--text", help="text to send")
        command.add_argument("--image", type=Path, help="image file")
        command.add_argument("--audio", type=Path, help="audio file")
        if name == "embed":
            command.add_argument("--full", action="store_true", help="print the whole JSON response, vector included")
        else:
            command.add_argument("--top-k", type=int, default=None, help="how many labels to print")
        command.set_defaults(handler=_run_client_command, command_name=name)


def _run_client_command(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key) as client:
        try:
            if args.command_name == "embed":
                result = client.embed(text=args.text, image=args.image, audio=args.audio, pipeline=args.pipeline)
                if not args.full:
                    # A 1920-d vector floods a terminal; show its first values only.
                    result["embedding"] = result["embedding"][:PREVIEW_VALUES] + ["..."]
            else:
                result = client.classify(
                    text=args.text, image=args.image, audio=args.audio, pipeline=args.pipeline, top_k=args.top_k
                )
        except RequestFailed as failure:
            print(json.dumps(failure.problem, indent=2), file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"could not reach {args.url}: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
