"""`git bake chat [REV]`: talk to the model of any revision, streamed token by token.

A REPL with history and commands (`/system TEXT` keeps the whole text, where bgit kept the first word;
`/compare` asks the base model the same turn, side by side), or one answer with `-p`. The model is the
revision's base model with its adapter chain merged; `--checkpoint N` swaps the last bake's adapter for
the one it saved at step N.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gitbake.engine.sampling import Sampling
from gitbake.repo.ggufbase import converted_dirs
from gitbake.repo.repo import ModelRepo
from gitbake.use.versions import Version, load, resolve

HELP = """\
/system TEXT   set the system prompt to TEXT (all of it); /system alone shows it, /system - clears it
/clear         forget the conversation (the system prompt stays)
/status        which model this is, the settings, the length of the conversation
/compare [TEXT] the same turn (this conversation, then TEXT or your last message again) from the
               base model and from this version, side by side
/help          this text
/quit, /exit   leave (so does Ctrl-D); Ctrl-C stops an answer
"""


@dataclass
class Session:
    repo: ModelRepo
    version: Version
    model: Any
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7))
    max_tokens: int = 256
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    turns: int = 0  # each answer's seed is the sampling seed (default 0) plus this: reproducible, not repeated
    _base: Any = None
    last_logprobs: list[Any] = field(default_factory=list)  # of the last answer, when sampling.logprobs

    def _messages(self, user: str, with_history: bool = True) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + (self.history if with_history else []) + [{"role": "user", "content": user}]

    def answer(self, model: Any, messages: list[dict[str, str]], write: Callable[[str], None] | None) -> str:
        from gitbake.engine.infer import stream
        from gitbake.engine.templating import render, with_turn_stops

        self.turns += 1
        sampling = dataclasses.replace(self.sampling, seed=(self.sampling.seed or 0) + self.turns)
        sampling = with_turn_stops(model.tokenizer, sampling)
        ids = render(model.tokenizer, messages, None, None)
        parts = []
        self.last_logprobs = []
        for kind, value in stream(model.model, model.tokenizer, ids, sampling, self.max_tokens, events=True):
            if kind == "logprobs":
                self.last_logprobs += value
                continue
            parts.append(value)
            if write is not None:
                write(value)
        return "".join(parts)

    def ask(self, text: str, write: Callable[[str], None] | None) -> str:
        reply = self.answer(self.model, self._messages(text), write)
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return reply

    def base(self) -> Any:
        if self._base is None:
            from gitbake.engine.models import load_base

            self._base = load_base(self.version.base_model, self.repo.root, gguf=converted_dirs(self.repo.store))
        return self._base

    def compare(self, text: str) -> tuple[str, str]:
        """The same turn (the conversation so far, then `text`) answered by the base model and by this version."""
        msgs = self._messages(text)
        return self.answer(self.base(), msgs, None), self.answer(self.model, msgs, None)

    def status(self) -> str:
        v = self.version
        lines = [
            f"model:       {v.name} ({v.model_name or 'base model'}) at {v.rev} ({v.commit[:12]})",
            f"base model:  {v.base_model}, {len(v.adapters)} adapter(s)"
            + (f", checkpoint step {v.checkpoint}" if v.checkpoint else ""),
            f"settings:    {describe(self.sampling)}, max tokens {self.max_tokens}",
            f"system:      {self.system if self.system else '(none)'}",
            f"turns:       {len(self.history) // 2}",
        ]
        return "\n".join(lines)


def side_by_side(left_title: str, left: str, right_title: str, right: str, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 20)).columns
    col = max(20, (width - 3) // 2)

    def lines(title: str, text: str) -> list[str]:
        body = [w for para in (text or "(empty)").splitlines() or [""] for w in (textwrap.wrap(para, col) or [""])]
        return [title[:col], "-" * min(col, len(title))] + body

    a, b = lines(left_title, left), lines(right_title, right)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"{x:<{col}} | {y}" for x, y in zip(a, b))


def handle(session: Session, line: str, out: Callable[[str], None]) -> bool:
    """One line of the REPL; False when the user leaves."""
    text = line.strip()
    if not text:
        return True
    if text.startswith("/"):
        cmd, _, arg = text.partition(" ")
        arg = arg.strip()
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/help":
            out(HELP)
        elif cmd == "/clear":
            session.history.clear()
            out("(conversation cleared)\n")
        elif cmd == "/status":
            out(session.status() + "\n")
        elif cmd == "/system":
            if not arg:
                out(f"system prompt: {session.system or '(none)'}\n")
            else:
                session.system = None if arg == "-" else arg
                out(f"(system prompt {'cleared' if arg == '-' else 'set'})\n")
        elif cmd == "/compare":
            if arg:
                base, ours = session.compare(arg)
            else:  # the last turn again: the conversation before it, then its user message
                last = max((i for i, m in enumerate(session.history) if m["role"] == "user"), default=None)
                if last is None:
                    out("nothing to compare yet: /compare TEXT, or say something first\n")
                    return True
                saved, session.history = session.history, session.history[:last]
                try:
                    base, ours = session.compare(saved[last]["content"])
                finally:
                    session.history = saved
            out(side_by_side(f"base model ({session.version.base_model})", base, session.version.name, ours) + "\n")
        else:
            out(f"unknown command {cmd}; /help lists them\n")
        return True
    session.ask(text, out)
    out("\n")
    return True


def open_session(
    repo: ModelRepo, rev: str, sampling: Sampling, max_tokens: int, checkpoint: int | None, system: str | None = None
) -> Session:
    version = resolve(repo, rev, checkpoint)
    return Session(repo, version, load(repo, version), sampling, max_tokens, system)


def describe(sampling: Sampling) -> str:
    """The settings that differ from plain sampling, for /status."""
    default = Sampling()
    shown = [f"temperature {sampling.temperature}"] + [
        f"{f.name.replace('_', ' ')} {getattr(sampling, f.name)}"
        for f in dataclasses.fields(sampling)
        if f.name not in ("temperature", "seed") and getattr(sampling, f.name) != getattr(default, f.name)
    ]
    return ", ".join(shown)


def logprob_table(tokenizer: Any, logprobs: list[Any]) -> str:
    """One line per generated token: its text, its log-probability and the likeliest alternatives."""
    lines = []
    for lp in logprobs:
        alts = "  ".join(f"{tokenizer.decode([t])!r} {v:.3f}" for t, v in lp.top)
        lines.append(f"{tokenizer.decode([lp.token])!r:>16} {lp.logprob:8.3f}" + (f"   {alts}" if alts else ""))
    return "\n".join(lines)


def repl(session: Session, read: Callable[[str], str], out: Callable[[str], None]) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    out(f"chatting with {session.version.name} ({session.version.rev}); /help for commands, /quit to leave\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            out("\n")
            return
        except KeyboardInterrupt:
            out("\n(Ctrl-D or /quit to leave)\n")
            continue
        try:
            if not handle(session, line, out):
                return
        except KeyboardInterrupt:
            out("\n(answer stopped)\n")
