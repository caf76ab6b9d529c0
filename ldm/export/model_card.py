"""`final_model/README.md`: the model card, in the Hugging Face format (`huggingface_hub.ModelCard`).

Why huggingface_hub's card: its YAML header (base_model, library_name, pipeline_tag, tags) is what the hub and
the tools index, and `ModelCard` writes and validates it; the body says what was trained on what, how it
scored (eval.json, once evaluate.py has run) and the exact lines that load each file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

CARD_FILE = "README.md"
EVAL_FILE = "eval.json"  # written by evaluate.py into the run folder (final_model/'s parent)

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

The CLIP text encoder of `{{ base }}`, fine-tuned with its U-Net and VAE frozen (written by this project's train.py).

| | |
|---|---|
{% for name, value in facts %}| {{ name }} | {{ value }} |
{% endfor %}
## Evaluation

{{ evaluation }}

## Files

{% for name, what in files %}- `{{ name }}`: {{ what }}
{% endfor %}
## Load it

```bash
{{ sample_line }}
```

```python
{{ diffusers_lines }}
```
"""

FILE_NOTES = {
    "model.safetensors": "the whole model in the single-file (CompVis) layout: A1111, ComfyUI, Forge, InvokeAI",
    "text_encoder.safetensors": "the encoder alone, `cond_stage_model.transformer.*` keys (ComfyUI's CLIP loader)",
    "lora.safetensors": "the LoRA adapter in kohya's layout (A1111, ComfyUI, diffusers' load_lora_weights)",
    "text_encoder": "the encoder as transformers' save_pretrained folder (diffusers)",
    "adapter": "peft's adapter folder (PeftModel.from_pretrained)",
    "final_weights.safetensors": "the trained tensors alone (this project's sample.py and evaluate.py)",
}


def _looks_like_hub_id(base: str) -> bool:
    return not base.startswith(("/", ".", "~")) and base.count("/") <= 1


def _evaluation(folder: Path) -> str:
    report_path = folder.parent / EVAL_FILE
    if not report_path.is_file():
        return f"evaluate.py has not run yet: `python evaluate.py checkpoint={folder}` adds its figures here."
    metrics = json.loads(report_path.read_text()).get("metrics", {})
    rows = ["| metric | base model | fine-tuned |", "|---|---|---|"]
    for group in ("clip_score", "fd_clip"):
        for name, row in metrics.get(group, {}).items():
            rows.append(f"| {group} {name} | {row.get('base')} | {row.get('finetuned')} |")
    fid = metrics.get("fid_inception", {})
    if "base" in fid:
        rows.append(f"| fid_inception | {fid['base']} | {fid['finetuned']} |")
    drift = metrics.get("embedding_drift", {}).get("mean_cosine_drift")
    if drift is not None:
        rows.append(f"| embedding drift (1 - cos) | | {drift} |")
    return f"From `{report_path}`:\n\n" + "\n".join(rows)


def _diffusers_lines(folder: Path, base: str, files: set[str]) -> str:
    lines = ["import torch", "from diffusers import StableDiffusionPipeline"]
    if "model.safetensors" in files:
        lines += [
            f'pipe = StableDiffusionPipeline.from_single_file("{folder / "model.safetensors"}",',
            f'                                                config="{base}", torch_dtype=torch.float32)',
        ]
    else:
        lines += [
            "from transformers import CLIPTextModel",
            f'text_encoder = CLIPTextModel.from_pretrained("{folder / "text_encoder"}")',
            f'pipe = StableDiffusionPipeline.from_pretrained("{base}", text_encoder=text_encoder)',
        ]
    if "lora.safetensors" in files:
        lines += [
            f'# or the base model with the LoRA: pipe = StableDiffusionPipeline.from_pretrained("{base}")',
            f'#                                  pipe.load_lora_weights("{folder}", weight_name="lora.safetensors")',
        ]
    return "\n".join([*lines, 'image = pipe("a dog running on the beach", num_inference_steps=25).images[0]'])


def model_card(folder: Path, info: Mapping[str, Any]) -> ModelCard:
    """The card of an exported `final_model/` folder from its export.json `info` (and eval.json if present)."""
    folder = folder.resolve()
    run, base = info.get("run") or {}, str(info["base"])
    files = {p.name for p in folder.iterdir()}
    adapter = info.get("adapter")
    trainable = ", ".join(info["trainable"]) + (
        f" (LoRA r={adapter['rank']}, alpha={adapter['alpha']})" if adapter else ""
    )
    losses = ", ".join(f"{k} {v:.4f}" for k, v in (run.get("final_losses") or {}).items()) or "not recorded"
    facts = [
        ("base", f"`{base}`"),
        ("data", run.get("data", "not recorded")),
        ("trainable", trainable),
        ("objective", run.get("objective", "not recorded")),
        ("steps", f"{run.get('steps', '?')} ({run.get('epochs', '?')} epochs)"),
        ("learning rate", run.get("learning_rate", "not recorded")),
        ("final losses", losses),
    ]
    tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "text-encoder"] + (
        ["lora"] if adapter else []
    )
    data = ModelCardData(
        base_model=base if _looks_like_hub_id(base) else None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=tags,
    )
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=f"Fine-tuned text encoder: {folder.parent.name}/{folder.name}",
        base=base,
        facts=facts,
        evaluation=_evaluation(folder),
        files=[(name, FILE_NOTES[name]) for name in sorted(files) if name in FILE_NOTES],
        sample_line=f'python sample.py checkpoint="{folder}" prompt="a dog running on the beach"',
        diffusers_lines=_diffusers_lines(folder, base, files),
    )


def write_model_card(folder: Path, info: Mapping[str, Any]) -> Path:
    """Write (or refresh) `folder/README.md`."""
    path = folder / CARD_FILE
    model_card(folder, info).save(path)
    return path


def refresh_model_card(folder: Path) -> Path | None:
    """Rewrite the card of an exported `final_model/` (after evaluate.py wrote eval.json); None: no such folder."""
    info_path = folder / "export.json"
    if not info_path.is_file():
        return None
    return write_model_card(folder, json.loads(info_path.read_text()))
