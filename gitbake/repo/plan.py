"""From a validated input.yml to names and keys: what each prompt, the target and the bake *are*.

This is where the config meets the lineage: the parent model comes from `.bread`, prompts that the file
no longer spells out come from `recipe.yml`, and `BAKE.datasets[].target` may name a target from any
earlier commit. Everything a key depends on is resolved here (docs/config.md), nothing is run.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from gitbake.contract import identity, keys
from gitbake.contract.bread import Bread
from gitbake.errors import ConfigError, Issue
from gitbake.reads import note
from gitbake.repo.lineage import Lineage
from gitbake.repo.modelversion import CarriesModel, ModelVersion
from gitbake.store.statcache import StatCache

if TYPE_CHECKING:
    # the config models (and pydantic) load only when a plan is built: status reuses a cached plan
    # (gitbake.repo.plancache) without them
    from gitbake.contract.config import LoadedInput, Target
    from gitbake.contract.recipe import Recipe

EMPTY_STUDENT: dict[str, Any] = {"messages": [], "tools": None, "name": None}


@dataclass
class PromptPlan:
    ref: str  # the PROMPT key in input.yml (teacher, student, ...)
    key: str
    name: str
    config: dict[str, Any]
    source: str  # "input.yml", "recipe.yml" or "implied" (the empty student bgit injects)

    def as_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "key": self.key, "name": self.name, "source": self.source, "config": self.config}


@dataclass
class TargetPlan:
    plain: str
    name: str
    key: str  # the rollout key: it covers the stim key, both prompts, sampling and the rollout model
    stim_key: str
    teacher: str
    student: str
    config: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "plain": self.plain,
            "name": self.name,
            "key": self.key,
            "stim_key": self.stim_key,
            "teacher": self.teacher,
            "student": self.student,
            "config": self.config,
        }


@dataclass
class DatasetPlan:
    target: str  # as written
    name: str  # hashed name it resolved to
    key: str
    weight: float
    source: str  # "input.yml" or "lineage"
    commit: str | None = None


@dataclass
class BakePlan:
    plain: str
    name: str
    key: str
    config: dict[str, Any]
    datasets: list[DatasetPlan]

    def as_json(self) -> dict[str, Any]:
        return {
            "plain": self.plain,
            "name": self.name,
            "key": self.key,
            "config": self.config,
            "datasets": [d.__dict__ for d in self.datasets],
        }


@dataclass
class Parent(CarriesModel):
    """The model a bake starts from (`model`), with its identity for the stage keys."""

    model: ModelVersion  # its model_name: bgit-style name of the parent, None for the base model
    identity: dict[str, Any]
    foreign: bool = False  # .bread names a model baked in Bread's cloud, which is not on this machine

    def as_json(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "adapters": list(self.adapters),
            "model_name": self.model_name,
            "identity": self.identity,
            "foreign": self.foreign,
        }


@dataclass
class Plan:
    parent: Parent
    prompts: dict[str, PromptPlan] = field(default_factory=dict)
    target: TargetPlan | None = None
    bake: BakePlan | None = None
    warnings: list[Issue] = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        """Stages a run of this input would execute (before looking at the store's cache)."""
        out = []
        if self.target is not None:
            out += ["stim", "rollout"]
        if self.bake is not None:
            out.append("bake")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "parent": self.parent.as_json(),
            "prompts": {k: p.as_json() for k, p in self.prompts.items()},
            "target": self.target.as_json() if self.target else None,
            "bake": self.bake.as_json() if self.bake else None,
            "stages": self.stages,
        }


RecipeSource: TypeAlias = "Recipe | Callable[[], Recipe | None] | None"


def _recipe_getter(recipe: RecipeSource) -> Callable[[], Recipe | None]:
    """recipe.yml is read only when needed (status must stay fast): accept it or a function that reads it."""
    if callable(recipe):
        return recipe
    return lambda: recipe


def parent_of(
    root: Path,
    bread: Bread | None,
    recipe: RecipeSource,
    default_base: str = identity.TINY,
    cache: StatCache | None = None,
) -> Parent:
    base = bread.pinned_base_model if bread else None
    if base is None:
        r = _recipe_getter(recipe)()
        base = (r.base_model if r else None) or default_base
    adapters = bread.parent_adapters if bread else []
    foreign = bread.is_foreign_parent if bread else False
    chain = adapters or []
    return Parent(
        model=ModelVersion(base, tuple(chain), bread.parent_model_name if bread else None),
        identity=identity.model_identity(base, chain, root, cache),
        foreign=foreign,
    )


def build(
    loaded: LoadedInput,
    root: Path,
    bread: Bread | None,
    recipe_source: RecipeSource,
    lineage: Lineage | None = None,
    cache: StatCache | None = None,
) -> Plan:
    """Resolve every name and key; raise ConfigError with every unresolved reference, located."""
    cfg, doc = loaded.config, loaded.doc
    parent = parent_of(root, bread, recipe_source, cache=cache)
    get_recipe = _recipe_getter(recipe_source)
    plan = Plan(parent=parent)
    issues: list[Issue] = []

    for ref, prompt in (cfg.PROMPT or {}).items():
        plan.prompts[ref] = _prompt_plan(ref, prompt.model_dump(mode="json"), "input.yml")

    target = cfg.TARGET
    if target is not None and target.template != "default":
        target = _inherit_template(loaded, target, root, lineage, issues)
    if target is not None:
        teacher_ref = target.teacher_ref or _default_teacher(plan.prompts, get_recipe, bread)
        student_ref = target.student_ref or _default_student(plan.prompts, teacher_ref)
        refs: tuple[tuple[str | None, str], ...] = ((teacher_ref, "teacher_prompt"), (student_ref, "student_prompt"))
        for maybe_ref, loc in refs:
            if maybe_ref is None:
                issues.append(
                    doc.issue(
                        ("TARGET",),
                        "the target needs a teacher prompt and none is defined",
                        "add a PROMPT section with a `teacher:` prompt",
                    )
                )
                continue
            ref = maybe_ref
            if ref in plan.prompts:
                continue
            if ref == "student" and loc == "student_prompt":
                plan.prompts["student"] = _prompt_plan("student", dict(EMPTY_STUDENT), "implied")
                continue
            found = _prompt_from_recipe(get_recipe(), ref, bread)
            if found is not None:
                plan.prompts[ref] = _prompt_plan(ref, found, "recipe.yml")
            else:
                where = (
                    ("TARGET", loc) if getattr(target, loc) or (loc == "teacher_prompt" and target.u) else ("TARGET",)
                )
                issues.append(
                    doc.issue(
                        where,
                        f"prompt `{ref}` is not in PROMPT and no earlier bake defines it",
                        f"add `{ref}:` under PROMPT (uncomment the PROMPT section if it was cleared)",
                    )
                )
        if not issues and teacher_ref is not None and student_ref is not None:
            plan.target = _target_plan(loaded, target, plan, teacher_ref, student_ref, root)

    bake = cfg.BAKE
    if bake is not None:
        datasets = bake.datasets
        written = [(d.target, d.weight) for d in datasets] if datasets is not None else []
        if datasets is None and target is not None:
            written = [(target.name, 1.0)]  # bake this file's target when the bake names none
        elif datasets is None:
            issues.append(
                doc.issue(
                    ("BAKE",),
                    "BAKE has no `datasets` and there is no TARGET in this file to bake from",
                    "add `datasets:` with `- target: NAME` (see `git bake target ls`)",
                )
            )
        resolved: list[DatasetPlan] = []
        for i, (ref, weight) in enumerate(written):
            dp, issue = _resolve_dataset(ref, weight, plan, root, lineage)
            if issue is not None:
                line_loc = ("BAKE", "datasets", i, "target") if datasets is not None else ("BAKE",)
                issues.append(doc.issue(line_loc, issue[0], issue[1]))
            elif dp is not None:
                resolved.append(dp)
        if not issues:
            cfg_json = bake.model_dump(mode="json")
            cfg_json["name"] = bake.name or "bake"
            cfg_json["datasets"] = [{"target": d.name, "weight": d.weight} for d in resolved]
            key = keys.bake_key(cfg_json, [{"rollout": d.key, "weight": d.weight} for d in resolved], parent.identity)
            plain = bake.name or "bake"
            plan.bake = BakePlan(plain, keys.display_name(plain, key), key, cfg_json, resolved)
    if issues:
        raise ConfigError(issues)
    if parent.foreign:
        plan.warnings.append(
            Issue(
                ".bread",
                None,
                None,
                "PARENT_MODEL",
                f"`{parent.model_name}` was baked in Bread's cloud and is not on this machine; bakes start from the "
                f"base model {parent.base_model}",
            )
        )
    return plan


def _inherit_template(
    loaded: LoadedInput, target: Target, root: Path, lineage: Lineage | None, issues: list[Issue]
) -> Target | None:
    """bgit's `TARGET.template: NAME`: start from an earlier target's config, override what this file sets.

    The resolved result is what the keys cover (so `template` itself is not in a key)."""
    from gitbake.contract.config import Target, read_generator_files

    doc = loaded.doc
    lineage = lineage or Lineage(root)
    matches = [t for t in lineage.find_target(target.template) if t.config]
    if not matches:
        known = sorted({t.plain for t in lineage.targets() if t.config})
        issues.append(
            doc.issue(
                ("TARGET", "template"),
                f"no earlier target `{target.template}` with a recorded config to inherit from",
                "known: " + ", ".join(known)
                if known
                else "use `default`, or bake the target you want to inherit first",
            )
        )
        return None
    base = {k: v for k, v in (matches[0].config or {}).items() if k in Target.model_fields and k not in ("u", "v")}
    explicit = target.model_dump(mode="json", include=target.model_fields_set)
    merged = {**base, **explicit, "template": "default"}
    try:
        resolved = Target.model_validate(merged)
    except ValueError as exc:
        issues.append(
            doc.issue(("TARGET", "template"), f"the inherited config of `{target.template}` is not valid here: {exc}")
        )
        return None
    loaded.templates, loaded.question_files = {}, {}
    file_issues = read_generator_files(loaded, resolved, root)
    issues.extend(file_issues)
    return None if file_issues else resolved


def _prompt_plan(ref: str, config: dict[str, Any], source: str) -> PromptPlan:
    key = keys.prompt_key(config)
    return PromptPlan(ref, key, keys.display_name(config.get("name") or ref, key), config, source)


def _default_teacher(
    prompts: dict[str, PromptPlan], get_recipe: Callable[[], Recipe | None], bread: Bread | None
) -> str | None:
    if "teacher" in prompts:
        return "teacher"
    if prompts:
        return next(iter(prompts))
    return "teacher" if _prompt_from_recipe(get_recipe(), "teacher", bread) is not None else None


def _default_student(prompts: dict[str, PromptPlan], teacher: str | None) -> str:
    # bgit: the second PROMPT key, after injecting an empty `student` when it is missing.
    if "student" in prompts:
        return "student"
    others = [k for k in prompts if k != teacher]
    return others[0] if others else "student"


def _prompt_from_recipe(recipe: Recipe | None, ref: str, bread: Bread | None = None) -> dict[str, Any] | None:
    """A prompt of an earlier bake: ours are recorded by their PROMPT key (`ref`); bgit's by the hashed
    name `.bread` maps the key to, with the messages under `config.content` (bgit.md §3.3)."""
    if recipe is None:
        return None
    bgit_name = bread.prompts[ref].name if bread is not None and ref in bread.prompts else None
    for step in reversed(recipe.steps):
        if step.action != "create_prompt":
            continue
        ours = (step.model_extra or {}).get("ref") == ref
        theirs = bgit_name is not None and step.resource_name == bgit_name
        if not (ours or theirs):
            continue
        cfg = dict(step.config)
        if theirs and isinstance(cfg.get("content"), dict):
            cfg = {"messages": cfg["content"].get("messages") or [], "tools": cfg["content"].get("tools")}
        if theirs:
            cfg.pop("name", None)
        from gitbake.contract.config import Prompt

        try:
            return Prompt.model_validate(cfg).model_dump(mode="json")
        except ValueError:
            return None
    return None


def _target_plan(loaded: LoadedInput, target: Target, plan: Plan, teacher: str, student: str, root: Path) -> TargetPlan:
    from gitbake.contract.config import FromDatasetGenerator, FromFileGenerator, HardcodedGenerator, OneshotGenerator

    config = target.model_dump(mode="json")
    config["teacher_prompt"], config["student_prompt"] = teacher, student
    config.pop("u", None)
    config.pop("v", None)
    teacher_key = plan.prompts[teacher].key
    student_key = plan.prompts[student].key
    gens = []
    for i, (gen, raw) in enumerate(zip(target.generators, config["generators"])):
        g = dict(raw)
        if i in loaded.templates:
            # the *contents* count, not the path: editing a template must re-make the questions (bgit §7.5)
            g.pop("template_path", None)
            g["template_content"] = loaded.templates[i]
        if isinstance(gen, HardcodedGenerator):
            g.pop("numq", None)
        if isinstance(gen, FromDatasetGenerator):
            local = root / gen.dataset
            note(local)
            if local.is_file():  # a local file's questions are its contents, like from_file's
                g["content_digest"] = keys.digest_bytes(
                    local.read_bytes()
                )  # ignored for hardcoded questions (every listed one is used)
        if isinstance(gen, FromFileGenerator):
            g.pop("path", None)
            g["content_digest"] = keys.digest_bytes(loaded.question_files[i])
        if isinstance(gen, OneshotGenerator):
            if gen.model is None and gen.base_url is None:
                # written by the parent model here: how it samples (and prompts it) is part of what it writes
                g["_model"] = {"identity": plan.parent.identity, "sampler": keys.SAMPLER_VERSION}
            else:
                g["_model"] = {"name": gen.model, "base_url": gen.base_url}
        gens.append(g)
    teacher_key = plan.prompts[teacher].key
    student_key = plan.prompts[student].key
    # the stim records carry the student's context too (conditioned_stimulus): its key is part of theirs
    stim = keys.stim_key(gens, teacher_key, {"heldout_fraction": config["heldout_fraction"], "student": student_key})
    # max_concurrency is the batch size, and batches are seeded as a whole: it changes the samples
    sampling = {
        k: config[k] for k in ("num_traj_per_stimulus", "temperature", "max_tokens", "extra_kwargs", "max_concurrency")
    }
    if target.model_name:
        kind = identity.classify(target.model_name, root)
        model_id: Any = (
            identity.base_identity(target.model_name, root)
            if kind in ("dir", "gguf", "hub")
            else {"name": target.model_name}
        )
    else:
        model_id = plan.parent.identity
    key = keys.rollout_key(stim, teacher_key, student_key, sampling, model_id)
    return TargetPlan(target.name, keys.display_name(target.name, key), key, stim, teacher, student, config)


def _resolve_dataset(
    ref: str, weight: float, plan: Plan, root: Path, lineage: Lineage | None
) -> tuple[DatasetPlan | None, tuple[str, str] | None]:
    t = plan.target
    if t is not None and ref in (t.plain, t.name):
        return DatasetPlan(ref, t.name, t.key, weight, "input.yml"), None
    lineage = lineage or Lineage(root)
    matches = lineage.find_target(ref)
    if not matches:
        known = sorted({k.plain for k in lineage.targets()} | ({t.plain} if t else set()))
        close = difflib.get_close_matches(ref, known, n=1)
        if close:
            fix = f"did you mean `{close[0]}`?"
        elif known:
            fix = "known targets: " + ", ".join(known) + " (see `git bake target ls`)"
        else:
            fix = f"define it in this file (TARGET: name: {ref}), or bake it in an earlier commit"
        return None, (f"no target named `{ref}` in input.yml or in the lineage", fix)
    best = matches[0]
    if best.foreign:
        return None, (
            f"target `{best.name}` was made by bgit in Bread's cloud; its questions and answers are not on this "
            "machine",
            "define the target again in the TARGET section so gitbake can make it locally",
        )
    if best.key is None or not keys.is_key(best.key):
        return None, (
            f"target `{best.name}` has no key recorded in the lineage",
            "define the target again in the TARGET section",
        )
    return DatasetPlan(ref, best.name, best.key, weight, "lineage", best.commit), None
