#!/usr/bin/env python3
"""Print what model .bake/model holds: its adapter digests and the next-token logits on a fixed input.

The demo uses it to show that checking out an older commit really brings the older model back (tiny's
text is noise, so the logits are the evidence). `git bake chat -p` arrives with the model-using issue.

    python scripts/model_fingerprint.py [REPO_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
model_dir = root / ".bake" / "model"
meta = json.loads((model_dir / "model.json").read_text())
digests = [a["digest"][:12] for a in meta["adapters"]]

import torch  # noqa: E402

from gitbake.engine.models import load  # noqa: E402
from gitbake.engine.templating import render  # noqa: E402

m = load(meta["base_model"], [model_dir / a["path"] for a in meta["adapters"]], root=root)
ids = render(m.tokenizer, [], None, "What is the capital of France?")
with torch.no_grad():
    logits = m.model(torch.tensor([ids])).logits[0, -1]
print(f"adapters: {', '.join(digests) or '(none: the base model)'}")
print("next-token logits[:5]: " + " ".join(f"{x:+.4f}" for x in logits[:5].tolist()))
