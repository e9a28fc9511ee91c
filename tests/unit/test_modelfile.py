"""gitbake.engine.modelfile: chat templates whose turns all have one shape become Go templates (tiny's,
SmolLM2's ChatML with its default system prompt); any other is named in a comment line."""

from __future__ import annotations

from gitbake.engine.modelfile import modelfile, turn_shape
from gitbake.engine.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

# SmolLM2-135M-Instruct's chat template, as its GGUF carries it
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_tiny_template_becomes_a_go_template() -> None:
    text = modelfile("tiny.gguf", CHAT_TEMPLATE, SPECIAL_TOKENS, "<|eos|>")
    assert text.splitlines()[2:] == [
        "FROM ./tiny.gguf",
        'TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|eos|>{{ end }}<|assistant|>"""',
        'PARAMETER stop "<|eos|>"',
        'PARAMETER stop "<|user|>"',  # where the model would start writing the user's turn
    ]


def test_chatml_with_a_default_system_prompt() -> None:
    shape = turn_shape(SMOLLM2)
    assert shape is not None
    assert (shape.before, shape.between, shape.after) == ("<|im_start|>", "\n", "<|im_end|>\n")
    assert shape.prompt == "<|im_start|>assistant\n"
    assert shape.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    text = modelfile("s.gguf", SMOLLM2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>")
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"']


def test_templates_without_one_turn_shape_are_named_in_a_comment() -> None:
    # the first user message is treated apart from the others: no range over the messages says that
    odd = (
        "{% for m in messages %}{% if loop.index == 2 %}[FIRST]{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    for template in (odd, "{{ messages[0]['content'] | nosuchfilter }}"):
        text = modelfile("m.gguf", template, ["</s>"], "</s>")
        assert "TEMPLATE" in text and 'TEMPLATE """' not in text
        assert any(line.startswith("# TEMPLATE: not written") for line in text.splitlines())
        assert 'PARAMETER stop "</s>"' in text and "FROM ./m.gguf" in text


def test_a_model_without_a_chat_template_gets_gitbakes_plain_layout_and_its_stop() -> None:
    """A base model's GGUF (Gemma 3 270M's) has no chat template: Ollama is given the layout gitbake prompts
    it with (engine/templating.py), and stops where the model would write the user's next turn."""
    text = modelfile("g.gguf", None, ["<eos>"], "<eos>")
    assert 'TEMPLATE """{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:"""' in text
    # Ollama reads a quoted value across a line break, as its own Modelfile writer quotes one
    assert text.endswith('PARAMETER stop "<eos>"\nPARAMETER stop "\nuser:"\n')
    assert "not written" not in text
