"""Multipart uploads -> view sources: one file part per view, named by the view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from mplstm.core.errors import ViewNamesError
from mplstm.core.preprocess import named_views
from mplstm.service.bodies import disconnected
from mplstm.service.errors import ApiError, TooManyPartsError, UnsupportedMediaTypeError

# Form fields that are options, not views.
OPTION_FIELDS = ("top_k", "camera_checks")
# Largest text field (options are a few bytes); views must be file parts.
_MAX_FIELD_BYTES = 1024


@dataclass(frozen=True)
class Upload:
    """The views of one predict request and its option fields."""

    views: dict[str, BinaryIO]
    options: dict[str, str]
    form: FormData

    async def close(self) -> None:
        """Delete the spooled files."""
        await self.form.close()


async def read_upload(
    request: Request, max_parts: int, option_fields: tuple[str, ...] = OPTION_FIELDS
) -> Upload:
    """Parse a multipart request of views and `option_fields`; 415 if not multipart, 413
    past `max_parts`."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            f"send the views as multipart/form-data (one file part per view), not {content_type or 'no content type'!r}"
        )
    try:
        form = await request.form(
            max_files=max_parts, max_fields=max_parts, max_part_size=_MAX_FIELD_BYTES
        )
    except HTTPException as exc:
        if "Too many" in str(exc.detail) or "exceeded maximum size" in str(exc.detail):
            raise TooManyPartsError(f"{exc.detail} (at most {max_parts} parts)") from None
        raise ApiError(f"malformed multipart body: {exc.detail}") from None
    except ClientDisconnect:
        raise disconnected(request.scope) from None
    files: list[tuple[str, BinaryIO]] = []
    options: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((name, value.file))
        elif name in option_fields:
            options[name] = value
        else:
            await form.close()
            raise ViewNamesError(
                f"part {name!r} is a text field; send each view as a file part "
                f"(curl -F '{name}=@clip.mp4'); option fields are {list(option_fields)}"
            )
    try:
        if len(files) + len(options) > max_parts:
            raise TooManyPartsError(f"{len(files) + len(options)} parts; at most {max_parts}")
        if not files:
            raise ViewNamesError("no view files in the request; send one file part per view")
        return Upload(named_views(files), options, form)
    except Exception:
        await form.close()
        raise
