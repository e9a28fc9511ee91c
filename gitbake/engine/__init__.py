"""The engine: models, stim, rollout, bake, eval. The only package (with chat, serve and export) that
imports torch, transformers, peft or deepspeed; everything here is imported lazily by the CLI."""
