"""The `input.yml` contract: pydantic models of bgit's PROMPT / TARGET / BAKE schema, and its loader.

Field names are bgit's, exactly (docs/config.md). Defaults are ours, chosen for one GPU or a CPU
rather than Bread's cloud (no ZeRO-3, a modest LoRA rank); `docs/config.md` documents each one and
`tests/unit/test_config.py` checks that the page and these models agree. User files are strict: an unknown key
is an error with a did-you-mean; a key bgit documents that has no local meaning is accepted with a
warning that says so.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from gitbake.contract import yamlio
from gitbake.contract.files import INPUT_FILE as INPUT_FILE  # re-exported for its importers
from gitbake.errors import ConfigError, Issue
from gitbake.reads import note

MAX_TEMPLATE_BYTES = 1024 * 1024  # bgit's limit for template files
MAX_QUESTION_FILE_BYTES = 64 * 1024 * 1024
SECTIONS = ("PROMPT", "TARGET", "BAKE")
# Names become parts of file names, refs and bgit-style model names: no `/`, no spaces.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Model(BaseModel):
    """Base of every user-facing model: unknown keys are errors, defaults are validated too.

    `_accepted` lists keys bgit documents that have no local meaning: they parse, and the loader warns.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True, allow_inf_nan=False)
    _accepted: ClassVar[dict[str, str]] = {}


Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _not_a_boolean(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a number, not a boolean")
    return v


# Strict where YAML's coercions would silently change what runs: `epochs: true` is not 1 and `epochs: 2.5`
# is not 2. Floats stay lax about strings on purpose: YAML 1.1 reads `1e-4` (no dot) as a string, and
# `learning_rate: 1e-4` is how everyone writes it; only a boolean is refused.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]

# Upper bounds: what can run, in the types torch and tokenizers use. A value past one would fail later, in
# the middle of a job (or never end), rather than here. `gitbake/repo/limits.py` adds the bounds that need the
# model (LoRA rank, vocabulary, context) and the total amount of work.
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # numpy's and `random`'s seeds; torch takes up to 2**64 - 1
MAX_EPOCHS = 1000
MAX_TRAJ_PER_STIMULUS = 1000
MAX_NUMQ = 1_000_000
MAX_TOTAL_TRAJECTORIES = 100_000_000
MAX_SEQUENCE_TOKENS = 131_072  # max_tokens, data.max_length: beyond any local model's context
MAX_MICRO_BATCH = 4096
MAX_ACCUMULATION = 65_536
MAX_LORA_RANK = 65_536
MAX_CONCURRENCY = 1024
MAX_VOCAB = 1_048_576
MAX_QUESTION_CHARS = 32_768  # a question is one turn of a conversation, not a document
# Floats too: past these, training multiplies or divides by values that overflow to inf and trains on NaN
MAX_LORA_ALPHA = 2 * MAX_LORA_RANK  # the usual alpha is 1 to 2 x r
MAX_LEARNING_RATE = 10.0
MAX_WEIGHT_DECAY = 10.0
MIN_DISTILL_TEMPERATURE = 0.01  # data.temperature divides the logits
MAX_DISTILL_TEMPERATURE = 100.0
MAX_DATASET_WEIGHT = 1e6

Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
Temperature = Annotated[Float, Field(ge=0.0, le=2.0)]


# --------------------------------------------------------------------------------------------- PROMPT


class Message(Model):
    role: Literal["system", "user", "assistant"]
    content: str = ""


class ToolFunction(Model):
    model_config = ConfigDict(extra="allow")  # OpenAI's schema grows (strict, ...); pass it through
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(Model):
    type: Literal["function"] = "function"
    function: ToolFunction


class Prompt(Model):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None
    name: Name | None = None


# ----------------------------------------------------------------------------------------- generators


class _Generator(Model):
    rollout_with_conditioned: Bool = False
    seed: Seed | None = None
    max_tokens: Int | None = Field(default=None, ge=1, le=MAX_SEQUENCE_TOKENS)


Question = Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=r"\S")]
NumQ = Annotated[int, Strict(), Field(ge=1, le=MAX_NUMQ)]


class HardcodedGenerator(_Generator):
    type: Literal["hardcoded"]
    questions: list[Question] = Field(min_length=1)
    numq: NumQ | None = None


class FromFileGenerator(_Generator):
    type: Literal["from_file"]
    path: str
    numq: NumQ | None = None


class FromDatasetGenerator(_Generator):
    type: Literal["from_dataset"]
    dataset: str
    numq: NumQ = 100
    seed: Seed | None = 42
    split: str | None = None
    field: str | None = None


class OneshotGenerator(_Generator):
    type: Literal["oneshot_qs"]
    model: str | None = None  # None: the parent model writes the questions
    numq: NumQ
    temperature: Temperature = 1.0
    template_path: str | None = None
    template_content: str | None = None
    base_url: str | None = None  # an OpenAI-compatible endpoint, e.g. `git bake serve` of another model
    api_key_env: str | None = None


class PersonaGenerator(_Generator):
    type: Literal["persona"]
    numq: NumQ = 50
    seed: Seed | None = 42
    temperature: Temperature = 1.0


class CustomGenerator(_Generator):
    type: Literal["custom"]
    template_path: str | None = None


Generator = Annotated[
    HardcodedGenerator
    | FromFileGenerator
    | FromDatasetGenerator
    | OneshotGenerator
    | PersonaGenerator
    | CustomGenerator,
    Field(discriminator="type"),
]
GENERATOR_TYPES = ("hardcoded", "from_file", "from_dataset", "oneshot_qs", "persona", "custom")


# --------------------------------------------------------------------------------------------- TARGET


# Sampling settings of a rollout: OpenAI's (and vLLM's top_k, min_p, repetition_penalty), as chat and
# serve take them (gitbake.engine.sampling), plus two of transformers' generate flags. `n` is
# num_traj_per_stimulus, and `temperature` / `max_tokens` are TARGET's own fields.
class SamplingKwargs(Model):
    """`TARGET.extra_kwargs`, each in the range transformers' and vLLM's samplers accept."""

    top_p: Annotated[Float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)] | None = None  # leave it out to disable
    min_p: Annotated[Float, Field(ge=0.0, le=1.0)] | None = None
    typical_p: Annotated[Float, Field(gt=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0.0, le=100.0)] | None = None
    no_repeat_ngram_size: Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2.0, le=2.0)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=4)] | None = None
    seed: Annotated[int, Strict(), Field(ge=0, le=2**63 - 1)] | None = None  # default: from the target's key
    logprobs: Bool | None = None  # keep each response token's log-probability in the rollout records
    top_logprobs: Annotated[int, Strict(), Field(ge=0, le=20)] | None = None


SAMPLING_KWARGS = set(SamplingKwargs.model_fields)


class Target(Model):
    name: Name = "target"
    generators: list[Generator] = Field(default_factory=list)
    num_traj_per_stimulus: Int = Field(default=4, ge=1, le=MAX_TRAJ_PER_STIMULUS)
    temperature: Temperature = 1.0
    max_tokens: Int = Field(default=256, ge=1, le=MAX_SEQUENCE_TOKENS)
    max_concurrency: Int = Field(default=10, ge=1, le=MAX_CONCURRENCY)
    extra_kwargs: SamplingKwargs = Field(default_factory=SamplingKwargs)
    model_name: str | None = None
    teacher_prompt: str | None = None
    student_prompt: str | None = None
    u: str | None = None
    v: str | None = None
    template: str = "default"
    heldout_fraction: Float = Field(default=0.1, ge=0.0, lt=1.0)

    @field_serializer("extra_kwargs")
    def _only_given(self, v: SamplingKwargs) -> dict[str, Any]:
        # the settings as written, as the dict the samplers take: keys stay what they were before the
        # settings had a schema, and an unset one is not passed as None
        return v.model_dump(exclude_none=True)

    @model_validator(mode="after")
    def _aliases_agree(self) -> Target:
        for new, old in (("teacher_prompt", "u"), ("student_prompt", "v")):
            a, b = getattr(self, new), getattr(self, old)
            if a is not None and b is not None and a != b:
                raise ValueError(f"`{new}: {a}` and its deprecated alias `{old}: {b}` disagree; keep only `{new}`")
        return self

    @property
    def teacher_ref(self) -> str | None:
        return self.teacher_prompt or self.u

    @property
    def student_ref(self) -> str | None:
        return self.student_prompt or self.v


# ----------------------------------------------------------------------------------------------- BAKE


class Dataset(Model):
    target: str
    weight: Float = Field(default=1.0, gt=0, le=MAX_DATASET_WEIGHT)


class LoraConfig(Model):
    r: Int = Field(default=8, ge=1, le=MAX_LORA_RANK)
    lora_alpha: Float = Field(default=16, gt=0, le=MAX_LORA_ALPHA)
    lora_dropout: Float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("bias")
    @classmethod
    def _no_bias_training(cls, v: str) -> str:
        if v != "none":
            raise ValueError(
                "training biases would change the base model the teacher shares (adapter disabled); use `none`"
            )
        return v

    target_modules: str | list[str] = "all-linear"


class BakeModelConfig(Model):
    type: str = "bake"
    baked_adapter_config: LoraConfig = Field(default_factory=LoraConfig)
    dtype: Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    # None: the engine decides from the memory a micro-batch's activations need (gitbake.engine.activations)
    disable_activation_checkpoint: Bool | None = None
    peft_config: dict[str, Any] | None = None
    save_name: str | None = None
    student_model_path: str | None = None

    @field_validator("student_model_path")
    @classmethod
    def _no_other_student(cls, v: str | None) -> str | None:
        if v:
            raise ValueError(
                "distilling into a different student model is not supported yet; remove `student_model_path`"
            )
        return v

    parent_model_name: str | None = None

    _accepted: ClassVar[dict[str, str]] = {
        "peft_config": "use `baked_adapter_config` for LoRA settings; `peft_config` is ignored",
        "save_name": "adapters are named by their key in the store; `save_name` is ignored",
        "parent_model_name": "the parent is always the model of the previous bake (.bread PARENT_MODEL); ignored",
    }


class OptimizerConfig(Model):
    learning_rate: Float = Field(default=1e-3, gt=0, le=MAX_LEARNING_RATE)
    type: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: Float = Field(default=0.0, ge=0, le=MAX_WEIGHT_DECAY)
    betas: tuple[Annotated[Float, Field(ge=0, lt=1)], Annotated[Float, Field(ge=0, lt=1)]] = (0.9, 0.999)

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class SchedulerConfig(Model):
    type: Literal["huggingface"] = "huggingface"
    name: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = (
        "linear"
    )
    warmup_ratio: Float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: Int = Field(default=0, ge=0, le=INT32_MAX)
    lr: Any = None

    @field_validator("lr")
    @classmethod
    def _no_lr(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("`scheduler.lr` is deprecated (bgit rejects it too); set `optimizer.learning_rate`")
        return v


class ZeroConfig(Model):
    model_config = ConfigDict(extra="allow")  # the rest of DeepSpeed's zero_optimization, passed through
    stage: Int = Field(default=0, ge=0, le=3)


class DeepSpeedConfig(Model):
    model_config = ConfigDict(extra="allow")  # DeepSpeed's own schema, passed through to its engine
    zero_optimization: ZeroConfig = Field(default_factory=ZeroConfig)


class DataConfig(Model):
    type: str | None = None
    sources: list[Any] | None = None
    eval_sources: list[Any] | None = None
    beta: Float = Field(default=0.0, ge=0, le=1)
    temperature: Float = Field(default=1.0, ge=MIN_DISTILL_TEMPERATURE, le=MAX_DISTILL_TEMPERATURE)
    max_length: Int = Field(default=1024, ge=16, le=MAX_SEQUENCE_TOKENS)
    topk: Int | None = Field(default=None, ge=1, le=MAX_VOCAB)
    train_eval_split: tuple[Float, Float] | None = None
    cache_dir: str | None = None
    dl_num_workers: Int | None = Field(default=None, ge=0, le=256)
    num_proc: Int | None = Field(default=None, ge=1, le=1024)
    seed: Seed | None = None

    _accepted: ClassVar[dict[str, str]] = {
        "type": "the local trainer has one data pipeline; `data.type` is ignored",
        "sources": "training data comes from BAKE.datasets; `data.sources` is ignored",
        "eval_sources": "evaluation uses the held-out questions of each target; `data.eval_sources` is ignored",
        "cache_dir": "data lives in the store; `data.cache_dir` is ignored",
        "train_eval_split": "eval uses each target's held-out questions (TARGET.heldout_fraction); `train_eval_split` "
        "is ignored",
    }

    @model_validator(mode="after")
    def _topk_is_forward_kl(self) -> DataConfig:
        if self.topk is not None and self.beta != 0:
            raise ValueError("`topk` caches the teacher for forward KL only; use `beta: 0` with `topk`, or drop `topk`")
        return self

    @field_validator("train_eval_split")
    @classmethod
    def _split(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and (min(v) < 0 or abs(sum(v) - 1.0) > 1e-6):
            raise ValueError("train_eval_split must be two non-negative fractions that add up to 1, e.g. [0.9, 0.1]")
        return v


class CheckpointConfig(Model):
    type: Literal["huggingface"] = "huggingface"
    output_dir: str | None = None
    enabled: Bool = True
    auto_resume: Bool = False
    save_every_n_steps: Int | None = Field(default=None, ge=1, le=INT32_MAX)
    save_every_n_epochs: Int | None = Field(default=None, ge=1, le=MAX_EPOCHS)
    save_end_of_training: Bool = True


class WandbConfig(Model):
    enable: Bool = False
    project: str | None = None
    name: str | None = None
    entity: str | None = None


class Bake(Model):
    name: Name | None = None
    datasets: list[Dataset] | None = None
    epochs: Int = Field(default=3, ge=1, le=MAX_EPOCHS)
    micro_batch_size: Int = Field(default=4, ge=1, le=MAX_MICRO_BATCH)
    gradient_accumulation_steps: Int = Field(default=1, ge=1, le=MAX_ACCUMULATION)
    total_trajectories: Int | None = Field(default=None, ge=1, le=MAX_TOTAL_TRAJECTORIES)
    seed: Seed = 42
    type: Literal["single_baker"] = "single_baker"
    model: BakeModelConfig = Field(default_factory=BakeModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    deepspeed: DeepSpeedConfig | None = None  # None: train without DeepSpeed
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: list[CheckpointConfig] = Field(default_factory=list)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    train_log_iter_interval: Int = Field(default=1, ge=1, le=INT32_MAX)
    eval_interval: Int = Field(default=0, ge=0, le=INT32_MAX)
    activation_checkpoint_cpu_offload: Bool = False
    template: str = "default"
    model_name: Any = None

    _accepted: ClassVar[dict[str, str]] = {
        "template": "server-side bake templates do not exist locally; the value is ignored",
        "model_name": "bgit ignores `BAKE.model_name` too: the parent is the previous bake's model",
        "activation_checkpoint_cpu_offload": "CPU offload of activation checkpoints is not supported; ignored",
    }


class LegacyRepo(Model):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    base_model: str | None = None


class InputFile(Model):
    PROMPT: dict[str, Prompt] | None = None
    TARGET: Target | None = None
    BAKE: Bake | None = None
    REPO: LegacyRepo | None = None

    @property
    def is_empty(self) -> bool:
        return self.PROMPT is None and self.TARGET is None and self.BAKE is None


# ----------------------------------------------------------------------------------------------- load


@dataclass
class LoadedInput:
    """A validated input.yml with what the keys need beyond it (template and question file contents)."""

    config: InputFile
    doc: yamlio.YamlDoc
    warnings: list[Issue] = field(default_factory=list)
    # (generator index) -> bytes of its template file / question file, read once at load time
    templates: dict[int, str] = field(default_factory=dict)
    question_files: dict[int, bytes] = field(default_factory=dict)


def load_input(path: Path, root: Path, display: str = INPUT_FILE) -> LoadedInput:
    """Load and validate `input.yml`; raise ConfigError carrying every problem found, each located."""
    if path.is_symlink():
        raise symlink_error(display)
    text = yamlio.read_text(path, display)
    return parse_input(text, root, display)


def load_input_bytes(raw: bytes, root: Path, display: str = INPUT_FILE) -> LoadedInput:
    """`load_input` for bytes that are not a working-tree file (the index's input.yml, a commit's)."""
    return parse_input(yamlio.decode_text(raw, display), root, display)


def symlink_error(display: str = INPUT_FILE) -> ConfigError:
    # a link's target is outside what git versions (and may be outside the repository): what is checked
    # would not be what is committed, so input.yml is only ever a regular file
    return ConfigError(
        [
            Issue(
                display,
                None,
                None,
                "",
                f"{display} is a symbolic link; it must be a regular file",
                f'replace the link with the file it points to: cp --remove-destination "$(readlink {display})" '
                f"{display}",
            )
        ]
    )


def parse_input(text: str, root: Path, display: str = INPUT_FILE) -> LoadedInput:
    doc = yamlio.load(text, display)
    data = doc.data
    if data is None:
        return LoadedInput(InputFile(), doc)
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Issue(
                    display,
                    1,
                    1,
                    "",
                    f"the top level must be a mapping with PROMPT, TARGET and BAKE sections, not a {_kind(data)}",
                    "start the file with `PROMPT:`, `TARGET:` or `BAKE:` at column 1",
                )
            ]
        )
    issues: list[Issue] = []
    for key in data:
        if not isinstance(key, str):
            issues.append(doc.issue((key,), f"`{key}` is not a section name", "use PROMPT, TARGET or BAKE"))
    if issues:
        raise ConfigError(issues)
    try:
        config = InputFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_issues_from_validation(exc, doc)) from None
    loaded = LoadedInput(config, doc)
    loaded.warnings = _warnings(config, doc)
    issues = _cross_checks(config, doc, loaded.warnings)
    issues += _read_files(loaded, root)
    if issues:
        raise ConfigError(issues)
    return loaded


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "value")


def _issues_from_validation(exc: ValidationError, doc: yamlio.YamlDoc) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        raw = tuple(err["loc"])
        loc = _strip_tags(raw)
        kind = err["type"]
        fix: str | None = None
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed = _allowed_fields(raw[:-1])
            message = f"unknown field `{name}`"
            if loc[-2:-1] == ("extra_kwargs",):
                message = f"unsupported sampling setting `{name}` (it has no local equivalent)"
            if not loc[:-1]:
                message = f"unknown section `{name}`"
                allowed = list(SECTIONS)
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            if not close:
                close = [a for a in allowed if a.lower() == name.lower()]
            if close:
                fix = f"did you mean `{close[0]}`?"
            elif allowed:
                fix = "allowed here: " + ", ".join(allowed)
        elif kind == "missing":
            message = "required field is missing"
            fix = f"add `{loc[-1]}:`"
        elif kind == "union_tag_invalid":
            tag = str(err.get("ctx", {}).get("tag", ""))
            message = f"unknown generator type `{tag}`"
            close = difflib.get_close_matches(tag, GENERATOR_TYPES, n=1)
            fix = f"did you mean `{close[0]}`?" if close else "use one of: " + ", ".join(GENERATOR_TYPES)
            loc = loc + ("type",)
        elif kind == "union_tag_not_found":
            message = "a generator needs a `type`"
            fix = "add `type:` with one of: " + ", ".join(GENERATOR_TYPES)
        else:
            message = err["msg"].replace("Value error, ", "")
            if (
                "input" in err
                and kind not in ("model_type", "dict_type", "list_type")
                and not isinstance(err["input"], (dict, list))
            ):
                message += f" (got {err['input']!r})"
            fix = _fix_for(kind, err)
        issues.append(doc.issue(loc, message, fix))
    return issues


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminated-union tag pydantic puts after a generator's index (it is not in the file)."""
    out: list[Any] = []
    for part in loc:
        if out and isinstance(out[-1], int) and part in GENERATOR_TYPES:
            continue
        out.append(part)
    return tuple(out)


def _fix_for(kind: str, err: Any) -> str | None:
    ctx = err.get("ctx", {})
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "write a whole number, e.g. 3"
    if kind in ("float_parsing", "float_type"):
        return "write a number, e.g. 0.0001"
    if kind == "finite_number":
        return "write a finite number: .inf and .nan cannot train or sample"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {
            "greater_than": "> {gt}",
            "greater_than_equal": ">= {ge}",
            "less_than": "< {lt}",
            "less_than_equal": "<= {le}",
        }
        return "use a value " + bound[kind].format(**ctx)
    if kind == "bool_type":
        return "write true or false"
    if kind == "string_too_long" and err.get("ctx", {}).get("max_length") == MAX_QUESTION_CHARS:
        return "shorten the question: it is one turn of a conversation (put long context in the prompt)"
    if kind == "literal_error":
        return f"use {ctx.get('expected')}"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return "use letters, digits, `.`, `_` and `-` only (no spaces or `/`), starting with a letter or digit"
    if kind == "too_short":
        return "give at least one item"
    if kind == "string_type" and isinstance(err.get("input"), (bool, int, float)):
        return f'quote it: YAML reads the bare word as {err.get("input")!r}; write e.g. "no" or "1.0"'
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == r"\S":
        return "write the question, or remove the empty item"
    return None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at `loc`, so an unknown key can get a did-you-mean."""
    tp: Any = InputFile
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(str(part))
            if f is None:
                return []
            tp = f.annotation
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is Union or str(origin) == "<class 'types.UnionType'>":
            members = [_unwrap(a) for a in typing.get_args(tp)]
            match = [
                m
                for m in members
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and typing.get_args(m.model_fields["type"].annotation) == (part,)
            ]
            if not match:
                return []
            tp = match[0]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _walk(obj: Any, loc: tuple[Any, ...]) -> typing.Iterator[tuple[Model, tuple[Any, ...]]]:
    if isinstance(obj, Model):
        yield obj, loc
        for name in obj.model_fields_set:
            yield from _walk(getattr(obj, name), loc + (name,))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _walk(item, loc + (i,))
    elif isinstance(obj, dict):
        for k, item in obj.items():
            yield from _walk(item, loc + (k,))


def _warnings(config: InputFile, doc: yamlio.YamlDoc) -> list[Issue]:
    out = []
    for model, loc in _walk(config, ()):
        for name, why in type(model)._accepted.items():
            if name in model.model_fields_set and getattr(model, name) not in (None, False, "default"):
                out.append(doc.issue(loc + (name,), why))
    if isinstance(doc.data, dict):
        for section in SECTIONS:
            if section in doc.data and doc.data[section] is None:
                out.append(
                    doc.issue(
                        (section,),
                        f"{section} is empty: nothing to run for it",
                        f"write the {section} fields under it, or comment it out",
                    )
                )
    if config.REPO is not None:
        out.append(
            doc.issue(
                ("REPO",),
                "the top-level REPO section is deprecated (bgit moved it to .bread); it is ignored",
                "delete it; the base model is set by `git bake init --base-model`",
            )
        )
    bake = config.BAKE
    if bake is not None and bake.name is None:
        out.append(
            doc.issue(
                ("BAKE",),
                "BAKE has no `name`; using `bake`",
                "add `name:` (e.g. yoda_bake): names make the lineage readable",
            )
        )
    if config.TARGET is not None:
        for i, gen in enumerate(config.TARGET.generators):
            if isinstance(gen, HardcodedGenerator) and gen.numq is not None and gen.numq != len(gen.questions):
                out.append(
                    doc.issue(
                        ("TARGET", "generators", i, "numq"),
                        f"numq is {gen.numq} but {len(gen.questions)} questions are listed; all listed questions are "
                        "used",
                        "remove `numq` from hardcoded generators",
                    )
                )
            if isinstance(gen, CustomGenerator):
                out.append(
                    doc.issue(
                        ("TARGET", "generators", i, "type"),
                        "bgit's `custom` generator is unfinished; it produces no questions here",
                    )
                )
    return out


def _cross_checks(config: InputFile, doc: yamlio.YamlDoc, warnings: list[Issue]) -> list[Issue]:
    issues: list[Issue] = []
    target = config.TARGET
    if target is not None:
        if not target.generators and target.template == "default":
            issues.append(
                doc.issue(
                    ("TARGET", "generators"),
                    "a target needs at least one generator to make questions",
                    "add e.g. `- type: hardcoded` with `questions: [...]`",
                )
            )
        prompts = config.PROMPT or {}
        for field_name in ("teacher_prompt", "u", "student_prompt", "v"):
            ref = getattr(target, field_name)
            if ref is not None and config.PROMPT is not None and ref not in prompts:
                close = difflib.get_close_matches(ref, list(prompts), n=1)
                issues.append(
                    doc.issue(
                        ("TARGET", field_name),
                        f"no prompt `{ref}` in PROMPT",
                        f"did you mean `{close[0]}`?" if close else "known prompts: " + ", ".join(prompts),
                    )
                )
        if config.PROMPT is not None and not prompts:
            issues.append(
                doc.issue(
                    ("PROMPT",), "PROMPT is empty but TARGET needs a teacher prompt", "add `teacher:` with `messages:`"
                )
            )
    if config.PROMPT:
        for key in config.PROMPT:
            if not re.match(NAME_PATTERN, str(key)):
                issues.append(
                    doc.issue(
                        ("PROMPT", key),
                        f"prompt key `{key}` is not a valid name",
                        _fix_for("string_pattern_mismatch", {}),
                    )
                )
    bake = config.BAKE
    if bake is not None and bake.datasets is not None and not bake.datasets:
        issues.append(doc.issue(("BAKE", "datasets"), "datasets is empty", "list at least one `- target: NAME`"))
    return issues


def _inside(root: Path, rel: str) -> Path | None:
    """`rel` resolved inside the repository, or None when it escapes it (absolute, `..`, symlink out)."""
    candidate = Path(rel)
    if candidate.is_absolute():
        return None
    resolved = (root / candidate).resolve()
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        return None
    return resolved


def _read_files(loaded: LoadedInput, root: Path) -> list[Issue]:
    target = loaded.config.TARGET
    if target is None or target.template != "default":
        return []  # an inheriting target's files are read once its config is resolved (plan.py)
    return read_generator_files(loaded, target, root)


def read_generator_files(loaded: LoadedInput, target: Target, root: Path) -> list[Issue]:
    """Check and read the files generators name; their contents become part of the stim key."""
    doc, issues = loaded.doc, list[Issue]()
    for i, gen in enumerate(target.generators):
        loc = ("TARGET", "generators", i)
        if isinstance(gen, (OneshotGenerator, CustomGenerator)) and gen.template_path is not None:
            text, problem = _read_repo_file(root, gen.template_path, MAX_TEMPLATE_BYTES, text=True)
            if problem:
                issues.append(doc.issue(loc + ("template_path",), problem[0], problem[1]))
                continue
            assert isinstance(text, str)
            loaded.templates[i] = text
        if isinstance(gen, OneshotGenerator):
            if gen.template_content is not None:
                if gen.template_path is not None:
                    issues.append(
                        doc.issue(loc + ("template_content",), "give `template_path` or `template_content`, not both")
                    )
                    continue
                loaded.templates[i] = gen.template_content
            tpl = loaded.templates.get(i)
            if tpl is not None:
                where = "template_path" if gen.template_path else "template_content"
                tpl_problem = _template_problem(tpl)
                if tpl_problem:
                    issues.append(
                        doc.issue(
                            loc + (where,),
                            tpl_problem,
                            "a oneshot_qs template is a Python string.Template with ${numq} (how many questions) "
                            "and ${prompt_u} (the teacher prompt); write a literal $ as $$",
                        )
                    )
        if isinstance(gen, FromFileGenerator):
            data, problem = _read_repo_file(root, gen.path, MAX_QUESTION_FILE_BYTES, text=False)
            if problem:
                issues.append(doc.issue(loc + ("path",), problem[0], problem[1]))
                continue
            if not gen.path.endswith((".jsonl", ".txt")):
                issues.append(
                    doc.issue(
                        loc + ("path",),
                        "a question file must be `.jsonl` or `.txt`",
                        "use one question per line (.txt) or one JSON object with a `question` field per line (.jsonl)",
                    )
                )
                continue
            assert isinstance(data, bytes)
            try:
                check_question_file(data, gen.path)
            except ConfigError as exc:
                issues += exc.issues
                continue
            loaded.question_files[i] = data
    return issues


def _template_problem(text: str) -> str | None:
    import string

    names: set[str] = set()
    for m in string.Template.pattern.finditer(text):
        if m.group("invalid") is not None:
            line = text[: m.start()].count("\n") + 1
            return f"invalid placeholder at template line {line} (a `$` not followed by a name)"
        name = m.group("named") or m.group("braced")
        if name:
            names.add(name)
    unknown = sorted(names - {"numq", "prompt_u"})
    if unknown:
        return "unknown placeholder(s): " + ", ".join(f"${{{n}}}" for n in unknown)
    missing = [p for p in ("numq", "prompt_u") if p not in names]
    if missing:
        return "the template lacks " + " and ".join(f"`${{{m}}}`" for m in missing)
    return None


def check_question_file(data: bytes, display: str) -> None:
    """A question file must read (UTF-8 text; .jsonl: a `question` per line): checked at validate time."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [Issue(display, bad_line, None, "", "not valid UTF-8 text", "save the question file as UTF-8")]
        ) from None
    import json

    issues = []
    jsonl = display.endswith(".jsonl")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        q: Any = line
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                issues.append(
                    Issue(
                        display,
                        n,
                        exc.colno,
                        "",
                        f"not valid JSON: {exc.msg}",
                        'write one object per line, e.g. {"question": "..."}',
                    )
                )
                continue
            q = obj.get("question") if isinstance(obj, dict) else None
            if not isinstance(q, str) or not q.strip():
                issues.append(
                    Issue(
                        display, n, None, "question", "no `question` string on this line", 'write {"question": "..."}'
                    )
                )
                continue
        if len(q.strip()) > MAX_QUESTION_CHARS:
            issues.append(
                Issue(
                    display,
                    n,
                    None,
                    "question",
                    f"this question is {len(q.strip()):,} characters; the limit is {MAX_QUESTION_CHARS:,}",
                    _fix_for("string_too_long", {"ctx": {"max_length": MAX_QUESTION_CHARS}}),
                )
            )
    if issues:
        raise ConfigError(issues)


def _read_repo_file(root: Path, rel: str, limit: int, text: bool) -> tuple[str | bytes | None, tuple[str, str] | None]:
    path = _inside(root, rel)
    note(root / rel, *([path] if path is not None else []))
    if path is None:
        return None, (
            f"`{rel}` is outside the repository",
            "keep the file inside the repository (e.g. templates/) and give a relative path",
        )
    if not path.exists():
        return None, (
            f"`{rel}` does not exist",
            "create the file, or fix the path (it is relative to the repository root)",
        )
    if not path.is_file():
        return None, (f"`{rel}` is not a file", "point at a regular file")
    size = path.stat().st_size
    if size > limit:
        return None, (f"`{rel}` is {size:,} bytes; the limit is {limit:,}", "shorten the file")
    raw = path.read_bytes()
    if not raw.strip():
        return None, (f"`{rel}` is empty", "write the template or questions into it")
    if not text:
        return raw, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, (f"`{rel}` is not valid UTF-8 (line {line})", "save the file as UTF-8")
