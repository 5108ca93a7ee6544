"""The models users can name: a catalogue that is data (runner/catalogue.toml, plus the user's --models-file),
validated here, and `hf:Org/Name[@revision]` for any Hub model through the generic adapter.

Nothing here imports torch: the orchestrator and the tests read the catalogue too.
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.names import NAME_PATTERN, FileNameError, check_file_name

IMAGE_PREFIX = "vlm-ablation"
BUILTIN_CATALOGUE = Path(__file__).with_name("catalogue.toml")
HUB_PREFIX = "hf:"
GENERIC_FAMILY = "generic"
# The adapters a catalogue entry can name (runner/adapters/); checked here without importing torch.
ADAPTERS = ("auto", "internvl2")
# How batched greedy generation runs (runner.decoding): plain HF generate, or a static cache + compiled decode step.
DECODE_KINDS = ("eager", "compiled")
HUB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# What a catalogue entry's `generate_kwargs` may set, and what each takes. Recorded in `<model>_run.json` and part of
# what must match for a run to resume (runner.loop).
GENERATE_KWARGS = {
    "eos_token_id": "a token id or a list of token ids that end an answer",
    "pad_token_id": "the token id that pads a batch",
    "decoder_start_token_id": "the token id an encoder-decoder answer starts with",
    "stop_strings": "a text or a list of texts that end an answer",
}
# Without a measured value, --batch-size auto estimates the memory per sample from the config (runner.memory).
DEFAULT_MAX_IMAGE_SIDE = 1024


class ModelSpec(BaseModel):
    """One catalogue entry: everything the runner, the images and the orchestrator need to know about a model."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str  # what users type; part of the result file names
    hub_id: str
    revision: str = "main"  # the resolved commit is recorded in the run manifest
    adapter: Literal["auto", "internvl2"] = "auto"
    family: str = GENERIC_FAMILY  # the runner image: images/<family>/requirements.txt -> vlm-ablation/<family>
    image: str | None = None  # another image reference (a family image by default)
    pins: str | None = None  # a requirements file for a user's own image (relative to the catalogue file)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # on GPU; CPU runs use float32
    transformers: str = ">=5.0,<6"  # versions this entry is known to work with
    gpu_gb_per_sample: float | None = Field(default=None, gt=0)
    prompt_format: str | None = None  # for checkpoints without a chat template; {prompt} = the instruction
    max_image_side: int = Field(default=DEFAULT_MAX_IMAGE_SIDE, ge=16)
    max_pixels: int | None = Field(default=None, ge=256)
    nested_images: bool = True  # one list of images per prompt ([[image], ...]); false for a processor that refuses it
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra generate() arguments (e.g. a stop id)
    tiny: str | None = None  # runner/tiny builder of the entry's tiny random-weight checkpoint
    verified: str = ""
    in_all: bool = True  # part of `--models all`
    decode: Literal["eager", "compiled"] = "eager"  # the default --decode for this model (runner.decoding)
    patches: tuple[str, ...] = ()  # runner/patches/* applied after loading on a GPU (e.g. "qwen2_5_vl_vision")
    source: str = "built-in"  # the catalogue file the entry came from, or "hf:" for a Hub name

    @field_validator("name")
    @classmethod
    def _file_safe(cls, value: str) -> str:
        return check_file_name(value)  # it becomes part of file names (contract.names)

    @field_validator("family")
    @classmethod
    def _family_file_safe(cls, value: str) -> str:
        return check_file_name(value, "family")  # a folder (images/<family>), an image tag, a .sif file

    @field_validator("hub_id")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not HUB_ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a Hub id of the form Org/Name")
        return value

    @field_validator("prompt_format")
    @classmethod
    def _prompt_format(cls, value: str | None) -> str | None:
        # Checked here, when the file is read: a field other than {prompt} would fail only after the model loaded.
        if value is None:
            return value
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)]
        except ValueError as error:
            raise ValueError(
                f"{value!r} is not a valid format string: {error}; write a literal brace as {{{{ or }}}}"
            ) from None
        fields = [field for field in fields if field[0] is not None]
        if fields != [("prompt", "", None)]:
            shown = ", ".join("{" + (name or "") + "}" for name, _, _ in fields) or "none"
            raise ValueError(
                f"{value!r} must contain {{prompt}} exactly once and no other field (found: {shown}); write a literal "
                "brace as {{ or }}"
            )
        return value

    @field_validator("generate_kwargs")
    @classmethod
    def _allowed_generate_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every model decodes greedily with the same settings (runner.adapters.base.GREEDY); an entry may only say
        # where an answer stops and which ids pad or start it: an allow-list, so nothing new slips through.
        unknown = sorted(set(value) - set(GENERATE_KWARGS))
        if unknown:
            raise ValueError(
                f"{unknown} cannot be set: decoding is greedy with the same settings for every model; allowed: "
                + ", ".join(f"{key} ({what})" for key, what in GENERATE_KWARGS.items())
            )
        for key, setting in value.items():
            if not _allowed_value(key, setting):
                raise ValueError(f"{key} = {setting!r}: expected {GENERATE_KWARGS[key]}")
        return value

    @property
    def image_ref(self) -> str:
        """The Docker image that runs this model."""
        return self.image or f"{IMAGE_PREFIX}/{self.family}:latest"

    @property
    def is_hub_name(self) -> bool:
        return self.source == HUB_PREFIX

    @property
    def reference(self) -> str:
        """What names this model on a command line: the entry's name, or `hf:Org/Name[@revision]`."""
        if not self.is_hub_name:
            return self.name
        return HUB_PREFIX + self.hub_id + (f"@{self.revision}" if self.revision != "main" else "")


def _allowed_value(key: str, value: Any) -> bool:
    def token_id(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool) and item >= 0

    def text(item: Any) -> bool:
        return isinstance(item, str) and item != ""

    single = text if key == "stop_strings" else token_id
    if key in ("eos_token_id", "stop_strings") and isinstance(value, list):
        return bool(value) and all(single(item) for item in value)
    return single(value)


class CatalogueError(ValueError):
    """A catalogue file that cannot be used; the message names the file, the entry and the field."""


class UnknownModelError(ValueError):
    pass


def _entry_error(path: Path, name: str, error: ValidationError) -> CatalogueError:
    problems = "; ".join(
        f"field {'.'.join(str(part) for part in item['loc']) or '(entry)'}: {item['msg']}" for item in error.errors()
    )
    return CatalogueError(f"{path}: model {name!r}: {problems}")


def read_catalogue_file(path: Path) -> dict[str, ModelSpec]:
    """Entries of one TOML catalogue file (`[models."<name>"]` tables), validated."""
    try:
        raw = path.read_bytes()
        document = tomllib.loads(raw.decode("utf-8"))
    except OSError as error:
        raise CatalogueError(f"{path}: cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CatalogueError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[error.start]:#04x} at offset {error.start}); save the "
            "file as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise CatalogueError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise CatalogueError(f'{path}: unknown top-level key(s) {unknown}; entries go under [models."<name>"]')
    tables = document.get("models", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise CatalogueError(f'{path}: `models` must hold one table per model: [models."<name>"]')
    entries = {}
    for name, table in tables.items():
        if "name" in table or "source" in table:
            raise CatalogueError(f"{path}: model {name!r}: `name` and `source` are not fields (the table name is)")
        try:
            entries[name] = ModelSpec(name=name, source=str(path), **table)
        except ValidationError as error:
            raise _entry_error(path, name, error) from None
    return entries


def parse_hub_name(text: str) -> ModelSpec:
    """`hf:Org/Name[@revision]`: any Hub model through the generic adapter, named `Org--Name[@revision]`."""
    reference = text[len(HUB_PREFIX) :]
    hub_id, at, revision = reference.partition("@")
    if at and not revision:
        raise UnknownModelError(f"{text!r}: nothing after @; name a revision (hf:Org/Name@v1.0) or leave out the @")
    if not HUB_ID_PATTERN.fullmatch(hub_id) or (revision and not NAME_PATTERN.fullmatch(revision)):
        raise UnknownModelError(f"{text!r}: expected hf:Org/Name or hf:Org/Name@revision")
    name = hub_id.replace("/", "--") + (f"@{revision}" if revision else "")
    try:
        return ModelSpec(name=check_file_name(name), hub_id=hub_id, revision=revision or "main", source=HUB_PREFIX)
    except FileNameError as error:
        raise UnknownModelError(f"{text!r}: {error}") from None


class Catalogue:
    """The built-in entries plus those of the user's files; a name defined twice is an error naming both files."""

    def __init__(self, files: Sequence[Path] = ()) -> None:
        self.files = [BUILTIN_CATALOGUE, *[Path(f) for f in files]]
        self.models: dict[str, ModelSpec] = {}
        for path in self.files:
            for name, spec in read_catalogue_file(path).items():
                if name in self.models:
                    raise CatalogueError(
                        f"{path}: model {name!r} is already defined in {self.models[name].source}; choose another name"
                    )
                self.models[name] = spec

    def get(self, name: str) -> ModelSpec:
        if name.startswith(HUB_PREFIX):
            named = parse_hub_name(name)
            # A Hub id the catalogue knows keeps what its entry knows (prompt format, pixel budget, image).
            known = next((spec for spec in self.models.values() if spec.hub_id == named.hub_id), None)
            if known is not None:
                return known.model_copy(update={"revision": named.revision}) if named.revision != "main" else known
            return named
        if name in self.models:
            return self.models[name]
        by_lower = {known.lower(): known for known in self.models}
        close = [by_lower[name.lower()]] if name.lower() in by_lower else []
        close = close or difflib.get_close_matches(name, list(self.models), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}")

    def resolve(self, names: Iterable[str]) -> list[ModelSpec]:
        """Every name, or ONE error listing every bad name at once (with suggestions) and the valid ones."""
        specs, problems = [], []
        for name in names:
            try:
                specs.append(self.get(name))
            except UnknownModelError as error:
                problems.append(str(error))
        if problems:
            raise UnknownModelError(
                "; ".join(problems) + f"; valid names: {', '.join(self.models)}, or hf:Org/Name for any Hub model "
                "(`python -m orchestrator models` lists them)"
            )
        names_seen: dict[str, str] = {}
        for spec in specs:
            if spec.name in names_seen:
                raise UnknownModelError(f"{spec.name!r} is named twice")
            names_seen[spec.name] = spec.name
        return specs

    def all_names(self) -> list[str]:
        """What `--models all` means: the entries marked in_all, in catalogue order."""
        return [name for name, spec in self.models.items() if spec.in_all]

    def user_entries(self) -> list[ModelSpec]:
        return [spec for spec in self.models.values() if spec.source != str(BUILTIN_CATALOGUE)]


BUILTIN = Catalogue()
# `--models all`: the built-in entries marked in_all (the eight models of the ablation), in catalogue order.
MODELS: dict[str, ModelSpec] = {name: BUILTIN.models[name] for name in BUILTIN.all_names()}
FAMILIES = sorted({spec.family for spec in BUILTIN.models.values()} | {GENERIC_FAMILY})


def get_model(name: str, models_files: Sequence[Path] = ()) -> ModelSpec:
    """One entry by name; an unknown name is an error with suggestions and the valid names."""
    catalogue = Catalogue(models_files) if models_files else BUILTIN
    return catalogue.resolve([name])[0]


def catalogue_toml(specs: Iterable[ModelSpec]) -> str:
    """Entries written back as a catalogue file (reproduce rebuilds a user's --models-file from its manifest)."""
    import tomli_w

    tables = {
        spec.name: spec.model_dump(mode="json", exclude={"name", "source"}, exclude_defaults=True) for spec in specs
    }
    return tomli_w.dumps({"models": tables})
