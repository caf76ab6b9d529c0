"""Evaluation of a fine-tuned text encoder against the base model's own: `python evaluate.py checkpoint=PATH`.

held_out.py (prompts and real images of a test split), backbones.py (CLIP models for the metrics),
metrics.py (CLIP score, Fréchet distances, embedding drift), adherence.py (the shapes world's judge),
report.py (eval.json, table, grid), run.py (`evaluate(cfg)`, what the entry point calls).
"""
