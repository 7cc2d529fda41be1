"""Job configuration: TOML job file + flags -> a validated ``Job``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipeline.config import (
    DEFAULT_PATTERNS,
    DEFAULT_SYSTEM,
    EndpointConfig,
    ImageConfig,
    Job,
    Overrides,
    load_job,
)
from pipeline.errors import ConfigError

DEFAULT_PROMPT = 'file = "../prompts/describe.txt"'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with jobs/, images/ and prompts/describe.txt (the job files live in jobs/)."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "describe.txt").write_text("  Describe $filename.\n\n")
    (tmp_path / "prompts" / "tags.txt").write_text("List tags for $relpath.")
    return tmp_path


def write_job(
    project: Path,
    *,
    top: str = "",
    endpoint: str = "",
    input_: str = 'root = "../images"',
    image: str = "",
    prompt: str = DEFAULT_PROMPT,
    run: str = 'output = "../out"',
    name: str = "job.toml",
) -> Path:
    """Write jobs/<name>; each section is emitted only when it has content."""
    parts = [top]
    for header, body in (
        ("[endpoint]", endpoint),
        ("[input]", input_),
        ("[image]", image),
        ("[[prompt]]", prompt),
        ("[run]", run),
    ):
        if body:
            parts += [header, body]
    path = project / "jobs" / name
    path.write_text("\n".join(parts) + "\n")
    return path


class TestLoadJob:
    def test_defaults_from_minimal_job(self, project: Path) -> None:
        """A job with only input, output and a prompt gets the documented defaults."""
        job = load_job(write_job(project), Overrides())
        assert job.endpoint == EndpointConfig()
        assert job.input.patterns == DEFAULT_PATTERNS
        assert job.image.max_side == 896
        assert job.image.jpeg_quality == 90
        assert job.run.concurrency is None  # "auto"
        assert job.run.max_concurrency == 256
        assert job.run.retries == 5
        assert job.run.progress is True
        [prompt] = job.prompts
        assert prompt.system == DEFAULT_SYSTEM
        assert (prompt.max_tokens, prompt.temperature, prompt.top_p) == (2048, 0.7, 0.9)
        assert job.source == (project / "jobs" / "job.toml").resolve()

    def test_full_job(self, project: Path) -> None:
        """Every section's values are read into the Job."""
        path = write_job(
            project,
            endpoint='url = "https://gpu.example:8000/v1/"\nmodel = "m"\n'
            'api_key_env = "K"\ntimeout = 30\nconnect_timeout = 2.5',
            input_='root = "../images"\npatterns = ["*.png"]',
            image="max_side = 512\njpeg_quality = 80\npassthrough = false",
            prompt='name = "d"\ntext = "Hi $stem"\nsystem = "S"\nmax_tokens = 64\n'
            "temperature = 0\ntop_p = 1\nextra = { seed = 3 }",
            run='output = "../out"\nconcurrency = 4\nretries = 0\nflush_interval = 0.5\n'
            "backoff_initial = 1\nbackoff_max = 9\nretry_after_max = 10\nprogress = false",
        )
        job = load_job(path, Overrides())
        assert job.endpoint == EndpointConfig(
            "https://gpu.example:8000/v1", "m", "K", timeout=30.0, connect_timeout=2.5
        )
        assert job.input.patterns == ("*.png",)
        assert job.image == ImageConfig(max_side=512, jpeg_quality=80, passthrough=False)
        [p] = job.prompts
        assert (p.name, p.text, p.system, p.max_tokens) == ("d", "Hi $stem", "S", 64)
        assert (p.temperature, p.top_p, dict(p.extra), p.file) == (0.0, 1.0, {"seed": 3}, None)
        r = job.run
        assert (r.concurrency, r.retries, r.flush_interval, r.progress) == (4, 0, 0.5, False)
        assert (r.backoff_initial, r.backoff_max, r.retry_after_max) == (1.0, 9.0, 10.0)

    def test_relative_paths_resolve_against_job_folder(
        self,
        project: Path,
        tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """root, output and prompt files are relative to the job file, not the working dir."""
        monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
        job = load_job(write_job(project), Overrides())
        assert job.input.root == (project / "images").resolve()
        assert job.run.output == (project / "out").resolve()
        [prompt] = job.prompts
        assert prompt.file == (project / "prompts" / "describe.txt").resolve()
        assert prompt.text == "Describe $filename."  # read and stripped
        assert prompt.name == "describe"  # the file's stem

    def test_absolute_paths_are_kept(self, project: Path) -> None:
        """Absolute paths in the job file are used as they are."""
        images = project / "images"
        path = write_job(project, input_=f'root = "{images}"', run=f'output = "{project}/o"')
        job = load_job(path, Overrides())
        assert job.input.root == images.resolve()
        assert job.run.output == (project / "o").resolve()

    def test_several_prompts(self, project: Path) -> None:
        """Each [[prompt]] becomes one PromptConfig, in order."""
        path = write_job(
            project,
            prompt=f'{DEFAULT_PROMPT}\n[[prompt]]\nfile = "../prompts/tags.txt"\n'
            'max_tokens = 64\n[[prompt]]\nname = "inline"\ntext = "Caption $stem"',
        )
        job = load_job(path, Overrides())
        assert [p.name for p in job.prompts] == ["describe", "tags", "inline"]
        assert job.prompts[1].max_tokens == 64
        assert job.prompts[2].file is None

    def test_empty_system_means_no_system_message(self, project: Path) -> None:
        """system = "" turns the system message off (None)."""
        job = load_job(write_job(project, prompt='text = "x"\nsystem = ""'), Overrides())
        assert job.prompts[0].system is None

    def test_public_dict_is_json_serialisable(self, project: Path) -> None:
        """public_dict() round-trips through JSON with paths as strings."""
        path = write_job(
            project,
            endpoint='api_key_env = "MY_KEY"',
            prompt=f"{DEFAULT_PROMPT}\nextra = {{a = 1}}",
        )
        job = load_job(path, Overrides())
        data = json.loads(json.dumps(job.public_dict()))
        assert data["input"]["root"] == str((project / "images").resolve())
        assert data["run"]["output"] == str((project / "out").resolve())
        assert data["source"] == str(path.resolve())
        assert data["endpoint"]["api_key_env"] == "MY_KEY"
        assert data["prompts"][0]["extra"] == {"a": 1}
        assert data["input"]["patterns"] == list(DEFAULT_PATTERNS)
        assert set(data) == {"endpoint", "input", "image", "prompts", "run", "source"}


def _get(attr: str) -> Callable[[Job], Any]:
    def get(job: Job) -> Any:
        value: Any = job
        for part in attr.split("."):
            value = value[int(part)] if part.isdigit() else getattr(value, part)
        return value

    return get


class TestOverrides:
    @pytest.mark.parametrize(
        ("overrides", "attr", "expected"),
        [
            (Overrides(endpoint="http://h:1/v1/"), "endpoint.url", "http://h:1/v1"),
            (Overrides(model="other"), "endpoint.model", "other"),
            (Overrides(api_key_env="K2"), "endpoint.api_key_env", "K2"),
            (Overrides(timeout=5.0), "endpoint.timeout", 5.0),
            (Overrides(concurrency=8), "run.concurrency", 8),
            (Overrides(retries=0), "run.retries", 0),
            (Overrides(flush_interval=0.25), "run.flush_interval", 0.25),
            (Overrides(no_progress=True), "run.progress", False),
            (Overrides(max_side=256), "image.max_side", 256),
            (Overrides(max_tokens=50), "prompts.0.max_tokens", 50),
            (Overrides(max_tokens=50), "prompts.1.max_tokens", 50),
            (Overrides(temperature=0.0), "prompts.0.temperature", 0.0),
            (Overrides(top_p=0.5), "prompts.1.top_p", 0.5),
            (Overrides(system="Be brief."), "prompts.1.system", "Be brief."),
            (Overrides(system=""), "prompts.0.system", None),
            (Overrides(connect_timeout=1.5), "endpoint.connect_timeout", 1.5),
            (Overrides(patterns=("*.png", "*.JPG")), "input.patterns", ("*.png", "*.JPG")),
            (Overrides(jpeg_quality=70), "image.jpeg_quality", 70),
            (Overrides(reencode=True), "image.passthrough", False),
            (Overrides(backoff_initial=0.1), "run.backoff_initial", 0.1),
            (Overrides(backoff_max=3.0), "run.backoff_max", 3.0),
            (Overrides(retry_after_max=9.0), "run.retry_after_max", 9.0),
            (Overrides(extra={"stop": ["x"]}), "prompts.0.extra", {"seed": 1, "stop": ["x"]}),
            (Overrides(extra={"seed": 5}), "prompts.0.extra", {"seed": 5}),
            (Overrides(extra={"seed": 5}), "prompts.1.extra", {"seed": 5}),
            (Overrides(), "prompts.0.extra", {"seed": 1}),
            (Overrides(), "run.concurrency", 4),
            (Overrides(), "prompts.0.max_tokens", 100),
            (Overrides(no_progress=False), "run.progress", True),
        ],
    )
    def test_flags_win_over_file(
        self, project: Path, overrides: Overrides, attr: str, expected: Any
    ) -> None:
        """A given flag replaces the job file's value; an absent flag keeps it."""
        path = write_job(
            project,
            endpoint='url = "http://file:2/v1"\nmodel = "file-model"\napi_key_env = "K1"\n'
            "timeout = 60",
            image="max_side = 512",
            prompt=f'{DEFAULT_PROMPT}\nmax_tokens = 100\nsystem = "file system"\n'
            "extra = { seed = 1 }\n"
            '[[prompt]]\ntext = "two"\nmax_tokens = 200\ntop_p = 0.8',
            run='output = "../out"\nconcurrency = 4\nretries = 3\nflush_interval = 5\n'
            "progress = true",
        )
        assert _get(attr)(load_job(path, overrides)) == expected

    def test_flag_paths_resolve_against_working_dir(
        self, project: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--input/--output/--prompt-file given as relative paths use the working directory."""
        (project / "cwd" / "pics").mkdir(parents=True)
        (project / "cwd" / "ask.txt").write_text("Describe $stem")
        monkeypatch.chdir(project / "cwd")
        job = load_job(
            write_job(project),
            Overrides(input="pics", output="results", prompt_file="ask.txt"),
        )
        assert job.input.root == (project / "cwd" / "pics").resolve()
        assert job.run.output == (project / "cwd" / "results").resolve()
        assert job.prompts[0].file == (project / "cwd" / "ask.txt").resolve()

    def test_prompt_file_replaces_all_prompts(self, project: Path) -> None:
        """--prompt-file replaces every [[prompt]] but keeps the first one's settings."""
        path = write_job(
            project,
            prompt=f'{DEFAULT_PROMPT}\nname = "first"\nmax_tokens = 77\nsystem = "S1"\n'
            '[[prompt]]\ntext = "second"',
        )
        other = project / "prompts" / "tags.txt"
        job = load_job(path, Overrides(prompt_file=str(other)))
        [prompt] = job.prompts
        assert prompt.name == "tags"
        assert prompt.text == "List tags for $relpath."
        assert prompt.file == other.resolve()
        assert (prompt.max_tokens, prompt.system) == (77, "S1")

    def test_prompt_text_flag_replaces_file_prompt(self, project: Path) -> None:
        """--prompt TEXT replaces a file prompt (no text+file conflict) and is named 'prompt'."""
        job = load_job(write_job(project), Overrides(prompt="Caption $stem"))
        [prompt] = job.prompts
        assert (prompt.name, prompt.text, prompt.file) == ("prompt", "Caption $stem", None)

    def test_prompt_file_wins_over_prompt_text(self, project: Path) -> None:
        """Given both, --prompt-file is used and --prompt is ignored (as it always was)."""
        other = project / "prompts" / "tags.txt"
        job = load_job(write_job(project), Overrides(prompt="ignored", prompt_file=str(other)))
        [prompt] = job.prompts
        assert (prompt.name, prompt.file) == ("tags", other.resolve())

    def test_empty_extra_flag_changes_nothing(self, project: Path) -> None:
        """--extra '{}' leaves every prompt's extra as the job file has it."""
        path = write_job(project, prompt=f"{DEFAULT_PROMPT}\nextra = {{ seed = 1 }}")
        assert load_job(path, Overrides(extra={})).prompts[0].extra == {"seed": 1}

    def test_no_job_file_only_flags(self, project: Path) -> None:
        """Without a job file, flags alone make a complete job with defaults elsewhere."""
        job = load_job(
            None,
            Overrides(
                input=str(project / "images"),
                output=str(project / "o"),
                prompt="Describe $filename",
                model="gemma3-4b",
            ),
        )
        assert job.source is None
        assert job.input.root == (project / "images").resolve()
        assert job.run.output == (project / "o").resolve()
        assert job.endpoint.model == "gemma3-4b"
        assert job.endpoint.url == EndpointConfig().url
        assert [p.text for p in job.prompts] == ["Describe $filename"]
        json.dumps(job.public_dict())

    def test_no_job_file_with_prompt_file(self, project: Path) -> None:
        """Without a job file, --prompt-file supplies the single prompt."""
        job = load_job(
            None,
            Overrides(
                input=str(project / "images"),
                output=str(project / "o"),
                prompt_file=str(project / "prompts" / "describe.txt"),
            ),
        )
        assert [(p.name, p.text) for p in job.prompts] == [("describe", "Describe $filename.")]


# the names users' scripts and the benches construct Overrides with (its fields until now)
OVERRIDE_NAMES = (
    "endpoint", "model", "api_key_env", "timeout", "input", "output", "prompt_file", "prompt",
    "system", "max_tokens", "temperature", "top_p", "concurrency", "max_concurrency", "max_side",
    "retries", "flush_interval", "no_progress", "connect_timeout", "patterns", "jpeg_quality",
    "backoff_initial", "backoff_max", "retry_after_max", "extra", "max_outage", "grace_period",
    "api_key_file", "insecure", "max_pixels", "retry_invalid", "stream", "reencode",
)  # fmt: skip


class TestOverridesObject:
    @pytest.mark.parametrize("name", OVERRIDE_NAMES)
    def test_every_flag_name_is_accepted(self, name: str) -> None:
        """Overrides takes each flag by its field name, and reads it back."""
        assert getattr(Overrides(**{name: "x"}), name) == "x"

    def test_absent_flags_read_as_not_given(self) -> None:
        """A flag not given reads as None, a switch not given as False."""
        ov = Overrides()
        assert (ov.max_tokens, ov.endpoint) == (None, None)
        assert (ov.no_progress, ov.reencode) == (False, False)
        assert Overrides(no_progress=False) == Overrides(max_tokens=None) == ov

    def test_unknown_name_is_a_type_error(self) -> None:
        """A misspelt name fails at once, like a dataclass keyword would."""
        with pytest.raises(TypeError, match="max_token"):
            Overrides(max_token=5)

    def test_immutable_and_compared_by_value(self) -> None:
        """Overrides cannot be changed after construction and compares by the flags given."""
        ov = Overrides(max_tokens=16)
        with pytest.raises(AttributeError):
            ov.max_tokens = 32
        assert ov == Overrides(max_tokens=16) != Overrides(max_tokens=17)
        assert "max_tokens=16" in repr(ov)


class TestUnknownKeys:
    @pytest.mark.parametrize(
        ("parts", "key", "suggestion", "where"),
        [
            ({"run": 'output = "../out"\nconcurency = 4'}, "concurency", "concurrency", "[run]"),
            ({"top": "[endpont]\nurl = 'http://x'"}, "endpont", "endpoint", "job file"),
            ({"top": "promt = 1"}, "promt", "prompt", "job file"),
            ({"endpoint": 'modle = "m"'}, "modle", "model", "[endpoint]"),
            ({"endpoint": "time_out = 3"}, "time_out", "timeout", "[endpoint]"),
            ({"input_": 'root = "../images"\npattern = []'}, "pattern", "patterns", "[input]"),
            ({"image": "max_sid = 512"}, "max_sid", "max_side", "[image]"),
            (
                {"prompt": f"{DEFAULT_PROMPT}\nmax_token = 5"},
                "max_token",
                "max_tokens",
                "[[prompt]] #1",
            ),
            (
                {"prompt": f'{DEFAULT_PROMPT}\n[[prompt]]\ntext = "x"\ntemprature = 0.1'},
                "temprature",
                "temperature",
                "[[prompt]] #2",
            ),
        ],
    )
    def test_unknown_key_names_key_and_suggests(
        self, project: Path, parts: dict[str, str], key: str, suggestion: str, where: str
    ) -> None:
        """An unknown key is a ConfigError naming it, where it is, and the nearest valid key."""
        with pytest.raises(ConfigError) as info:
            load_job(write_job(project, **parts), Overrides())
        message = str(info.value)
        assert repr(key) in message
        assert f"Did you mean {suggestion!r}?" in message
        assert where in message

    def test_unknown_key_without_near_match_lists_valid_keys(self, project: Path) -> None:
        """A key with no close match gets no suggestion but the list of valid keys."""
        with pytest.raises(ConfigError) as info:
            load_job(write_job(project, image="zzzzzz = 1"), Overrides())
        message = str(info.value)
        assert "'zzzzzz'" in message
        assert "Did you mean" not in message
        assert "jpeg_quality, max_pixels, max_side" in message


class TestInvalid:
    @pytest.mark.parametrize(
        ("parts", "match"),
        [
            ({"run": 'output = "../out"\nconcurrency = "lots"'}, 'must be a number or "auto"'),
            ({"run": 'output = "../out"\nconcurrency = 2.5'}, "concurrency must be int or str"),
            ({"run": 'output = "../out"\nprogress = 1'}, "progress must be bool"),
            ({"run": "output = 3"}, "output must be str"),
            ({"prompt": f"{DEFAULT_PROMPT}\nmax_tokens = true"}, "max_tokens must be int"),
            ({"prompt": f'{DEFAULT_PROMPT}\ntemperature = "hot"'}, "temperature must be int or"),
            ({"prompt": f"{DEFAULT_PROMPT}\nextra = 3"}, "extra must be dict"),
            ({"endpoint": 'timeout = "10"'}, "timeout must be int or float"),
            ({"endpoint": "url = 8102"}, "url must be str"),
            ({"input_": 'root = "../images"\npatterns = "*.jpg"'}, "patterns must be list"),
            ({"image": "max_side = 512.0"}, "max_side must be int"),
            ({"top": "image = 3"}, "'image' must be a table"),
            ({"top": "[[run]]\nx = 1", "run": ""}, "'run' must be a table"),
            ({"top": 'prompt = "x"', "prompt": ""}, "array of tables"),
            ({"top": "this is = = not toml"}, "not valid TOML"),
        ],
    )
    def test_wrong_types_and_shapes(self, project: Path, parts: dict[str, str], match: str) -> None:
        """A value of the wrong type or a section of the wrong shape is a ConfigError."""
        with pytest.raises(ConfigError, match=match):
            load_job(write_job(project, **parts), Overrides())

    def test_prompt_array_of_strings_is_config_error(self, project: Path) -> None:
        """`prompt = ["..."]` (an array but not of tables) is a ConfigError, not a crash."""
        path = write_job(project, top='prompt = ["Describe the image"]', prompt="")
        with pytest.raises(ConfigError, match="prompt"):
            load_job(path, Overrides())

    @pytest.mark.parametrize(
        ("parts", "match"),
        [
            ({"prompt": "max_tokens = 0\ntext = 'x'"}, "max_tokens must be at least 1, got 0"),
            ({"prompt": "max_tokens = -5\ntext = 'x'"}, "max_tokens must be at least 1"),
            ({"prompt": "temperature = -0.1\ntext = 'x'"}, "temperature must be >= 0"),
            ({"prompt": "top_p = 0\ntext = 'x'"}, r"top_p must be in \(0, 1\]"),
            ({"prompt": "top_p = 1.5\ntext = 'x'"}, "top_p must be in"),
            ({"prompt": "text = 'x'\nextra = {model = 'y'}"}, "extra may not set"),
            ({"prompt": "text = 'x'\nextra = {messages = []}"}, "extra may not set"),
            ({"prompt": f"{DEFAULT_PROMPT}\ntext = 'x'"}, "either 'text' or 'file', not both"),
            ({"prompt": 'file = "../prompts/nope.txt"'}, "prompt file not found"),
            ({"prompt": 'file = "../prompts"'}, "cannot read prompt file"),
            ({"prompt": "text = '   '"}, "is empty"),
            ({"prompt": 'name = "n"'}, "has no text"),
            ({"prompt": ""}, "has no text"),
            ({"prompt": "text = 'Describe $foo'"}, r"unknown template variable\(s\) \$foo"),
            ({"prompt": "text = 'Costs $5'"}, "malformed"),
            (
                {"prompt": "name = 'a'\ntext = 'x'\n[[prompt]]\nname = 'a'\ntext = 'y'"},
                "unique; repeated: a",
            ),
            ({"endpoint": 'url = "ftp://host/v1"'}, r"must be http\(s\)://HOST"),
            ({"endpoint": 'url = "127.0.0.1:8102/v1"'}, r"must be http\(s\)://"),
            ({"endpoint": "timeout = 0"}, "timeouts must be > 0"),
            ({"endpoint": "connect_timeout = -1"}, "timeouts must be > 0"),
            ({"input_": ""}, "no input: set \\[input\\] root"),
            ({"input_": 'root = "../missing"'}, "input folder does not exist"),
            ({"input_": 'root = "../prompts/tags.txt"'}, "not a folder"),
            ({"input_": 'root = "../images"\npatterns = []'}, "patterns must be a non-empty"),
            ({"input_": 'root = "../images"\npatterns = [""]'}, "patterns must be a non-empty"),
            ({"input_": 'root = "../images"\npatterns = [1]'}, "patterns must be a non-empty"),
            ({"image": "max_side = 8"}, "max_side must be >= 16"),
            ({"image": "jpeg_quality = 0"}, "jpeg_quality must be 1..100"),
            ({"image": "jpeg_quality = 101"}, "jpeg_quality must be 1..100"),
            ({"run": ""}, "no output folder"),
            ({"run": 'output = "../out"\nconcurrency = 0'}, "concurrency must be at least 1"),
            ({"run": 'output = "../out"\nretries = -1'}, "retries must be >= 0"),
            ({"run": 'output = "../out"\nflush_interval = 0'}, "flush_interval must be > 0"),
        ],
    )
    def test_bad_values(self, project: Path, parts: dict[str, str], match: str) -> None:
        """Out-of-range or missing settings are ConfigErrors that say what to fix."""
        with pytest.raises(ConfigError, match=match):
            load_job(write_job(project, **parts), Overrides())

    def test_unknown_variable_in_prompt_file(self, project: Path) -> None:
        """An unknown $variable inside a prompt file is caught before the run."""
        (project / "prompts" / "bad.txt").write_text("Describe $imagename please")
        path = write_job(project, prompt='file = "../prompts/bad.txt"')
        with pytest.raises(ConfigError, match=r"\$imagename"):
            load_job(path, Overrides())

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            (Overrides(max_tokens=0), "max_tokens must be at least 1"),
            (Overrides(endpoint="localhost:8102"), r"must be http\(s\)://"),
            (Overrides(concurrency=0), "concurrency must be at least 1"),
            (Overrides(max_side=4), "max_side must be >= 16"),
            (Overrides(input="/nonexistent/dir/for/test"), "input folder does not exist"),
            (Overrides(prompt_file="/nonexistent/prompt.txt"), "prompt file not found"),
            (Overrides(prompt="Use $what"), r"\$what"),
            (Overrides(extra={"model": "x"}), "extra may not set"),
            (Overrides(patterns=()), "patterns must be a non-empty"),
            (Overrides(jpeg_quality=0), "jpeg_quality must be 1..100"),
            (Overrides(connect_timeout=0), "timeouts must be > 0"),
        ],
    )
    def test_bad_flags(self, project: Path, overrides: Overrides, match: str) -> None:
        """Flags are validated like job file values."""
        with pytest.raises(ConfigError, match=match):
            load_job(write_job(project), overrides)

    def test_no_job_file_and_no_flags(self) -> None:
        """Nothing given at all asks for an input folder first."""
        with pytest.raises(ConfigError, match="no input: set \\[input\\] root"):
            load_job(None, Overrides())

    def test_job_file_not_found(self, tmp_path: Path) -> None:
        """A missing job file is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="job file not found"):
            load_job(tmp_path / "nope.toml", Overrides())

    def test_job_file_not_utf8(self, tmp_path: Path) -> None:
        """A job file that is not UTF-8 is a ConfigError, not a crash."""
        path = tmp_path / "job.toml"
        path.write_bytes(b"[run]\noutput = '\xff\xfe'\n")
        with pytest.raises(ConfigError, match="cannot read job file"):
            load_job(path, Overrides())


class TestAnnotationSettings:
    """Schemas and manifests in the job file and as flags."""

    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
    }

    def test_schema_file_resolves_against_the_job_file(self, project: Path) -> None:
        """schema = "file.json" is read relative to the job file's folder."""
        (project / "schemas").mkdir()
        (project / "schemas" / "s.json").write_text(json.dumps(self.SCHEMA))
        job = load_job(
            write_job(project, prompt=f'{DEFAULT_PROMPT}\nschema = "../schemas/s.json"'),
            Overrides(),
        )
        assert job.prompts[0].schema == self.SCHEMA

    def test_inline_schema_table(self, project: Path) -> None:
        """An inline TOML table is the schema itself."""
        table = '{ type = "object", properties = { n = { type = "integer" } } }'
        prompt = f"{DEFAULT_PROMPT}\nschema = {table}"
        job = load_job(write_job(project, prompt=prompt), Overrides())
        assert job.prompts[0].schema == {"type": "object", "properties": {"n": {"type": "integer"}}}

    @pytest.mark.parametrize(
        ("schema_text", "match"),
        [
            (None, "schema file not found"),
            ("{not json", "is not valid JSON"),
            ("[1]", "must hold a JSON object"),
            ('{"type": "string"}', "describe an object with properties"),
            ('{"type": "object", "properties": {"status": {"type": "string"}}}', "built-in"),
        ],
    )
    def test_bad_schema_files(self, project: Path, schema_text: str | None, match: str) -> None:
        """A schema file that is missing, not JSON or not usable stops the run before it starts."""
        if schema_text is not None:
            (project / "s.json").write_text(schema_text)
        with pytest.raises(ConfigError, match=match):
            load_job(
                write_job(project, prompt=f'{DEFAULT_PROMPT}\nschema = "../s.json"'), Overrides()
            )

    def test_schema_and_extra_response_format_clash(self, project: Path) -> None:
        """schema sets response_format itself: giving both is an error."""
        (project / "s.json").write_text(json.dumps(self.SCHEMA))
        extra = 'extra = { response_format = { type = "json_object" } }'
        prompt = f'{DEFAULT_PROMPT}\nschema = "../s.json"\n{extra}'
        with pytest.raises(ConfigError, match=r"either schema or extra\.response_format"):
            load_job(write_job(project, prompt=prompt), Overrides())

    def test_manifest_replaces_root_and_back(self, project: Path) -> None:
        """--manifest replaces the job file's folder; --input replaces its manifest."""
        (project / "list.csv").write_text("image,title\na.jpg,A\n")
        path = write_job(project)
        job = load_job(path, Overrides(manifest=str(project / "list.csv")))
        assert job.input.manifest == project / "list.csv"
        assert job.input.root == project
        both = write_job(project, input_='manifest = "../list.csv"', name="m.toml")
        assert load_job(both, Overrides(input=str(project / "images"))).input.manifest is None

    @pytest.mark.parametrize(
        ("input_", "prompt", "match"),
        [
            ('root = "../images"\nmanifest = "../list.csv"', DEFAULT_PROMPT, "either"),
            ('root = "../images"\nkeep = ["title"]', DEFAULT_PROMPT, "needs a manifest"),
            ('manifest = "../list.csv"\nkeep = ["nope"]', DEFAULT_PROMPT, "'nope' is not in"),
            ('manifest = "../list.csv"\nkeep = ["status"]', DEFAULT_PROMPT, "built-in"),
            (
                'manifest = "../list.csv"',
                'text = "About $titel"',
                r"unknown template variable.*\$titel",
            ),
            ('manifest = "../list.tsv"', DEFAULT_PROMPT, "unsupported file type"),
        ],
    )
    def test_bad_manifest_settings(
        self, project: Path, input_: str, prompt: str, match: str
    ) -> None:
        """Manifest mistakes found before the run: exit 2 with what to fix."""
        (project / "list.csv").write_text("image,title,status\na.jpg,A,x\n")
        (project / "list.tsv").write_text("image\ta.jpg\n")
        with pytest.raises(ConfigError, match=match):
            load_job(write_job(project, input_=input_, prompt=prompt), Overrides())

    def test_manifest_columns_are_template_variables(self, project: Path) -> None:
        """A CSV manifest's columns are known variables (not $image: it is the picture)."""
        (project / "list.csv").write_text("image,title\na.jpg,A\n")
        job = load_job(
            write_job(project, input_='manifest = "../list.csv"', prompt='text = "About $title"'),
            Overrides(),
        )
        assert job.prompts[0].text == "About $title"
        with pytest.raises(ConfigError, match=r"\$image"):
            load_job(
                write_job(project, input_='manifest = "../list.csv"', prompt='text = "$image"'),
                Overrides(),
            )
