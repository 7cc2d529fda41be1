"""Job configuration: TOML job file + command-line overrides -> one frozen ``Job``.

Takes a job file path (optional) and a flat mapping of overrides (the CLI flags that were
given) and hands on a validated, fully resolved ``Job``. Relative paths in a job file resolve
against the job file's folder; relative paths given as flags resolve against the working
directory. Unknown keys are an error that names the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .templates import check_template

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_PATTERNS = (
    "*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.bmp", "*.tif", "*.tiff",
)  # fmt: skip
DEFAULT_API_KEY_ENVS = ("VLLM_API_KEY", "OPENAI_API_KEY")


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    url: str = "http://127.0.0.1:8102/v1"
    model: str = "gemma3-27b"
    api_key_env: str | None = None  # None: VLLM_API_KEY, then OPENAI_API_KEY
    timeout: float = 600.0  # seconds to wait for an answer (read timeout)
    connect_timeout: float = 10.0
    api_key_file: Path | None = None  # or: read the key from this file
    insecure: bool = False  # skip TLS certificate verification
    stream: bool = False  # ask for SSE streaming (gives time-to-first-token per row)
    extra_urls: tuple[str, ...] = ()  # more servers of the same model: load is spread

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.extra_urls)


@dataclass(frozen=True, slots=True)
class InputConfig:
    root: Path = Path(".")
    patterns: tuple[str, ...] = DEFAULT_PATTERNS


@dataclass(frozen=True, slots=True)
class ImageConfig:
    max_side: int = 896  # Gemma 3's vision input is 896 x 896
    jpeg_quality: int = 90
    max_pixels: int = 178_956_970  # larger images are refused (decompression-bomb guard)
    passthrough: bool = True  # send JPEGs that are already RGB, upright and small enough as is


@dataclass(frozen=True, slots=True)
class PromptConfig:
    name: str = "default"
    text: str = ""
    system: str | None = DEFAULT_SYSTEM
    max_tokens: int = 2048
    temperature: float = 0.7
    top_p: float = 0.9
    extra: Mapping[str, Any] = field(default_factory=dict)  # passed through into the body
    file: Path | None = None  # where ``text`` came from, for the record


_DEFAULT_PROMPT = PromptConfig()


@dataclass(frozen=True, slots=True)
class RunConfig:
    output: Path = Path("out")
    concurrency: int | None = None  # requests in flight; None = "auto" (adapts to the server)
    max_concurrency: int = 256  # upper bound for "auto"
    retries: int = 5  # attempts after the first
    flush_interval: float = 2.0  # seconds between Parquet part files
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    progress: bool = True
    max_outage: float = 1800.0  # seconds the server may stay unreachable before the run stops
    grace_period: float = 30.0  # seconds in-flight requests get to finish after SIGINT/SIGTERM
    retry_invalid: bool = False  # also redo images found invalid before (e.g. after max_pixels)


@dataclass(frozen=True, slots=True)
class Job:
    endpoint: EndpointConfig
    input: InputConfig
    image: ImageConfig
    prompts: tuple[PromptConfig, ...]
    run: RunConfig
    source: Path | None = None  # the job file, if any

    def public_dict(self) -> dict[str, Any]:
        """The resolved job as plain JSON-able data (holds no secret: only env var names)."""
        data = asdict(self)

        def clean(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        return {k: clean(v) for k, v in data.items()}


# --- schema: section -> key -> accepted types -------------------------------------------------

_NUM = (int, float)
_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "endpoint": {
        "url": (str, list),
        "model": (str,),
        "api_key_env": (str,),
        "api_key_file": (str,),
        "insecure": (bool,),
        "stream": (bool,),
        "timeout": _NUM,
        "connect_timeout": _NUM,
    },
    "input": {"root": (str,), "patterns": (list,)},
    "image": {
        "max_side": (int,),
        "jpeg_quality": (int,),
        "max_pixels": (int,),
        "passthrough": (bool,),
    },
    "prompt": {
        "name": (str,),
        "system": (str,),
        "text": (str,),
        "file": (str,),
        "max_tokens": (int,),
        "temperature": _NUM,
        "top_p": _NUM,
        "extra": (dict,),
    },
    "run": {
        "output": (str,),
        "concurrency": (int, str),
        "max_concurrency": (int,),
        "retries": (int,),
        "flush_interval": _NUM,
        "backoff_initial": _NUM,
        "backoff_max": _NUM,
        "retry_after_max": _NUM,
        "progress": (bool,),
        "max_outage": _NUM,
        "grace_period": _NUM,
        "retry_invalid": (bool,),
    },
}


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return ConfigError(
        f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(valid))}."
    )


def _check_table(table: Mapping[str, Any], section: str, where: str) -> None:
    schema = _SCHEMA[section]
    for key, value in table.items():
        if key not in schema:
            raise _unknown(key, list(schema), where)
        types = schema[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}.{key} must be {names}, got {value!r}")


def read_job_file(path: Path) -> dict[str, Any]:
    """Parse and check a job file; paths in it become absolute (relative to its folder)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    base = path.resolve().parent
    for key, value in raw.items():
        if key not in _SCHEMA:
            raise _unknown(key, [*_SCHEMA], f"job file {path}")
        if key == "prompt":
            if not isinstance(value, list):
                raise ConfigError("'prompt' must be an array of tables: write [[prompt]]")
            for i, table in enumerate(value):
                if not isinstance(table, dict):
                    raise ConfigError(
                        f'prompt #{i + 1} must be a table: write [[prompt]] with text = "..."'
                    )
                _check_table(table, "prompt", f"[[prompt]] #{i + 1}")
        elif not isinstance(value, dict):
            raise ConfigError(f"{key!r} must be a table: write [{key}]")
        else:
            _check_table(value, key, f"[{key}]")

    def absolute(p: str) -> str:
        return str((base / os.path.expanduser(p)).resolve())

    if "root" in raw.get("input", {}):
        raw["input"]["root"] = absolute(raw["input"]["root"])
    if "api_key_file" in raw.get("endpoint", {}):
        raw["endpoint"]["api_key_file"] = absolute(raw["endpoint"]["api_key_file"])
    if "output" in raw.get("run", {}):
        raw["run"]["output"] = absolute(raw["run"]["output"])
    for table in raw.get("prompt", []):
        if "file" in table:
            table["file"] = absolute(table["file"])
    raw["_source"] = str(path.resolve())
    return raw


@dataclass(frozen=True, slots=True)
class Overrides:
    """Settings given as command-line flags; ``None`` means not given."""

    endpoint: str | tuple[str, ...] | None = None  # several: requests are spread over them
    model: str | None = None
    api_key_env: str | None = None
    timeout: float | None = None
    input: str | None = None
    output: str | None = None
    prompt_file: str | None = None
    prompt: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    concurrency: int | str | None = None
    max_concurrency: int | None = None
    max_side: int | None = None
    retries: int | None = None
    flush_interval: float | None = None
    no_progress: bool = False
    connect_timeout: float | None = None
    patterns: tuple[str, ...] | None = None
    jpeg_quality: int | None = None
    backoff_initial: float | None = None
    backoff_max: float | None = None
    retry_after_max: float | None = None
    extra: Mapping[str, Any] | None = None  # merged into every prompt's extra
    max_outage: float | None = None
    grace_period: float | None = None
    api_key_file: str | None = None
    insecure: bool = False
    max_pixels: int | None = None
    retry_invalid: bool = False
    stream: bool = False
    reencode: bool = False  # never pass a JPEG through as it is


def apply_overrides(raw: dict[str, Any], ov: Overrides) -> dict[str, Any]:
    """Flags win over the job file. ``--prompt``/``--prompt-file`` replace all prompts."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    out["prompt"] = [dict(p) for p in raw.get("prompt", [])]

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    put(
        "endpoint",
        "url",
        [ov.endpoint] if isinstance(ov.endpoint, str) else ov.endpoint and list(ov.endpoint),
    )
    put("endpoint", "model", ov.model)
    put("endpoint", "api_key_env", ov.api_key_env)
    put("endpoint", "timeout", ov.timeout)
    put("endpoint", "connect_timeout", ov.connect_timeout)
    put(
        "endpoint",
        "api_key_file",
        None if ov.api_key_file is None else str(Path(ov.api_key_file).resolve()),
    )
    if ov.insecure:
        put("endpoint", "insecure", True)
    if ov.stream:
        put("endpoint", "stream", True)
    if ov.retry_invalid:
        put("run", "retry_invalid", True)
    if ov.reencode:
        put("image", "passthrough", False)
    put("image", "max_pixels", ov.max_pixels)
    put("input", "patterns", None if ov.patterns is None else list(ov.patterns))
    put("image", "jpeg_quality", ov.jpeg_quality)
    put("run", "backoff_initial", ov.backoff_initial)
    put("run", "backoff_max", ov.backoff_max)
    put("run", "retry_after_max", ov.retry_after_max)
    put("run", "max_outage", ov.max_outage)
    put("run", "grace_period", ov.grace_period)
    put("input", "root", None if ov.input is None else str(Path(ov.input).resolve()))
    put("run", "output", None if ov.output is None else str(Path(ov.output).resolve()))
    put("run", "concurrency", ov.concurrency)
    put("run", "max_concurrency", ov.max_concurrency)
    put("run", "retries", ov.retries)
    put("run", "flush_interval", ov.flush_interval)
    put("image", "max_side", ov.max_side)
    if ov.no_progress:
        put("run", "progress", False)
    if ov.prompt_file is not None or ov.prompt is not None:
        keep = out["prompt"][0] if out["prompt"] else {}
        new = {k: v for k, v in keep.items() if k not in ("text", "file", "name")}
        if ov.prompt_file is not None:
            new["file"] = str(Path(ov.prompt_file).resolve())
            new["name"] = Path(ov.prompt_file).stem
        else:
            new["text"] = ov.prompt
            new["name"] = "prompt"
        out["prompt"] = [new]
    if not out["prompt"]:
        out["prompt"] = [{}]
    for table in out["prompt"]:
        for key, value in (
            ("system", ov.system),
            ("max_tokens", ov.max_tokens),
            ("temperature", ov.temperature),
            ("top_p", ov.top_p),
        ):
            if value is not None:
                table[key] = value
        if ov.extra:
            table["extra"] = {**table.get("extra", {}), **ov.extra}
    return out


def _prompt(table: Mapping[str, Any], index: int) -> PromptConfig:
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
    check_template(text, f"{where} ({name})")
    p = PromptConfig(
        name=name,
        text=text,
        system=table.get("system", DEFAULT_SYSTEM) or None,
        max_tokens=table.get("max_tokens", _DEFAULT_PROMPT.max_tokens),
        temperature=float(table.get("temperature", _DEFAULT_PROMPT.temperature)),
        top_p=float(table.get("top_p", _DEFAULT_PROMPT.top_p)),
        extra=dict(table.get("extra", {})),
        file=file,
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
    de = EndpointConfig()
    urls = ep.get("url", de.url)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError("[endpoint] url must be a URL or a non-empty list of URLs")
    urls = [u.rstrip("/") for u in urls]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"[endpoint] url lists the same server twice: {urls}")
    endpoint = EndpointConfig(
        url=urls[0],
        extra_urls=tuple(urls[1:]),
        model=ep.get("model", de.model),
        api_key_env=ep.get("api_key_env"),
        api_key_file=Path(ep["api_key_file"]) if "api_key_file" in ep else None,
        insecure=ep.get("insecure", de.insecure),
        stream=ep.get("stream", de.stream),
        timeout=float(ep.get("timeout", de.timeout)),
        connect_timeout=float(ep.get("connect_timeout", de.connect_timeout)),
    )
    for url in endpoint.urls:
        if not url.startswith(("http://", "https://")) or len(url.split("/")[2:3][0]) == 0:
            raise ConfigError(
                f"endpoint url must be http(s)://HOST[:PORT]/v1, got {url!r} "
                "(example: http://127.0.0.1:8102/v1)"
            )
    if endpoint.timeout <= 0 or endpoint.connect_timeout <= 0:
        raise ConfigError("endpoint timeouts must be > 0 seconds")
    inp = raw.get("input", {})
    if "root" not in inp:
        raise ConfigError("no input folder: set [input] root in the job file or pass --input DIR")
    root = Path(inp["root"])
    if not root.is_dir():
        raise ConfigError(f"input folder does not exist or is not a folder: {root}")
    patterns = tuple(inp.get("patterns", DEFAULT_PATTERNS))
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError("[input] patterns must be a non-empty list of glob strings")
    im = raw.get("image", {})
    di = ImageConfig()
    image = ImageConfig(
        max_side=im.get("max_side", di.max_side),
        jpeg_quality=im.get("jpeg_quality", di.jpeg_quality),
        max_pixels=im.get("max_pixels", di.max_pixels),
        passthrough=im.get("passthrough", di.passthrough),
    )
    if image.max_pixels < 1:
        raise ConfigError(f"image max_pixels must be >= 1, got {image.max_pixels}")
    if image.max_side < 16:
        raise ConfigError(f"image max_side must be >= 16 pixels, got {image.max_side}")
    if not 1 <= image.jpeg_quality <= 100:
        raise ConfigError(f"image jpeg_quality must be 1..100, got {image.jpeg_quality}")
    prompts = tuple(_prompt(t, i) for i, t in enumerate(raw.get("prompt", [{}])))
    names = [p.name for p in prompts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"prompt names must be unique; repeated: {', '.join(dupes)}")
    rn = raw.get("run", {})
    if "output" not in rn:
        raise ConfigError("no output folder: set [run] output in the job file or pass --output DIR")
    d = RunConfig()
    run = RunConfig(
        output=Path(rn["output"]),
        concurrency=_concurrency(rn.get("concurrency", "auto")),
        max_concurrency=rn.get("max_concurrency", d.max_concurrency),
        retries=rn.get("retries", d.retries),
        flush_interval=float(rn.get("flush_interval", d.flush_interval)),
        backoff_initial=float(rn.get("backoff_initial", d.backoff_initial)),
        backoff_max=float(rn.get("backoff_max", d.backoff_max)),
        retry_after_max=float(rn.get("retry_after_max", d.retry_after_max)),
        progress=rn.get("progress", d.progress),
        max_outage=float(rn.get("max_outage", d.max_outage)),
        grace_period=float(rn.get("grace_period", d.grace_period)),
        retry_invalid=rn.get("retry_invalid", d.retry_invalid),
    )
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
    src = raw.get("_source")
    return Job(
        endpoint, InputConfig(root, patterns), image, prompts, run, Path(src) if src else None
    )


def load_job(path: Path | None, overrides: Overrides) -> Job:
    """Read the job file (if any), apply the flags, validate."""
    raw = read_job_file(path) if path is not None else {}
    return build_job(apply_overrides(raw, overrides))
