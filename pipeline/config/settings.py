"""Every job setting, declared once: type, default, TOML section and key, flag and help.

A setting is a field of one of the frozen section dataclasses below, declared with
``setting(default, "--flag METAVAR", "help")``. The field's name is its TOML key, the class is
its section (``SECTIONS``), and its type annotation says which TOML values it accepts and how
its flag's text is read (``int``, ``float``, a path, a list, a JSON object). A flag without a
METAVAR is a one-way switch to the opposite of the default; no flag at all marks a job-file-only
setting. ``SETTINGS`` reads the declarations back; everything else loops over it: the job file's
key table and type checks (``jobfile``), the ``caption run`` flags and ``Overrides``
(``flags``), the ``Job`` (``build``) and the test that every setting has a flag and a README row.
"""

# setting() returns a dataclasses.field(), which ruff cannot tell: RUF009 does not apply.
# ruff: noqa: RUF009

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, get_args, get_origin, get_type_hints

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_PATTERNS = (
    "*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.bmp", "*.tif", "*.tiff",
)  # fmt: skip
DEFAULT_API_KEY_ENVS = ("VLLM_API_KEY", "OPENAI_API_KEY")


def setting(
    default: Any = None,
    flag: str | None = None,
    help: str = "",
    *,
    accepts: tuple[type, ...] | None = None,
    repeat: bool = False,
    dest: str | None = None,
    factory: Callable[[], Any] | None = None,
    path: bool = False,
) -> Any:
    """Declare a setting (a dataclass field). ``flag`` is ``"--name METAVAR"``, ``"--name"`` for a
    one-way switch, or None for job-file only; ``accepts`` replaces the TOML types derived from
    the annotation; ``repeat`` lets the flag be given several times; ``dest`` names it in
    ``Overrides`` when that is not the flag's name; ``path`` says a string value is a file path
    (relative to the job file, or to the working directory for a flag), as ``Path`` fields are."""
    meta = {
        "flag": flag, "help": help, "accepts": accepts, "repeat": repeat, "dest": dest,
        "path": path,
    }  # fmt: skip
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    url: str = setting(
        "http://127.0.0.1:8102/v1",
        "--endpoint URL",
        "OpenAI base URL, e.g. http://127.0.0.1:8102/v1 (repeat for several servers)",
        accepts=(str, list),
        repeat=True,
    )
    model: str = setting("gemma3-27b", "--model NAME", "served model name, e.g. gemma3-27b")
    api_key_env: str | None = setting(  # None: VLLM_API_KEY, then OPENAI_API_KEY
        None, "--api-key-env VAR", "environment variable holding the API key"
    )
    timeout: float = setting(600.0, "--timeout S", "seconds to wait for one answer")
    connect_timeout: float = setting(10.0, "--connect-timeout S", "seconds to connect")
    api_key_file: Path | None = setting(None, "--api-key-file FILE", "read the API key from FILE")
    insecure: bool = setting(False, "--insecure", "do not verify the server's TLS certificate")
    stream: bool = setting(False, "--stream", "stream answers (records time to first token)")
    extra_urls: tuple[str, ...] = ()  # from a list in ``url``: more servers of the same model

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.extra_urls)


@dataclass(frozen=True, slots=True)
class InputConfig:
    root: Path | str = setting(  # str: a URI (s3://bucket/prefix), see storage.py
        Path("."), "--input DIR", "folder of images (walked recursively), or a URI (s3://b/p)"
    )
    patterns: tuple[str, ...] = setting(
        DEFAULT_PATTERNS, "--pattern GLOB", "file-name glob, any case (repeatable)", dest="patterns"
    )
    manifest: Path | str | None = setting(  # str: a URI, as for root
        None,
        "--manifest FILE",
        "CSV, JSONL or Parquet list of images (instead of --input); or a URI",
    )
    keep: tuple[str, ...] = setting(
        (), "--keep COL", "manifest column copied into the output rows (repeatable)", dest="keep"
    )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    max_side: int = setting(896, "--max-side PX", "longest image side sent")  # Gemma 3's 896 px
    jpeg_quality: int = setting(90, "--jpeg-quality Q", "JPEG quality sent")
    max_pixels: int = setting(178_956_970, "--max-pixels N", "larger images are invalid rows")
    passthrough: bool = setting(  # send JPEGs already RGB, upright and small enough as they are
        True, "--reencode", "re-encode every image, even JPEGs already fit to send as they are"
    )


@dataclass(frozen=True, slots=True)
class PromptConfig:
    name: str = setting("default", None, "the prompt_name column (flags name their prompt)")
    text: str = setting("", "--prompt TEXT", "prompt text")
    system: str | None = setting(DEFAULT_SYSTEM, "--system TEXT", "system message ('' for none)")
    max_tokens: int = setting(2048, "--max-tokens N", "longest answer, in tokens")
    temperature: float = setting(0.7, "--temperature X", "sampling temperature")
    top_p: float = setting(0.9, "--top-p X", "nucleus sampling probability mass")
    extra: Mapping[str, Any] = setting(
        flag="--extra JSON", help="more body fields, e.g. '{\"top_k\": 40}'", factory=dict
    )
    file: Path | None = setting(None, "--prompt-file FILE", "prompt text from a file")
    image_first: bool = setting(
        False,
        "--image-first",
        "send the image before the prompt text: vLLM's prefix cache then reuses the image's "
        "tokens across the prompts of one image",
    )
    schema: Mapping[str, Any] | None = setting(
        None,
        "--schema FILE",
        "JSON Schema the answer must follow (a file, or an inline table in the job file); "
        "its top-level properties become typed output columns",
        accepts=(str, dict),
        path=True,
    )


@dataclass(frozen=True, slots=True)
class RunConfig:
    output: Path | str = setting(  # str: a URI (s3://bucket/prefix), see storage.py
        Path("out"), "--output DIR", "Parquet dataset folder (created), or a URI (s3://b/p)"
    )
    concurrency: int | None = setting(  # None = "auto" (adapts to the server)
        None,
        "--concurrency N|auto",
        "requests in flight (default auto: adapts)",
        accepts=(int, str),
    )
    max_concurrency: int = setting(256, "--max-concurrency N", "upper bound for auto")
    retries: int = setting(5, "--retries N", "retries per item after the first")
    flush_interval: float = setting(2.0, "--flush-interval S", "seconds between part files")
    backoff_initial: float = setting(0.5, "--backoff-initial S", "first retry wait cap")
    backoff_max: float = setting(30.0, "--backoff-max S", "longest retry wait")
    retry_after_max: float = setting(60.0, "--retry-after-max S", "cap on Retry-After")
    progress: bool = setting(True, "--no-progress", "log lines instead of a bar")
    max_outage: float = setting(1800.0, "--max-outage S", "give up after the server is away S s")
    grace_period: float = setting(30.0, "--grace-period S", "after Ctrl-C, let requests finish")
    retry_invalid: bool = setting(False, "--retry-invalid", "redo images that were invalid before")
    shard: str | None = setting(
        None,
        "--shard I/N",
        "take only shard I of N (0..N-1) of the images: N runs, e.g. on N machines, split a job "
        "into one output with no coordination",
    )
    limit: int | None = setting(
        None, "--limit N", "send at most N items (image x prompt) in this run, for a first look"
    )
    state_dir: Path | None = setting(
        None,
        "--state-dir DIR",
        "for a URI output: the local folder for its lock, journal and hash cache (default: a "
        "folder under ~/.cache/caption/state); a local output keeps them in itself",
    )
    log_file: Path | None = setting(None, "--log-file FILE", "also append the log to FILE")
    log_format: str = setting(
        "text", "--log-format text|json", "json: one JSON object per line (time, level, event...)"
    )


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


# --- reading the declarations back ------------------------------------------------------------

SECTIONS: dict[str, type[Any]] = {
    "endpoint": EndpointConfig,
    "input": InputConfig,
    "image": ImageConfig,
    "prompt": PromptConfig,  # [[prompt]]: an array of tables, one PromptConfig each
    "run": RunConfig,
}
ARRAYS = {"prompt"}  # sections written as arrays of tables: [[prompt]]
TOML_TYPES: dict[type, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), Path: (str,),
    tuple: (list,), dict: (dict,),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting, as the job file, the flags and the docs see it."""

    section: str  # its TOML table (and ``Job`` part)
    key: str  # its TOML key = the field's name
    kind: type  # str, int, float, bool, Path, tuple or dict (the annotation without None)
    default: Any
    accepts: tuple[type, ...]  # TOML value types
    flag: str | None  # "--max-side"; None: job file only
    metavar: str | None  # None (with a flag): a one-way switch to ``not default``
    help: str
    repeat: bool  # the flag may be given several times (a list)
    dest: str  # its name in ``Overrides`` and argparse: the flag's name, ``--max-side`` -> max_side
    path: bool = False  # a string value is a file path (``Path`` fields, and e.g. ``schema``)

    @property
    def switch(self) -> bool:
        return self.flag is not None and self.metavar is None

    @property
    def where(self) -> str:
        """``[run] output``, ``[[prompt]] text``: how the README's job-file table names it."""
        table = f"[[{self.section}]]" if self.section in ARRAYS else f"[{self.section}]"
        return f"{table} {self.key}"


def _kind(hint: Any) -> type:
    """``int | None`` -> int, ``tuple[str, ...]`` -> tuple, ``Mapping[str, Any]`` -> dict."""
    if isinstance(hint, UnionType):
        args = [a for a in get_args(hint) if a is not NoneType]
        (hint,) = [Path] if Path in args else args  # Path | str: a path or a URI
    base = get_origin(hint) or hint
    return dict if base is Mapping else tuple if base is tuple else base


def _read(section: str, f: Field[Any], hint: Any) -> Setting:
    meta = f.metadata
    kind = _kind(hint)
    flag, _, metavar = (meta["flag"] or "").partition(" ")
    factory = f.default_factory
    default = factory() if callable(factory) else f.default
    return Setting(
        section=section,
        key=f.name,
        kind=kind,
        default=default,
        accepts=meta["accepts"] or TOML_TYPES[kind],
        flag=flag or None,
        metavar=metavar or None,
        help=meta["help"],
        repeat=meta["repeat"] or kind is tuple,
        dest=meta["dest"] or flag.lstrip("-").replace("-", "_") or f.name,
        path=kind is Path or meta["path"],
    )


SETTINGS: tuple[Setting, ...] = tuple(
    _read(section, f, get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items()
    for f in fields(cls)
    if "flag" in f.metadata  # fields without a declaration are derived (extra_urls)
)


def settings_of(section: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.section == section)
