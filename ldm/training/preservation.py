"""Preservation: keep what the original text encoder meant while it learns new captions (`preservation.weight`).

Why: fine-tuning the text encoder on one set of captions moves the embeddings of every prompt, and the frozen
U-Net then draws other things for words it knew (on the shapes world base prompts lost colour while new words
were learned). The text-side analogue of DreamBooth's prior preservation and of learning without forgetting:
besides the training loss, the encoder's output for a set of preservation prompts is pulled towards what the
encoder the run started from gave for them. The teacher is that encoder's cached outputs, computed once when
fit starts (before a checkpoint is restored, so a resumed run keeps the same teacher): no frozen copy in
memory and no teacher forward per step. It applies to any objective and to LoRA (whose adapter starts at zero,
so the wrapped encoder is the original at that moment).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.data.preserve_prompts import load_preserve_prompts
from ldm.errors import expect, is_int


class EmbeddingPreservation:
    """Serves a TextEncoderFineTuner (its `text_encoder` and `tokenizer`), typed as nn.Module because
    ldm.training.module imports this file.

    loss = MSE(encoder(prompts), teacher(prompts)) on `batch_size` preservation prompts drawn per step.

    The outputs compared are the text encoder's last hidden states, all `max_length` positions (the U-Net
    attends to every position, padding included); with `model.projection` the projection is new, so the
    tower's output before it is what is kept. Prompts are drawn with torch's global generator, which
    `SeedEachStep` seeds per step, so a resumed run draws the same prompts.
    """

    def __init__(self, *, weight: float, prompts: str | list[str], batch_size: int) -> None:
        expect(isinstance(weight, int | float) and weight >= 0, "preservation.weight", weight, "a number ≥ 0 (0: off)")
        expect(is_int(batch_size) and batch_size >= 1, "preservation.batch_size", batch_size, "an integer ≥ 1")
        self.weight = float(weight)
        self.source = prompts
        self.batch_size = batch_size
        self.prompts: list[str] = []
        self.input_ids: torch.Tensor | None = None  # (N, L)
        self.teacher: torch.Tensor | None = None  # (N, L, width), fp32

    @property
    def active(self) -> bool:
        return self.weight > 0

    @torch.no_grad()
    def cache_teacher(self, module: nn.Module, chunk: int = 64) -> None:
        """Tokenize the prompts and store what the encoder gives for them now (the start of the run)."""
        if not self.active:
            return
        self.prompts = load_preserve_prompts(self.source)
        tokens = module.tokenizer(
            self.prompts, padding="max_length", truncation=True, max_length=module.tokenizer.model_max_length
        )
        self.input_ids = torch.tensor(tokens["input_ids"], dtype=torch.long)
        encoder = module.text_encoder
        was_training = encoder.training
        encoder.eval()  # the teacher is deterministic (no dropout), as the original encoder at inference
        outputs = [_encode(module, ids).float().cpu() for ids in self.input_ids.split(chunk)]
        encoder.train(was_training)
        self.teacher = torch.cat(outputs)

    def loss(self, module: nn.Module) -> torch.Tensor:
        """MSE between the live encoder's and the teacher's outputs on a random batch of preservation prompts."""
        if self.teacher is None or self.input_ids is None:
            raise RuntimeError("preservation: cache_teacher(module) must run before loss() (the module's setup does)")
        picks = torch.randint(0, len(self.teacher), (min(self.batch_size, len(self.teacher)),))
        student = _encode(module, self.input_ids[picks])  # (B, L, width)
        return F.mse_loss(student.float(), self.teacher[picks].to(student.device))

    @torch.no_grad()
    def drift(self, module: nn.Module, limit: int = 64) -> float:
        """Mean squared distance of the first `limit` preservation prompts from the teacher, relative to the
        teacher's mean square (0: unchanged; 1: as far as the embeddings are large). A fixed subset, so the
        logged curve compares across steps and costs one small forward."""
        if self.teacher is None or self.input_ids is None:
            return 0.0
        live = _encode(module, self.input_ids[:limit]).float().cpu()
        teacher = self.teacher[:limit]
        return float(((live - teacher) ** 2).mean() / (teacher**2).mean().clamp_min(1e-12))


def _encode(module: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden states (B, L, width) for token ids, on the encoder's device."""
    device = next(module.text_encoder.parameters()).device
    return module.text_encoder(input_ids.to(device))[0]


def gradient_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> float:
    """‖∂loss/∂θ‖ over `params`, the graph kept for the real backward. The learning check asks for the task
    loss's own: with preservation on, weight decay plus the pull back to the teacher make gradients even when
    the task loss reaches no weight."""
    if not loss.requires_grad:
        return 0.0
    grads = [g for g in torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True) if g is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
