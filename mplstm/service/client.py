"""A small client for the /v1 predict route, on the standard library only (urllib)."""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ServiceError(RuntimeError):
    """The service answered with an error (or could not be reached)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def encode_multipart(files: Mapping[str, Path], fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body (one file part per name) and its content type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, path in files.items():
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{path.name}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
        )
        chunks.append(path.read_bytes())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def predict(
    url: str,
    views: Mapping[str, str | Path],
    *,
    model: str | None = None,
    top_k: int = 5,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    camera_checks: bool | None = None,
) -> dict[str, Any]:
    """POST one clip (view name -> video file) to the service; the JSON answer.

    `camera_checks` turns the camera checks on or off for this clip (None: the server's).
    """
    route = f"/v1/models/{model}/predict" if model else "/v1/predict"
    body, content_type = encode_multipart({n: Path(p) for n, p in views.items()}, {})
    query = f"top_k={top_k}"
    if camera_checks is not None:
        query += f"&camera_checks={'on' if camera_checks else 'off'}"
    request = urllib.request.Request(f"{url.rstrip('/')}{route}?{query}", data=body, method="POST")
    request.add_header("Content-Type", content_type)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            code, detail = error["error"], error["detail"]
        except (ValueError, KeyError, TypeError):
            code, detail = "http_error", exc.reason
        raise ServiceError(exc.code, code, str(detail)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(0, "unreachable", f"cannot reach {url}: {reason}") from None
