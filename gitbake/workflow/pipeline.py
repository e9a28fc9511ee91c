"""Running stages: stim -> rollout (-> bake, eval with the engine issues that follow), with the store
as the cache. A stage whose key is in the store is not run again unless forced (bgit's idempotency,
local and across branches).

This module imports no ML library at import time; the engine is imported when a stage really runs.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.contract import config as cfg
from gitbake.contract.config import Bake, Target
from gitbake.contract.keys import eval_seed
from gitbake.errors import GitbakeError, UsageError
from gitbake.repo import leases, limits
from gitbake.repo.ggufbase import converted_dirs
from gitbake.repo.plan import Plan, TargetPlan
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter
from gitbake.store.objects import Store
from gitbake.store.reports import bake_report as bake_report  # re-exported: run and tests read it here

STAGE_FILES = {"stim": "stim.jsonl", "rollout": "rollout.jsonl"}
STAGES = ("stim", "rollout", "bake")
EVAL_SAMPLES = 2


@dataclass
class StageResult:
    stage: str
    key: str
    manifest: str
    cached: bool
    count: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collects_notes(stage: Callable[[Any], StageResult]) -> Callable[[Any], StageResult]:
    """A stage's result keeps the notes its reporter was given while it ran (a stage that runs another,
    missing one first gets its own list; the outer stage decides what to repeat)."""

    @functools.wraps(stage)
    def run(runner: Any) -> StageResult:
        with runner.reporter.collecting() as notes:
            result = stage(runner)
        result.notes = notes
        return result

    return run


def committed_input(repo: ModelRepo, reporter: Reporter | None = None) -> cfg.LoadedInput:
    """input.yml as committed (at `repo.rev`, else HEAD): what a commit bakes. From the working tree's
    point of view (no `rev`), uncommitted changes to input.yml are refused: the model must be the one
    its commit describes."""
    rev = repo.rev or "HEAD"
    data = git.show(repo.root, rev, cfg.INPUT_FILE)
    if data is None:
        raise UsageError("input.yml is not committed", "commit it first: git add input.yml && git commit")
    from gitbake.contract.yamlio import decode_text

    text = decode_text(data, cfg.INPUT_FILE)
    if repo.rev is None:
        wt = repo.input_path.read_text(encoding="utf-8", errors="replace") if repo.input_path.exists() else ""
        if wt != text:
            raise UsageError(
                "input.yml has uncommitted changes; a bake runs the committed input.yml",
                "commit them (git commit -am '...'; the hook then bakes), or discard them: git checkout -- input.yml",
            )
    loaded = cfg.parse_input(text, repo.root)
    # files the generators read come from the working tree: say so when they differ from the commit
    target = loaded.config.TARGET
    for gen in target.generators if target is not None else []:
        for rel in (getattr(gen, "template_path", None), getattr(gen, "path", None), getattr(gen, "dataset", None)):
            if not rel or not (repo.root / rel).is_file():
                continue
            committed = git.show(repo.root, rev, Path(rel).as_posix())
            if committed != (repo.root / rel).read_bytes():
                (reporter or Reporter()).note(
                    f"{rel} differs from its committed version (or is not committed); the working tree's is used"
                )
    return loaded


def write_records(store: Store, stage: str, key: str, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Store records as a manifest (`<stage>.jsonl` + metadata) and point the stage key at it."""
    with tempfile.TemporaryDirectory(dir=store.tmp) as tmp:
        path = Path(tmp) / STAGE_FILES[stage]
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
        manifest = store.put_dir(Path(tmp), {"kind": stage, "key": key, "count": len(records), **meta}, take=True)
    store.set_key(stage, key, manifest)
    return manifest


def read_records(store: Store, manifest: str, stage: str) -> Iterator[dict[str, Any]]:
    entry = store.read_manifest(manifest).files[STAGE_FILES[stage]]
    store.verify(entry.digest)
    with store.open(entry.digest) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def rollout_manifest(store: Store, recipe: Any, key: str) -> str | None:
    """The rollouts of the target with key `key`: by the store's key, or as `recipe` records them (a
    clone that pulled a commit's objects has them, not the key); None when they are not in the store."""
    manifest = store.get_key("rollout", key) or (_recorded_rollout(recipe, key) if recipe is not None else None)
    return manifest if manifest is not None and store.has(manifest) else None


def split_rollouts(store: Store, manifests: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (held-out, training) rollout records of `manifests`, in order: the one collection of the
    held-out questions, for `eval` and `diff` (a target with too few questions holds none out)."""
    heldout: list[dict[str, Any]] = []
    train: list[dict[str, Any]] = []
    for manifest in manifests:
        for rec in read_records(store, manifest, "rollout"):
            (heldout if rec["split"] == "heldout" else train).append(rec)
    return heldout, train


class Runner:
    """Runs the stages of one plan, loading the parent model at most once."""

    def __init__(
        self,
        repo: ModelRepo,
        plan: Plan,
        loaded: cfg.LoadedInput,
        force: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        self.repo, self.plan, self.loaded, self.force = repo, plan, loaded, force
        self.store = repo.store
        self.reporter = reporter or Reporter()
        self._model: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stim_done: str | None = None
        self._attempt = 0

    @property
    def target(self) -> TargetPlan:
        if self.plan.target is None:
            raise UsageError(
                "input.yml has no TARGET to make questions and answers for",
                "add a TARGET section, commit, and run again",
            )
        return self.plan.target

    def model(self) -> Any:
        """The parent model: the base model with the lineage's adapters merged in, in order."""
        if self._model is None:
            from gitbake.engine.models import bake_load_options, load

            parent = self.plan.parent
            adapters = []
            if parent.adapters:
                self._tmp = tempfile.TemporaryDirectory(dir=self.store.tmp)
                for i, digest in enumerate(parent.adapters):
                    dest = Path(self._tmp.name) / f"{i:03d}"
                    self.store.materialise_tree(digest, dest)
                    adapters.append(dest)
            self.reporter.say(f"loading {parent.base_model}" + (f" + {len(adapters)} adapter(s)" if adapters else ""))
            # a bake's stages (its rollouts, training and eval) share one model, loaded as the bake says
            options = bake_load_options(self.plan.bake.config) if self.plan.bake is not None else {}
            loaded = load(
                parent.base_model,
                adapters,
                root=self.repo.root,
                gguf=converted_dirs(self.store, self.reporter),
                **options,
            )
            check_loaded(self.loaded, self.plan, self.repo.root, loaded)
            self._model = loaded
        return self._model

    def preflight(self, stages: list[str]) -> None:
        """Refuse what cannot run on the model before any stage does work. validate could not measure a
        model that is not on this machine yet (a hub model not downloaded): then the model is loaded now,
        and `model()` runs the checks against it, rather than a stage failing midway through a job."""
        if all(self._cached(s, k) is not None for s, k in self._keys(stages)):
            return  # nothing will run: nothing to load
        if not limits.measurable(self.plan, self.repo.root):
            self.model()

    def _keys(self, stages: list[str]) -> list[tuple[str, str]]:
        keys = {
            "stim": self.plan.target.stim_key if self.plan.target else None,
            "rollout": self.plan.target.key if self.plan.target else None,
            "bake": self.plan.bake.key if self.plan.bake else None,
        }
        return [(s, k) for s, k in keys.items() if s in stages and k is not None]  # a stage without one refuses itself

    def reset_model(self) -> None:
        self._model = None

    def bake(self) -> StageResult:
        return _bake_stage(self)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def _cached(self, stage: str, key: str) -> StageResult | None:
        """The stored result of `stage` for `key` (a cache hit), unless --force."""
        hit = None if self.force else self.store.get_key(stage, key)
        if hit is None:
            return None
        meta = self.store.read_manifest(hit).meta
        return StageResult(stage, key, hit, True, int(str(meta.get("count", 0))))

    @collects_notes
    def stim(self) -> StageResult:
        t = self.target
        key = t.stim_key
        if (cached := self._cached("stim", key)) is not None:
            return cached
        from gitbake.engine import llm
        from gitbake.engine.stim import StimContext, heldout_note, make_stim

        started = time.monotonic()
        target_cfg = Target.model_validate(t.config)  # resolved: an inherited template is already applied
        needs_local = any(
            isinstance(g, cfg.OneshotGenerator) and g.model is None and g.base_url is None
            for g in target_cfg.generators
        )
        local = self._local_writer() if needs_local else None
        writers = {
            i: llm.writer_for(g, local)
            for i, g in enumerate(target_cfg.generators)
            if isinstance(g, cfg.OneshotGenerator)
        }

        def write(gen: cfg.OneshotGenerator, prompt: str) -> str:
            index = next(i for i, g in enumerate(target_cfg.generators) if g is gen)
            return writers[index](gen, prompt)

        ctx = StimContext(
            root=self.repo.root,
            teacher=self.plan.prompts[t.teacher].config,
            student=self.plan.prompts[t.student].config,
            templates=self.loaded.templates,
            question_files=self.loaded.question_files,
            oneshot_writer=write,
        )
        records = make_stim(target_cfg, ctx)
        heldout = sum(r["split"] == "heldout" for r in records)
        manifest = write_records(self.store, "stim", key, records, {"target": t.name, "heldout": heldout})
        self._stim_done = manifest  # a rollout in this same run uses it, even under --force
        note = heldout_note(records)
        return StageResult(
            "stim", key, manifest, False, len(records), time.monotonic() - started, [note] if note else []
        )

    def _local_writer(self) -> Callable[[str, float, int], str]:
        def write(prompt: str, temperature: float, max_tokens: int) -> str:
            from gitbake.engine.rollout import SamplingSettings, generate_batches
            from gitbake.engine.templating import render, response_text

            m = self.model()
            ids = render(m.tokenizer, [], None, prompt)
            self._attempt += 1  # a retry must be able to give another answer
            (answer,) = generate_batches(
                m.model,
                m.tokenizer,
                [ids],
                SamplingSettings(temperature=temperature, max_tokens=max_tokens, seed=self._attempt),
            )
            return response_text(m.tokenizer, answer.ids)

        return write

    @collects_notes
    def rollout(self) -> StageResult:
        t = self.target
        key = t.key
        if (cached := self._cached("rollout", key)) is not None:
            return cached
        stim_manifest = self._stim_done or (None if self.force else self.store.get_key("stim", t.stim_key))
        if stim_manifest is None:
            self.reporter.note("ran the missing stim stage first")
            stim_manifest = self.stim().manifest
        from gitbake.engine.rollout import SamplingSettings, make_rollouts

        started = time.monotonic()
        stim = list(read_records(self.store, stim_manifest, "stim"))
        c = t.config
        settings = SamplingSettings(
            num_traj_per_stimulus=c["num_traj_per_stimulus"],
            temperature=c["temperature"],
            max_tokens=c["max_tokens"],
            extra_kwargs=dict(c["extra_kwargs"]),
            seed=int(key[:8], 16),  # same key, same samples
            batch_size=c["max_concurrency"],
        )
        if c.get("model_name"):
            # the target names the model that answers (bgit's TARGET.model_name); its identity is in the key
            from gitbake.engine.models import load

            self.reporter.say(f"loading {c['model_name']} for the rollout")
            m = load(c["model_name"], root=self.repo.root, gguf=converted_dirs(self.store, self.reporter))
        else:
            m = self.model()
        records = make_rollouts(
            m.model,
            m.tokenizer,
            stim,
            self.plan.prompts[t.teacher].config,
            self.plan.prompts[t.student].config,
            settings,
            label=f"rollout {t.name}",
            reporter=self.reporter,
            answered_by_parent=not c.get("model_name"),
        )
        manifest = write_records(self.store, "rollout", key, records, {"target": t.name, "stim": stim_manifest})
        return StageResult("rollout", key, manifest, False, len(records), time.monotonic() - started)


def run(
    repo: ModelRepo, stages: list[str] | None, force: bool = False, reporter: Reporter | None = None
) -> list[StageResult]:
    """Run `stages` (None: every stage the committed input.yml has) in pipeline order."""
    reporter = reporter or Reporter()
    loaded = committed_input(repo, reporter)
    plan = repo.plan(loaded)
    return execute(repo, plan, loaded, stages, force, reporter)


def execute(
    repo: ModelRepo,
    plan: Plan,
    loaded: cfg.LoadedInput,
    stages: list[str] | None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> list[StageResult]:
    wanted = plan.stages if stages is None else stages
    if stages is None and not wanted:
        raise UsageError(
            "the committed input.yml has nothing to run",
            "uncomment or write a TARGET and/or BAKE section, commit, and run again",
        )
    order = [s for s in STAGES if s in wanted]
    runner = Runner(repo, plan, loaded, force=force, reporter=reporter)
    try:
        # gc keeps what the stages read or store until the bake commit names it (gitbake/repo/leases.py)
        runner.preflight(order)
        with leases.stages(repo.store, plan, repo.rev, until_commit="bake" in order):
            return [getattr(runner, stage)() for stage in order]
    finally:
        runner.close()


def check_loaded(loaded: cfg.LoadedInput, plan: Plan, root: Path, model: Any) -> None:
    """limits.check again, against the loaded model: its real config (widths, vocabulary, context), its
    tokenizer and its real parameter count, which validate may not have had (a model not downloaded)."""
    conf = model.model.config.to_dict()
    parameters = sum(p.numel() for p in model.model.parameters())
    tokenizer = model.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    limits.check(loaded, plan, root, limits.shape_from_config(conf, parameters), count)


@collects_notes
def _bake_stage(runner: Runner) -> StageResult:
    from gitbake.engine.bake import Baker, Trajectory, select
    from gitbake.engine.eval import evaluate

    plan, store = runner.plan, runner.store
    b = plan.bake
    if b is None:
        raise UsageError(
            "input.yml has no BAKE section", "add one (BAKE: name: ..., datasets: ...), commit, and run again"
        )
    hit = None if runner.force else store.get_key("bake", b.key)
    if hit:
        report = bake_report(store, b.key) or {}
        extra = {
            **_summary(report),
            "report": store.get_key("eval", b.key),
            "checkpoints": report.get("checkpoints") or {},
        }
        return StageResult("bake", b.key, hit, True, int(report.get("trajectories_trained", 0)), extra=extra)
    reporter = runner.reporter
    datasets: list[tuple[list[Trajectory], float]] = []
    contexts: dict[tuple[int, Any], tuple[list[int], list[int]]] = {}
    train_contexts: dict[tuple[int, Any], tuple[list[int], list[int]]] = {}
    samples: dict[tuple[int, Any], list[list[int]]] = {}  # held-out teacher samples the eval can take as they are
    max_tokens = 1
    # datasets in key order: the key sorts them, so the selection must not depend on their YAML order
    for i, d in enumerate(sorted(b.datasets, key=lambda d: (d.key, d.weight))):
        # a clone that pulled this commit's objects has the rollouts, not the key that names them
        manifest = rollout_manifest(store, runner.repo.recipe, d.key)
        if manifest is None and runner.plan.target is not None and d.key == runner.plan.target.key:
            rolled = runner.rollout()
            for n in [*rolled.notes, "ran the missing rollout stage first"]:
                reporter.note(f"{d.name}: {n}")
            manifest = rolled.manifest
        if manifest is None:
            raise GitbakeError(
                f"the rollouts of target {d.name} (key {d.key[:12]}) are not in the store",
                "fetch them with `git bake pull`, or define the target again so it can be made here",
            )
        trajs = []
        for rec in read_records(store, manifest, "rollout"):
            ctx = (rec["teacher_ids"], rec["student_ids"])
            max_tokens = max(max_tokens, len(rec["response_ids"]))
            if rec["split"] == "heldout":
                contexts[(i, rec["stimulus_id"])] = ctx
                if rec.get("teacher_sample"):
                    samples.setdefault((i, rec["stimulus_id"]), []).append(rec["response_ids"])
            else:
                train_contexts[(i, rec["stimulus_id"])] = ctx
                trajs.append(Trajectory(rec["teacher_ids"], rec["student_ids"], rec["response_ids"], i))
        datasets.append((trajs, d.weight))
    cfg = Bake.model_validate(b.config)  # resolved: the canonical config its key was made from
    data = select(datasets, cfg.total_trajectories, cfg.seed, reporter)
    eval_note = None
    if not contexts:
        contexts = train_contexts
        eval_note = "no held-out questions: evaluated on the training questions"
        reporter.note(eval_note)
    if cfg.deepspeed is not None:
        from gitbake.engine.ds import require_deepspeed

        require_deepspeed()
    started = time.monotonic()
    model = runner.model()
    # the adapter's config names the base model as .bread does (not its pinned commit), as before pins
    # existed: the same bake gives the same bytes whether or not .bread had pinned the commit yet
    bread = runner.repo.bread
    written = bread.base_model if bread is not None and bread.base_model else plan.parent.base_model
    baker = Baker(model.model, model.tokenizer, cfg, written, reporter=reporter)
    scratch = store.root / "jobs" / f"bake-{b.key[:16]}"
    with tempfile.TemporaryDirectory(dir=store.tmp) as tmp:
        # kept beside the scratch checkpoint, so an interrupted bake that resumes still has its earlier ones
        keep = scratch.parent / f"{scratch.name}-checkpoints"
        result = baker.train(data, Path(tmp) / "adapter", scratch=scratch, progress_label=f"bake {b.name}", keep=keep)
        from gitbake.engine.parallel import is_rank0

        if not is_rank0():  # under a launcher the other ranks only train: rank 0 evaluates, stores, commits
            runner.reset_model()
            return StageResult("bake", b.key, "", False, result.trajectories, time.monotonic() - started)
        eval_started = time.monotonic()
        report = evaluate(
            baker.model,
            model.tokenizer,
            list(contexts.values()),
            EVAL_SAMPLES,
            min(max_tokens, 256),
            seed=eval_seed(d.key for d in b.datasets),
            note=eval_note,
            given={n: samples.get(k, []) for n, k in enumerate(contexts)},
            packed=result.packed,
            reporter=reporter,
        ).as_json()  # the stored record: the eval's figures and the bake's
        report.update(
            {
                "bake": b.name,
                "key": b.key,
                "trajectories_trained": result.trajectories,
                "steps": result.steps,
                "final_loss": result.metrics[-1]["loss"] if result.metrics else None,
                "train_seconds": round(result.seconds, 3),
                "teacher_seconds": round(result.teacher_seconds, 3),
                "eval_seconds": round(time.monotonic() - eval_started, 3),
                "packed": result.packed,
            }
        )
        # only now, after training, the adapter check and eval all succeeded, does anything enter the store
        adapter = store.put_dir(Path(tmp) / "adapter", {"kind": "adapter"}, take=True)
        report["adapter"] = adapter
        # the checkpoints BAKE.checkpoint asked for: their adapters, outside the model's identity
        checkpoints = (
            {
                int(d.name): store.put_dir(d, {"kind": "adapter-checkpoint", "step": int(d.name)}, take=True)
                for d in sorted(keep.iterdir(), key=lambda p: int(p.name))
            }
            if keep.is_dir()
            else {}
        )
        report["checkpoints"] = {str(k): v for k, v in checkpoints.items()}
        rdir = Path(tmp) / "report"
        rdir.mkdir()
        with open(rdir / "metrics.jsonl", "w") as fh:
            for row in result.metrics:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        (rdir / "eval.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        report_manifest = store.put_dir(rdir, {"kind": "bake-report", "adapter": adapter}, take=True)
        store.set_key("bake", b.key, adapter)
        store.set_key("eval", b.key, report_manifest)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(keep, ignore_errors=True)
    runner.reset_model()  # the LoRA was injected into the loaded parent
    for n in result.notes:
        reporter.note(n)
    extra = {**_summary(report), "report": report_manifest, "checkpoints": report["checkpoints"]}
    return StageResult("bake", b.key, adapter, False, result.trajectories, time.monotonic() - started, extra=extra)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "gap_closed",
        "d_before",
        "d_after",
        "final_loss",
        "steps",
        "adapter",
        "note",
        "train_seconds",
        "teacher_seconds",
        "eval_seconds",
        "packed",
        "trajectories_trained",
    )
    return {k: report[k] for k in keys if k in report}


def find_stage_output(repo: ModelRepo, stage: str, target_name: str | None) -> tuple[str, str, str]:
    """(target name, key, manifest) of the stim / rollout output to show."""
    key_attr = "stim_key" if stage == "stim" else "key"
    candidates: list[tuple[str, str | None]] = []
    if target_name is None:
        try:
            loaded = committed_input(repo)
            t = repo.plan(loaded).target
            if t is not None:
                candidates.append((t.name, getattr(t, key_attr)))
        except GitbakeError:
            pass
        candidates += [(k.name, k.stim_key if stage == "stim" else k.key) for k in repo.lineage.targets()]
    else:
        from gitbake.repo.targets import show_target

        k = show_target(repo, target_name).target
        candidates.append((k.name, k.stim_key if stage == "stim" else k.key))
    for name, key in candidates:
        if key and len(key) == 64:
            manifest = repo.store.get_key(stage, key)
            if manifest:
                return name, key, manifest
    which = candidates[0][0] if candidates else "this repository"
    raise UsageError(f"no {stage} output for {which} yet", f"run it: git bake run {stage}")


@dataclass(frozen=True)
class Reevaluated:
    """What `git bake eval REV` measured: the engine's figures (as stored in eval.json), for which bake,
    adapter and commit, and the store object the report was kept as."""

    figures: dict[str, Any]  # questions, d_before, d_after, gap_closed, ... as gitbake.engine.eval reports them
    bake: str | None
    key: str | None
    adapter: str
    rev: str | None
    report: str  # the manifest of the stored report

    @property
    def questions(self) -> int:
        n: int = self.figures["questions"]
        return n

    @property
    def d_before(self) -> float:
        d: float = self.figures["d_before"]
        return d

    @property
    def d_after(self) -> float:
        d: float = self.figures["d_after"]
        return d

    @property
    def gap_closed(self) -> float | None:
        g: float | None = self.figures["gap_closed"]
        return g

    def as_json(self) -> dict[str, Any]:
        return {
            **self.figures,
            "bake": self.bake,
            "key": self.key,
            "adapter": self.adapter,
            "rev": self.rev,
            "report": self.report,
        }


def reevaluate(repo: ModelRepo, rev: str, reporter: Reporter | None = None) -> Reevaluated:
    """`git bake eval REV`: the eval of REV's model again, on the held-out questions of its bake's
    targets. The new report is stored as its own object (the model's identity does not change)."""
    from gitbake.workflow.heldout import heldout_of, loaded  # it reads the rollouts through this module

    held = heldout_of(repo, rev)
    from gitbake.engine.eval import evaluate  # the ML stack, once the revision is known to have a model

    store = repo.store
    with loaded(repo, held, reporter, as_baked=True) as (parent, pm), tempfile.TemporaryDirectory(dir=store.tmp) as tmp:
        report = evaluate(
            pm,
            parent.tokenizer,
            [(q.teacher_ids, q.student_ids) for q in held.questions],
            EVAL_SAMPLES,
            held.max_tokens,
            seed=eval_seed(held.rollout_keys),
            note=held.note,
            given={n: q.samples for n, q in enumerate(held.questions)},
            reporter=reporter,
        ).as_json()
        figures = dict(report)
        report.update({"bake": held.bake, "key": held.key, "adapter": held.chain[-1], "rev": held.rev})
        rdir = Path(tmp) / "report"
        rdir.mkdir()
        (rdir / "eval.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        manifest = store.put_dir(rdir, {"kind": "bake-report", "adapter": held.chain[-1]}, take=True)
        if held.key:
            store.set_key("eval", held.key, manifest)
    return Reevaluated(figures, held.bake, held.key, held.chain[-1], held.rev, manifest)


def _recorded_rollout(recipe: Any, key: str) -> str | None:
    for s in recipe.steps:
        if s.action == "run_rollout" and s.key == key and s.outputs:
            out: str | None = s.outputs.get("manifest")
            return out
    return None


@dataclass(frozen=True)
class RecordExport:
    """What `git bake stim / rollout --jsonl FILE` wrote."""

    stage: str
    target: str  # the target's hashed name
    count: int
    path: Path


def export_records(repo: ModelRepo, stage: str, target_name: str | None, path: Path) -> RecordExport:
    """`git bake stim / rollout --jsonl FILE`: every record of the stage output, one JSON object a line."""
    name, _key, manifest = find_stage_output(repo, stage, target_name)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in read_records(repo.store, manifest, stage):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return RecordExport(stage, name, n, path)
