"""The Ollama `Modelfile` written beside an exported GGUF: FROM the file, TEMPLATE, SYSTEM and stop PARAMETERs.

Ollama templates are Go templates, chat templates are Jinja: no general translation exists. But most chat
templates render every message the same way, `A + role + B + content + C`, then a generation prompt `G`
(ChatML: A = `<|im_start|>`, B = newline, C = `<|im_end|>` newline; tiny: A = `<|`, B = `|>`, C = `<|eos|>`).
So the template is rendered with marker messages and, when the result has that shape exactly, it becomes
`{{ range .Messages }}A{{ .Role }}B{{ .Content }}C{{ end }}G`. A default system prompt that the template adds
when a conversation has none (SmolLM2's) becomes `SYSTEM`. A model with no chat template gets gitbake's own
plain layout (engine/templating.py: `user: ...` turns), which has that shape, and its stop. Anything else is
said in a comment line, and Ollama then falls back on its own default template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gitbake.engine.templating import FALLBACK_TURN_STOP, PLAIN_PROMPT, PLAIN_TURN

# marker contents: no template's own text contains them
_SYS, _USER, _ASSISTANT, _USER2 = "\x02sys\x03", "\x02user\x03", "\x02assistant\x03", "\x02user2\x03"


@dataclass(frozen=True)
class TurnShape:
    """Every turn renders as `before + role + between + content + after`; `prompt` asks for the reply."""

    before: str
    between: str
    after: str
    prompt: str
    default_system: str | None  # what the template puts in a conversation that has no system message

    def turn(self, role: str, content: str) -> str:
        return self.before + role + self.between + content + self.after

    def go_template(self) -> str:
        turn = f"{self.before}{{{{ .Role }}}}{self.between}{{{{ .Content }}}}{self.after}"
        return f"{{{{- range .Messages }}}}{turn}{{{{ end }}}}{self.prompt}"


def _render(template: str, messages: list[dict[str, str]], generation: bool, specials: dict[str, str]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation, **specials)


def turn_shape(template: str, specials: dict[str, str] | None = None) -> TurnShape | None:
    """The shape every turn of `template` has, or None when it has no such shape (or does not render)."""
    specials = specials or {}

    def render(msgs: list[tuple[str, str]], generation: bool) -> str:
        return _render(template, [{"role": r, "content": c} for r, c in msgs], generation, specials)

    try:
        pair = render([("system", _SYS), ("user", _USER)], False)
        head, sep, rest = pair.partition(_SYS)
        mid, sep2, after = rest.partition(_USER)
        if not (sep and sep2) or "system" not in head:
            return None
        before, _, between = head.rpartition("system")
        if mid != after + before + "user" + between:
            return None
        prompted = render([("system", _SYS), ("user", _USER)], True)
        if not prompted.startswith(pair):
            return None
        shape = TurnShape(before, between, after, prompted[len(pair) :], None)
        # the whole conversation must be exactly the turns and the prompt: nothing else varies by position
        convo = [("system", _SYS), ("user", _USER), ("assistant", _ASSISTANT), ("user", _USER2)]
        if render(convo, True) != "".join(shape.turn(r, c) for r, c in convo) + shape.prompt:
            return None
        alone = render([("user", _USER)], False)
        if alone == shape.turn("user", _USER):
            return shape
        # the template added a system turn of its own: its content is the default system prompt
        system_turn, prefix = alone.removesuffix(shape.turn("user", _USER)), before + "system" + between
        if alone.endswith(shape.turn("user", _USER)) and system_turn.startswith(prefix) and system_turn.endswith(after):
            default = system_turn[len(prefix) : len(system_turn) - len(after)]
            if shape.turn("system", default) == system_turn:
                return TurnShape(before, between, after, shape.prompt, default)
        return None
    except Exception:  # a template that does not render here (extensions, other variables) has no shape
        return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(
    gguf_name: str,
    chat_template: str | None,
    special_tokens: Sequence[str] = (),
    eos_token: str | None = None,
    specials: dict[str, Any] | None = None,
) -> str:
    """The Modelfile's text for `gguf_name` (a file in the same folder)."""
    lines = [
        "# Written by `git bake export --gguf`. Create the Ollama model with:",
        "#   ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
    ]
    if chat_template:
        shape = turn_shape(chat_template, {k: str(v) for k, v in (specials or {}).items()})
    else:  # no chat template: the layout gitbake itself prompts such a model with, so Ollama answers alike
        shape = TurnShape(*PLAIN_TURN, PLAIN_PROMPT, None)
    if shape is None or '"""' in shape.go_template() or (shape.default_system or "").count('"""'):
        lines.append(
            "# TEMPLATE: not written, its chat template has no Go equivalent; Ollama uses its default template"
            " (see the GGUF's chat template)"
        )
    else:
        lines.append(f'TEMPLATE """{shape.go_template()}"""')
        if shape.default_system is not None:
            lines.append(f'SYSTEM """{shape.default_system}"""')
    # stop at the end of a turn and where the model would start the user's next one
    where = (shape.after + shape.turn("user", "")) if shape else ""
    stops = [eos_token] if eos_token else []
    stops += [t for t in special_tokens if t and t in where]
    if not chat_template:
        stops.append(FALLBACK_TURN_STOP)
    for stop in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"
