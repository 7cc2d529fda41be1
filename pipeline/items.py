"""Work items and result rows: the data handed between stages. Pure, no IO."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import Job, PromptConfig
from .encode import EncodedImage

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pending:
    """One (image, prompt) item that still needs a caption."""

    key: str
    prompt: PromptConfig
    text: str
    request_key: str  # what is sent, whatever the path or prompt name (identical images)
    error: str | None = None  # the text cannot be rendered (a manifest row lacks a variable)


@dataclass(frozen=True, slots=True)
class RequestItem:
    key: str
    request_key: str  # same for identical requests (same image bytes, prompt and settings)
    relpath: str
    sha256: str
    prompt: PromptConfig
    text: str
    image: EncodedImage
    encode_s: float
    ready_at: float  # perf_counter when it entered the request queue
    keep: Mapping[str, Any] | None = None  # manifest columns copied into the row


@dataclass(frozen=True, slots=True)
class RowMaker:
    """Builds result rows with the fields every row of a run shares."""

    job: Job
    run_id: str

    def __call__(
        self,
        key: str,
        relpath: str,
        sha: str | None,
        prompt: PromptConfig,
        status: str,
        started: dt.datetime,
        finished: dt.datetime,
        **fields: Any,
    ) -> Row:
        return {
            "key": key,
            "image_path": relpath,
            "image_sha256": sha,
            "prompt_name": prompt.name,
            "model": self.job.endpoint.model,
            "status": status,
            "started_at": started,
            "finished_at": finished,
            "run_id": self.run_id,
            "endpoint": self.job.endpoint.url,
            **fields,
        }
