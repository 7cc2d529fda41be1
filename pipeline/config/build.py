"""Building the Job: checked raw tables (job file + flags) -> one validated, frozen ``Job``.

Takes the raw tables that ``jobfile`` and ``flags`` hand on and hands on a ``Job``: every
declared setting not given keeps its declared default, values become their declared types
(numbers to float, paths to ``Path``, lists to tuples), prompt files are read, and every value
is checked; a bad one is a ``ConfigError`` that says what to fix, raised before any request.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError
from ..schema import COLUMNS
from ..shards import parse_shard
from ..storage import is_uri, path_or_uri, uri_beside
from ..structured import check_schema, columns_of, merge_columns
from ..templates import check_template
from .settings import (
    DEFAULT_SYSTEM,
    SECTIONS,
    EndpointConfig,
    Job,
    PromptConfig,
    RunConfig,
    settings_of,
)

_CONVERT: dict[type, Any] = {float: float, Path: path_or_uri, tuple: tuple, dict: dict}


def _section(section: str, table: Mapping[str, Any], **derived: Any) -> Any:
    """The section's dataclass: the table's settings in their declared types, the declared
    defaults for the rest, and ``derived`` values (worked out by the caller) over both."""
    values = {
        s.key: _CONVERT.get(s.kind, lambda v: v)(table[s.key])
        for s in settings_of(section)
        if s.key in table and s.key not in derived
    }
    return SECTIONS[section](**{**values, **derived})


def _schema(value: Any, where: str) -> dict[str, Any] | None:
    """A prompt's schema: an inline table as is, or the JSON file a string names."""
    if value is None or isinstance(value, dict):
        return value
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: schema file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read schema file {path}: {exc}") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: schema file {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: schema file {path} must hold a JSON object (a JSON Schema)")
    return schema


def _prompt(table: Mapping[str, Any], index: int, columns: Collection[str] | None) -> PromptConfig:
    where = f"prompt #{index + 1}"
    if "text" in table and "file" in table:
        raise ConfigError(f"{where}: give either 'text' or 'file', not both")
    file: Path | None = None
    if "file" in table:
        file = Path(table["file"])
        try:
            text = file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{where}: prompt file not found: {file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read prompt file {file}: {exc}") from None
        name = table.get("name", file.stem)
    elif "text" in table:
        text = table["text"]
        name = table.get("name", f"prompt{index + 1}")
    else:
        raise ConfigError(
            f"{where} has no text: set 'text' or 'file' in [[prompt]], or pass "
            "--prompt-file FILE / --prompt TEXT"
        )
    if not text.strip():
        raise ConfigError(f"{where} ({name}) is empty")
    check_template(text, f"{where} ({name})", columns)
    system = table.get("system", DEFAULT_SYSTEM) or None  # "" = no system message
    schema = _schema(table.get("schema"), f"{where} ({name})")
    p: PromptConfig = _section(
        "prompt", table, name=name, text=text, system=system, file=file, schema=schema
    )
    if schema is not None:
        check_schema(schema, f"{where} ({name})")
        if "response_format" in p.extra:
            raise ConfigError(
                f"{where}: give either schema or extra.response_format, not both (schema sets "
                "the response_format itself)"
            )
    if p.max_tokens < 1:
        raise ConfigError(f"{where}: max_tokens must be at least 1, got {p.max_tokens}")
    if p.temperature < 0:
        raise ConfigError(f"{where}: temperature must be >= 0, got {p.temperature}")
    if not 0 < p.top_p <= 1:
        raise ConfigError(f"{where}: top_p must be in (0, 1], got {p.top_p}")
    reserved = {"model", "messages", "stream", "stream_options", "n"} & set(p.extra)
    if reserved:
        raise ConfigError(
            f"{where}: extra may not set {sorted(reserved)} (the pipeline sets the message and "
            "model itself and reads one non-streamed choice per request)"
        )
    try:
        json.dumps(p.extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: extra must be plain JSON values: {exc}") from None
    return p


def _input(inp: Mapping[str, Any]) -> tuple[Any, Collection[str] | None]:
    """The input section, and the template variables its manifest adds (None: known per row)."""
    if "root" in inp and "manifest" in inp:
        raise ConfigError("give either [input] root (a folder) or manifest (a file), not both")
    if "manifest" in inp:
        from ..manifest import open_manifest  # only manifest jobs read one

        given = inp["manifest"]
        folder = uri_beside(given, ".") if is_uri(given) else Path(given).parent
        inputs = _section("input", inp, root=folder)
        if len(set(inputs.keep)) != len(inputs.keep):
            raise ConfigError(f"[input] keep names a column twice: {list(inputs.keep)}")
        manifest = open_manifest(inputs.manifest, inputs.keep)
        if manifest.columns is None:
            return inputs, None
        return inputs, tuple(c for c in manifest.columns if c != "image")  # image: not text
    if "root" not in inp:
        raise ConfigError(
            "no input: set [input] root (a folder) or manifest (a file) in the job file, or "
            "pass --input DIR or --manifest FILE"
        )
    inputs = _section("input", inp)
    if inputs.keep:
        raise ConfigError("[input] keep copies manifest columns: it needs a manifest")
    if isinstance(inputs.root, str):  # a URI: listed when the run starts
        from ..storage import exists, resolve

        try:
            found = exists(resolve(inputs.root))
        except (OSError, OutputError) as exc:
            raise ConfigError(f"cannot reach the input {inputs.root}: {exc}") from None
        if not found:
            raise ConfigError(f"input {inputs.root}: no such bucket, or no objects under it")
    elif not inputs.root.is_dir():
        raise ConfigError(f"input folder does not exist or is not a folder: {inputs.root}")
    if not inputs.patterns or not all(isinstance(p, str) and p for p in inputs.patterns):
        raise ConfigError("[input] patterns must be a non-empty list of glob strings")
    return inputs, ()


def _concurrency(value: int | str) -> int | None:
    """``"auto"`` -> None; a number (or a numeric string from a flag) -> int."""
    if isinstance(value, int):
        return value
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'concurrency must be a number or "auto", got {value!r}') from None


def build_job(raw: Mapping[str, Any]) -> Job:
    """Turn checked raw settings into a validated ``Job``."""
    ep = raw.get("endpoint", {})
    urls = ep.get("url", EndpointConfig().url)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError("[endpoint] url must be a URL or a non-empty list of URLs")
    urls = [u.rstrip("/") for u in urls]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"[endpoint] url lists the same server twice: {urls}")
    endpoint = _section("endpoint", ep, url=urls[0], extra_urls=tuple(urls[1:]))
    for url in endpoint.urls:
        if not url.startswith(("http://", "https://")) or len(url.split("/")[2:3][0]) == 0:
            raise ConfigError(
                f"endpoint url must be http(s)://HOST[:PORT]/v1, got {url!r} "
                "(example: http://127.0.0.1:8102/v1)"
            )
    if endpoint.timeout <= 0 or endpoint.connect_timeout <= 0:
        raise ConfigError("endpoint timeouts must be > 0 seconds")

    inputs, columns = _input(raw.get("input", {}))

    image = _section("image", raw.get("image", {}))
    if image.max_pixels < 1:
        raise ConfigError(f"image max_pixels must be >= 1, got {image.max_pixels}")
    if image.max_side < 16:
        raise ConfigError(f"image max_side must be >= 16 pixels, got {image.max_side}")
    if not 1 <= image.jpeg_quality <= 100:
        raise ConfigError(f"image jpeg_quality must be 1..100, got {image.jpeg_quality}")

    prompts = tuple(_prompt(t, i, columns) for i, t in enumerate(raw.get("prompt", [{}])))
    names = [p.name for p in prompts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"prompt names must be unique; repeated: {', '.join(dupes)}")
    structured = merge_columns(
        [(p.name, columns_of(p.schema)) for p in prompts if p.schema is not None], COLUMNS
    )
    for name in inputs.keep:
        if name in COLUMNS or name in dict(structured):
            what = "a built-in output column" if name in COLUMNS else "a schema property"
            raise ConfigError(
                f"[input] keep: manifest column {name!r} has the name of {what}; rename the "
                "column in the manifest"
            )

    rn = raw.get("run", {})
    if "output" not in rn:
        raise ConfigError("no output folder: set [run] output in the job file or pass --output DIR")
    run: RunConfig = _section("run", rn, concurrency=_concurrency(rn.get("concurrency", "auto")))
    if run.max_outage < 0 or run.grace_period < 0:
        raise ConfigError("max_outage and grace_period must be >= 0 seconds")
    if run.concurrency is not None and run.concurrency < 1:
        raise ConfigError(f'concurrency must be at least 1 or "auto", got {run.concurrency}')
    if run.max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be at least 1, got {run.max_concurrency}")
    if run.retries < 0:
        raise ConfigError(f"retries must be >= 0, got {run.retries}")
    if run.flush_interval <= 0:
        raise ConfigError("flush_interval must be > 0 seconds")
    parse_shard(run.shard)  # "I/N" with 0 <= I < N, else a ConfigError
    if run.limit is not None and run.limit < 1:
        raise ConfigError(f"limit must be at least 1 item, got {run.limit}")
    if run.log_format not in ("text", "json"):
        raise ConfigError(f'log_format must be "text" or "json", got {run.log_format!r}')
    src = raw.get("_source")
    return Job(endpoint, inputs, image, prompts, run, Path(src) if src else None)
