"""``caption run --dry-run``: what a run would send, without sending or writing anything.

After the preflight's ``/models`` check (its structured-output probe is a chat request, so it
is left out), the input is walked and every item's key computed as a run would; items already
done are skipped. A file's key needs its sha256: the hash cache has it for files an earlier run
read; other files are read and hashed only when the dataset has done items to compare with.
Nothing in the output folder is created or changed (the hash cache is opened read-only).

Prompt tokens: one representative item per prompt (the first to be sent, its image encoded as
a run would) goes to the server's ``POST /tokenize`` (vLLM's, with the chat messages: the image
tokens included); the count is multiplied by the prompt's items. A server without ``/tokenize``
gives a rough estimate instead (text at 4 UTF-8 bytes per token, 260 tokens per image as Gemma 3).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from pyarrow.fs import FileSystem

from .client import auth_headers, tls_for
from .config import Job
from .encode import encode_image
from .errors import ConfigError, InvalidImageError
from .feed import ItemKeys, input_files, input_fs, read_file
from .payload import build_body
from .preflight import preflight
from .state import HASHES_NAME, HashCache, load_done_keys
from .storage import output_place, state_folder
from .walker import ImageFile

BATCH = 256
EST_BYTES_PER_TOKEN = 4
EST_TOKENS_PER_IMAGE = 260  # Gemma 3: 256 soft tokens + 4 around them
EST_TOKENS_PER_MESSAGE = 4


@dataclass
class Sample:
    file: ImageFile
    text: str


@dataclass
class DryRun:
    """What a run of the job would do now."""

    input: str
    output: str
    images: int = 0  # image files (manifest rows) found
    items: int = 0  # images x prompts
    done: int = 0  # already done: a run skips them
    invalid: int = 0  # known now to become invalid rows (missing file, manifest row problem)
    hashed: int = 0  # files read to learn their keys (not in the hash cache)
    to_send: dict[str, int] = field(default_factory=dict)  # per prompt
    limit: int | None = None
    tokens: dict[str, int] = field(default_factory=dict)  # prompt tokens per item, per prompt
    tokens_how: str = ""  # "the server's /tokenize" or "estimate ..."
    samples: dict[str, Sample] = field(default_factory=dict)

    @property
    def sending(self) -> int:
        total = sum(self.to_send.values())
        return total if self.limit is None else min(total, self.limit)

    @property
    def prompt_tokens(self) -> int | None:
        if not self.tokens:
            return None
        total = sum(self.tokens.get(p, 0) * n for p, n in self.to_send.items())
        all_items = sum(self.to_send.values())
        if self.limit is not None and all_items > self.limit:
            return round(total * self.limit / all_items)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input, "output": self.output, "images": self.images,
            "items": self.items, "done": self.done, "invalid": self.invalid,
            "to_send": dict(self.to_send), "sending": self.sending, "limit": self.limit,
            "files_hashed": self.hashed, "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_per_item": dict(self.tokens), "prompt_tokens_from": self.tokens_how,
        }  # fmt: skip


def _files(job: Job, keys: ItemKeys) -> Iterator[ImageFile]:
    """The input's files, only the run's shard's (``feed.input_files``)."""
    root = job.input.root
    if job.input.manifest is None and isinstance(root, Path) and not root.is_dir():
        raise ConfigError(f"input folder {root} does not exist (or is not a folder)")
    return input_files(job, keys)


def survey(job: Job) -> DryRun:
    """Walk the input and sort its items into done / invalid / to send (blocking)."""
    out = output_place(job.run.output)
    state = state_folder(job.run.output, job.run.state_dir)
    fs = input_fs(job)
    report = DryRun(
        input=str(job.input.manifest or job.input.root),
        output=str(out),
        limit=job.run.limit,
        to_send={p.name: 0 for p in job.prompts},
    )
    done: set[str] = set()
    cache: HashCache | None = None
    if out.is_dir():
        done = load_done_keys(out, include_invalid=not job.run.retry_invalid)
    if (state / HASHES_NAME).is_file():
        cache = HashCache(state / HASHES_NAME, readonly=True)
    keys = ItemKeys(job)
    n_prompts = len(job.prompts)
    files = _files(job, keys)
    try:
        while batch := list(itertools.islice(files, BATCH)):
            on_disk = [f for f in batch if f.data is None and f.error is None]
            cached = (
                dict(
                    zip(
                        (f.relpath for f in on_disk),
                        cache.lookup_many(
                            [(f.relpath, f.size, f.mtime_ns, f.ctime_ns, f.ino) for f in on_disk]
                        ),
                        strict=True,
                    )
                )
                if cache is not None
                else {}
            )
            for f in batch:
                report.images += 1
                report.items += n_prompts
                if f.error is not None:
                    report.invalid += n_prompts
                    continue
                sha = _sha(f, cached.get(f.relpath), bool(done), report, fs)
                todo = keys.pending(f, sha, done)
                report.done += n_prompts - len(todo)
                for p in todo:
                    if p.error is not None:
                        report.invalid += 1
                        continue
                    report.to_send[p.prompt.name] += 1
                    if p.prompt.name not in report.samples:
                        report.samples[p.prompt.name] = Sample(f, p.text)
    finally:
        if cache is not None:
            cache.close()
    return report


def _sha(
    f: ImageFile, cached: str | None, need: bool, report: DryRun, fs: FileSystem | None
) -> str:
    """The file's sha256 when a key could be done (else any value: no key is done)."""
    if f.data is not None:
        return hashlib.sha256(f.data).hexdigest()
    if cached is not None or not need:
        return cached or ""
    try:
        _, sha = read_file(f.full, fs)
    except InvalidImageError:
        return ""
    report.hashed += 1
    return sha


async def count_tokens(job: Job, report: DryRun, api_key: str | None) -> None:
    """Prompt tokens per item of each prompt: the server's ``/tokenize``, else an estimate."""
    bodies: dict[str, dict[str, Any]] = {}
    for prompt in job.prompts:
        sample = report.samples.get(prompt.name)
        if sample is None:
            continue
        try:
            raw = sample.file.data
            if raw is None:
                fs = input_fs(job)
                raw, _ = read_file(sample.file.full, fs)
            image = encode_image(raw, job.image)
        except InvalidImageError:
            continue
        bodies[prompt.name] = build_body(job.endpoint.model, prompt, sample.text, image.data_uri)
    if not bodies:
        return
    base = job.endpoint.urls[0]
    root = base.removesuffix("/").removesuffix("/v1")
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=job.endpoint.connect_timeout),
        headers=auth_headers(api_key),
        verify=tls_for(job.endpoint),
    ) as client:
        counts: dict[str, int] = {}
        for name, body in bodies.items():
            try:
                response = await client.post(
                    root + "/tokenize", json={"model": body["model"], "messages": body["messages"]}
                )
                count = response.json().get("count") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                count = None
            if not isinstance(count, int):
                break
            counts[name] = count
        else:
            report.tokens, report.tokens_how = counts, f"the server's {root}/tokenize"
            return
    report.tokens = {name: _estimate(body) for name, body in bodies.items()}
    report.tokens_how = (
        "a rough estimate: the server has no /tokenize (text at 4 UTF-8 bytes per token, "
        f"{EST_TOKENS_PER_IMAGE} tokens per image as Gemma 3)"
    )


def _estimate(body: dict[str, Any]) -> int:
    total = 4
    for message in body["messages"]:
        total += EST_TOKENS_PER_MESSAGE
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "text":
                total += math.ceil(len(part["text"].encode()) / EST_BYTES_PER_TOKEN)
            else:
                total += EST_TOKENS_PER_IMAGE
    return total


async def dry_run(job: Job, api_key: str | None) -> DryRun:
    await preflight(job, api_key, probe_schemas=False)  # its schema probe is a chat request
    report = await anyio.to_thread.run_sync(survey, job)
    await count_tokens(job, report, api_key)
    return report


def format_dry_run(r: DryRun) -> str:
    lines = ["dry run: no chat request sent, nothing written"]
    lines.append(f"  input   {r.input}: {r.images:,} image{'s' * (r.images != 1)}")
    lines.append(
        f"  items   {r.items:,} (image x prompt): {r.done:,} already done, "
        f"{r.invalid:,} invalid, {sum(r.to_send.values()):,} to send"
    )
    if len(r.to_send) > 1:
        lines.append("          " + ", ".join(f"{p} {n:,}" for p, n in r.to_send.items()))
    if r.limit is not None:
        lines.append(f"  limit   --limit {r.limit}: this run would send {r.sending:,}")
    tokens = r.prompt_tokens
    if tokens is not None:
        per = ", ".join(f"{p} {n:,}" for p, n in r.tokens.items())
        lines.append(f"  tokens  ~{tokens:,} prompt tokens ({per} per item; {r.tokens_how})")
    if r.hashed:
        lines.append(f"  read    {r.hashed:,} files to learn their keys (not in the hash cache)")
    lines.append(f"  output  {r.output}")
    return "\n".join(lines)
