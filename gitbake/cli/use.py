"""`git bake chat`, `serve`, `export`, `metrics` and `diff`: using the models (these load the ML stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json


def sampling_options(f: Any) -> Any:
    """The sampling options chat shares with serve's request fields (gitbake.engine.sampling)."""
    options = [
        click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True, help="0: greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(1), help="Sample among the K likeliest tokens."),
        click.option(
            "--min-p", type=click.FloatRange(0, 1), help="Drop tokens below MIN_P x the likeliest's probability."
        ),
        click.option("--presence-penalty", type=click.FloatRange(-2, 2), default=0.0, help="OpenAI's, -2 to 2."),
        click.option("--frequency-penalty", type=click.FloatRange(-2, 2), default=0.0, help="OpenAI's, -2 to 2."),
        click.option(
            "--repetition-penalty", type=click.FloatRange(0, 100, min_open=True), default=1.0, help="transformers'."
        ),
        click.option("--seed", type=int, help="Make sampled answers reproducible."),
        click.option("--stop", multiple=True, metavar="TEXT", help="End the answer before TEXT (up to 4)."),
        click.option(
            "--logprobs",
            "top_logprobs",
            type=click.IntRange(0, 20),
            metavar="N",
            help="With -p: print each token's log-probability and the N likeliest alternatives.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def sampling_from(opts: dict[str, Any]) -> Any:
    from gitbake.engine.sampling import Sampling
    from gitbake.errors import UsageError

    if len(opts["stop"]) > 4:
        raise UsageError(f"--stop was given {len(opts['stop'])} times: at most 4", "keep the 4 that matter")
    return Sampling(
        temperature=opts["temperature"],
        top_p=opts["top_p"],
        top_k=opts["top_k"],
        min_p=opts["min_p"],
        presence_penalty=opts["presence_penalty"],
        frequency_penalty=opts["frequency_penalty"],
        repetition_penalty=opts["repetition_penalty"],
        seed=opts["seed"],
        stop=tuple(opts["stop"]),
        logprobs=opts["top_logprobs"] is not None,
        top_logprobs=opts["top_logprobs"] or 0,
    )


@click.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("-p", "--prompt", "prompt", metavar="TEXT", help="Answer TEXT once and exit (no REPL).")
@click.option("--system", metavar="TEXT", help="A system prompt to start with (in the REPL: /system TEXT).")
@sampling_options
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256, show_default=True)
@click.option(
    "--checkpoint", type=int, metavar="STEP", help="Use the last bake's checkpoint saved at training step STEP."
)
def chat(
    rev: str, prompt: str | None, system: str | None, max_tokens: int, checkpoint: int | None, **opts: Any
) -> None:
    """Talk to the model of REV (default HEAD): answers stream as they are generated.

    REV is any model address (a revision, a bake or model name, @checkpoint-STEP). Sampling goes through
    transformers' logits processors, with OpenAI's parameters (as `git bake serve` takes them).

    \b
    In the REPL: /system TEXT, /clear, /status, /compare [TEXT] (the base model's answer beside this
    version's), /help, /quit. Line editing and history work as in a shell.

    \b
    Examples:
      git bake chat
      git bake chat HEAD~2 -p "What is the capital of France?" --temperature 0
      git bake chat -p "Tell me a story." --top-p 0.9 --presence-penalty 0.5 --seed 7
      git bake chat -p "2 + 2 =" --temperature 0 --logprobs 3
      git bake chat --checkpoint 200
    """
    import sys

    from gitbake.use.chat import handle, open_session, repl

    sampling = sampling_from(opts)
    session = open_session(repository(), rev, sampling, max_tokens, checkpoint, system)

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if prompt is not None:
        session.ask(prompt, out)
        out("\n")
        if sampling.logprobs:
            from gitbake.use.chat import logprob_table

            out(logprob_table(session.model.tokenizer, session.last_logprobs) + "\n")
        return
    if not sys.stdin.isatty():  # piped input: each line is a turn or a command
        for line in sys.stdin:
            if not handle(session, line, out):
                break
        return
    repl(session, input, out)


@click.command(context_settings=CONTEXT)
@click.argument("revs", nargs=-1, metavar="[MODEL]...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option(
    "--api-key",
    envvar="GITBAKE_API_KEY",
    metavar="KEY",
    help="Require `Authorization: Bearer KEY`. Prefer env GITBAKE_API_KEY or --api-key-file: `ps` shows arguments.",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Read the API key from FILE's first line.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also accept requests whose Host header is NAME (by default only the bound address and localhost).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Concurrent requests decoded together.",
)
@click.option(
    "--max-prompt-tokens",
    type=click.IntRange(1),
    metavar="N",
    help="Refuse longer prompts with 400 (default: the model's context minus the request's max_tokens).",
)
def serve(
    revs: tuple[str, ...],
    host: str,
    port: int,
    api_key: str | None,
    api_key_file: Path | None,
    allow_hosts: tuple[str, ...],
    max_batch: int,
    max_prompt_tokens: int | None,
) -> None:
    """Serve the models of MODEL... (default HEAD) over an OpenAI-compatible HTTP API.

    Each MODEL is any model address (a revision, a bake or model name, @checkpoint-STEP). GET /v1/models
    lists them, each named by its bake name (a request may also use its other names); POST
    /v1/chat/completions (with `tools` rendered by the chat template, and the model's calls returned as
    `tool_calls` when its tokenizer ships a response template) and POST /v1/completions answer,
    streamed with "stream": true. Sampling takes OpenAI's parameters (and top_k, min_p,
    repetition_penalty), logprobs included; a field the server does not support is answered 400, never
    ignored. Concurrent requests are batched into shared forward passes.

    \b
    Examples:
      git bake serve
      GITBAKE_API_KEY=secret git bake serve main formal --port 8080
      curl -s localhost:8000/v1/models
    """
    from gitbake.use.serve import Server, is_loopback, listen, load_served, read_api_key, resolve_served

    key = read_api_key(api_key, api_key_file)
    if (
        api_key is not None
        and click.get_current_context().get_parameter_source("api_key") == click.core.ParameterSource.COMMANDLINE
    ):
        click.echo(
            "warning: --api-key is visible to other users of this machine (ps); use GITBAKE_API_KEY or --api-key-file",
            err=True,
        )
    if key is None and not is_loopback(host):
        click.echo(
            f"warning: listening on {host} without an API key: anyone who can reach this machine can use these models; "
            "set GITBAKE_API_KEY or --api-key-file",
            err=True,
        )
    repo = repository()
    versions = resolve_served(repo, list(revs))  # an unknown address is said first,
    sock = listen(host, port)  # then a busy port, both before any model loads
    try:
        models = load_served(repo, versions, max_batch)
    except BaseException:
        sock.close()
        raise
    server = Server(models, host, port, key, max_prompt_tokens, allow_hosts, sock=sock)
    click.echo(f"serving {', '.join(models)} at {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.close()


@click.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option(
    "--adapter", "adapter_dir", type=click.Path(path_type=Path), help="Write the adapter chain (PEFT format) here."
)
@click.option(
    "--merged", "merged_dir", type=click.Path(path_type=Path), help="Write a full model with the adapters merged here."
)
@click.option(
    "--gguf",
    "gguf_file",
    type=click.Path(path_type=Path),
    help="Write the merged model as one GGUF file (llama.cpp, Ollama), with a Modelfile beside it.",
)
@click.option(
    "--single",
    is_flag=True,
    help="With --adapter: one adapter equal to the whole chain (exact), for vLLM's --lora-modules and PEFT.",
)
@click.option("--type", "gguf_type", metavar="f32|f16|q8_0", help="With --gguf: the weights' type (default f32).")
@click.option("--force", is_flag=True, help="Replace a non-empty destination (with --gguf: an existing file).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(
    rev: str,
    adapter_dir: Path | None,
    merged_dir: Path | None,
    gguf_file: Path | None,
    single: bool,
    gguf_type: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Export the model of REV: its adapter chain (--adapter DIR), a merged model (--merged DIR) or a
    GGUF file (--gguf FILE).

    A merged directory loads with AutoModelForCausalLM.from_pretrained(DIR), without gitbake or PEFT. A GGUF
    file runs in llama.cpp; `ollama create NAME -f Modelfile` in its folder makes it an Ollama model.

    \b
    Examples:
      git bake export HEAD --merged ./yoda-merged
      git bake export v1 --adapter ./yoda-adapters
      git bake export yoda_bake --adapter ./yoda-lora --single   # for vLLM's --lora-modules
      git bake export HEAD --gguf ./yoda/yoda.gguf --type q8_0
    """
    from gitbake.errors import UsageError

    if sum(d is not None for d in (adapter_dir, merged_dir, gguf_file)) != 1:
        raise UsageError(
            "say what to export: --adapter DIR, --merged DIR or --gguf FILE (one of them)",
            "e.g. git bake export HEAD --merged ./out",
        )
    if gguf_type is not None and gguf_file is None:
        raise UsageError("--type applies to --gguf only", "e.g. git bake export HEAD --gguf ./out.gguf --type f16")
    if single and adapter_dir is None:
        raise UsageError("--single applies to --adapter only", "e.g. git bake export HEAD --adapter ./out --single")
    repo = repository()
    if adapter_dir is not None:
        from gitbake.use.export import export_adapters

        out = export_adapters(repo, rev, adapter_dir, force, single)
    elif gguf_file is not None:
        from gitbake.use.export import export_gguf

        out = export_gguf(repo, rev, gguf_file, gguf_type or "f32", force)
    else:
        from gitbake.use.export import export_merged

        out = export_merged(repo, rev, merged_dir or Path("."), force)
    if as_json:
        emit_json(out.as_json())
        return
    n = len(out.adapters)
    kind = f"gguf {out.gguf_type}" if out.kind == "gguf" else out.kind
    if out.rank is not None:
        kind = f"one adapter of rank {out.rank}"
    click.echo(
        f"exported {out.model_name or out.base_model} ({n} adapter{'s' if n != 1 else ''}, {kind}) to {out.dest}"
    )
    if out.rank is not None and out.how:
        click.echo(f"load it: {out.how} --enable-lora --max-lora-rank {out.rank} --lora-modules NAME={out.dest}")
    if out.modelfile is not None:
        click.echo(f"Ollama: cd {out.modelfile.parent} && ollama create NAME -f {out.modelfile.name}")


@click.command(context_settings=CONTEXT)
@click.argument("bake", required=False)
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the curve to a PNG (needs matplotlib)."
)
@click.option("--csv", "as_csv", is_flag=True, help="Print the metrics as CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics and eval as JSON.")
def metrics(bake: str | None, png: Path | None, as_csv: bool, as_json: bool) -> None:
    """The loss curve of BAKE (a bake name or a revision; default: HEAD's last bake) and its eval.

    \b
    Examples:
      git bake metrics
      git bake metrics yoda_bake --png loss.png
      git bake metrics HEAD~2 --csv > loss.csv
    """
    from gitbake.use.metrics import chart, find, to_csv, to_png

    m = find(repository(), bake)
    if png is not None:
        to_png(m, png)
    if as_json:
        emit_json(m.as_json())
        return
    if as_csv:
        click.echo(to_csv(m.rows), nl=False)
        return
    click.echo(f"{m.bake} ({m.commit[:12]}): {len(m.rows)} steps")
    click.echo(chart(m.losses()))
    e = m.eval
    if e.get("gap_closed") is not None:
        click.echo(
            f"eval: gap_closed {e['gap_closed']:.3f} (KL {e['d_before']:.4f} -> {e['d_after']:.4f} nats/token) "
            f"on {e.get('questions')} question(s)" + (f"; {e['note']}" if e.get("note") else "")
        )
    if (s := m.loss_stats()) is not None:
        click.echo(f"loss: first {s.first:.4f}, last {s.last:.4f}, min {s.min:.4f}")
    if png is not None:
        click.echo(f"wrote {png}")


@click.command(context_settings=CONTEXT)
@click.argument("rev1")
@click.argument("rev2", required=False)
@click.option(
    "--questions",
    "questions_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Questions to ask (.txt: one per line; .jsonl).",
)
@click.option(
    "--samples", type=click.IntRange(1, 64), default=2, show_default=True, help="Answers sampled per question."
)
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--top", type=int, default=5, show_default=True, help="How many of the most different questions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def diff(
    rev1: str, rev2: str | None, questions_file: Path | None, samples: int, max_tokens: int, top: int, as_json: bool
) -> None:
    """How the models of REV1 and REV2 differ in behaviour (with one REV: it against its parent model).

    Mean per-token KL(REV1 || REV2) on answers REV1's model gives to the held-out questions of their
    lineages (or --questions FILE), the questions where they differ most, and both answers.

    \b
    Examples:
      git bake diff HEAD              # what the last bake changed
      git bake diff main formal --json
    """
    from gitbake.use.chat import side_by_side
    from gitbake.use.diff import diff as do_diff

    out = do_diff(repository(), rev1, rev2, questions_file, samples, max_tokens, top)
    if as_json:
        emit_json(out.as_json())
        return
    click.echo(
        f"{out.a.name} ({rev1}) vs {out.b.name} ({rev2 or 'its parent model'}): "
        f"mean KL {out.mean_kl:.4f} nats/token over {out.tokens} tokens, {out.asked} question(s)"
    )
    if out.note:
        click.echo(f"note: {out.note}")
    for q in out.questions:
        click.echo(f"\n{q.question}   (KL {q.kl:.4f})")
        click.echo(side_by_side(out.a.name, q.answer_a, out.b.name, q.answer_b))
