"""The reward objective (TextCraftor-style): sample with the frozen U-Net, decode, maximise a reward.

Why only the last steps carry gradients: backpropagating through a whole sampling chain costs memory in
proportion to its length; the last `grad_steps` of a short DDIM schedule decide most of what the decoded
image shows (TextCraftor: the last 5 of 25) and are enough to move the text encoder. The earlier steps run
under no_grad with the same conditioning. Optional checkpointing of the U-Net calls trades compute for
memory; it uses `use_reentrant=False`, which (unlike the reentrant variant, diffusers #5016) passes
gradients into the text encoder even though the latents entering the call need none.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.errors import expect, is_int
from ldm.evaluation.backbones import load_backbone
from ldm.generation.schedulers import SCHEDULERS, make_scheduler
from ldm.world.export import load_judge
from ldm.world.judge import caption_labels
from ldm.world.vocab import ATTRIBUTES


def diffusion_objective() -> None:
    """`objective=diffusion`: None, so the module trains with its own noise-prediction loss."""
    return None


class RewardObjective(nn.Module):
    """`objective=reward`: loss = -mean reward of decoded samples + `diffusion_weight` x noise-prediction loss.

    Called by `TextEncoderFineTuner.training_step` as `objective(module, batch)`; it holds the reward model
    (frozen, always in eval) so Lightning moves it with the module.
    """

    def __init__(
        self,
        *,
        reward: nn.Module,
        scheduler: str,
        steps: int,
        grad_steps: int,
        guidance_scale: float,
        diffusion_weight: float,
        checkpointing: bool,
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        expect(scheduler in SCHEDULERS, "objective.scheduler", scheduler, f"one of {list(SCHEDULERS)}")
        expect(is_int(steps) and steps >= 1, "objective.steps", steps, "an integer ≥ 1")
        expect(is_int(grad_steps) and 1 <= grad_steps <= steps, "objective.grad_steps", grad_steps, f"1..{steps}")
        expect(guidance_scale >= 1, "objective.guidance_scale", guidance_scale, "a number ≥ 1 (1: no guidance)")
        expect(diffusion_weight >= 0, "objective.diffusion_weight", diffusion_weight, "a number ≥ 0")
        expect(resolution is None or resolution % 8 == 0, "objective.resolution", resolution, "null or a multiple of 8")
        self.reward = reward.requires_grad_(False).eval()
        self.scheduler_name, self.steps, self.grad_steps = scheduler, steps, grad_steps
        self.guidance_scale, self.diffusion_weight = float(guidance_scale), float(diffusion_weight)
        self.checkpointing, self.resolution = checkpointing, resolution

    def train(self, mode: bool = True) -> RewardObjective:
        """The reward model is a fixed measure: keep it in eval whatever Lightning asks."""
        super().train(mode)
        self.reward.eval()
        return self

    def _unet(self, module: Any, latents: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Noise prediction, classifier-free guided when guidance_scale > 1 (hidden then holds uncond + cond)."""
        guided = self.guidance_scale > 1
        x = torch.cat([latents, latents]) if guided else latents

        def call(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            return module.unet(x.to(module.unet.dtype), t, hidden.to(module.unet.dtype)).sample.float()

        use_ckpt = self.checkpointing and torch.is_grad_enabled()
        eps = checkpoint(call, x, hidden, use_reentrant=False) if use_ckpt else call(x, hidden)
        if guided:
            uncond, cond = eps.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        return eps

    def sample(self, module: Any, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77) ids -> (B, 3, H, W) decoded images in about [-1, 1]; differentiable through the last steps."""
        hidden = module.encode_text(input_ids)  # (B, 77, D), with gradients into the trainable parts
        if self.guidance_scale > 1:
            empty = module.tokenizer([""], padding="max_length", max_length=input_ids.shape[1], return_tensors="pt")
            uncond = module.encode_text(empty.input_ids.to(input_ids.device)).expand_as(hidden)
            hidden = torch.cat([uncond, hidden])
        scheduler = make_scheduler(self.scheduler_name, module.noise_scheduler.config)
        scheduler.set_timesteps(self.steps, device=input_ids.device)
        factor = 2 ** (len(module.vae.config.block_out_channels) - 1)
        size = module.unet.config.sample_size if self.resolution is None else self.resolution // factor
        shape = (len(input_ids), module.unet.config.in_channels, size, size)
        latents = torch.randn(shape, device=input_ids.device) * scheduler.init_noise_sigma  # seeded per step
        # counted from the schedule's own length: PNDM's has one step more than `steps` (its PRK warm-up)
        first_with_grad = len(scheduler.timesteps) - self.grad_steps
        for i, t in enumerate(scheduler.timesteps):
            with torch.set_grad_enabled(i >= first_with_grad and torch.is_grad_enabled()):
                x = scheduler.scale_model_input(latents, t)
                latents = scheduler.step(self._unet(module, x, t, hidden), t, latents).prev_sample
        scaled = latents / module.vae.config.scaling_factor
        return module.vae.decode(scaled.to(module.vae.dtype)).sample.float()

    def describe(self) -> dict[str, Any]:
        """What was optimised, for export.json: evaluate.py flags a metric computed with the same model."""
        return {"name": "reward", "reward": type(self.reward).__name__, "reward_model": self.reward.source}

    def forward(self, module: Any, batch: dict[str, Any]) -> torch.Tensor:
        ids = batch["input_ids"]
        prompts = module.tokenizer.batch_decode(ids, skip_special_tokens=True)
        # clamped as any saved image is: pixels beyond the range no image can hold must not raise the reward
        rewards = self.reward(self.sample(module, ids).clamp(-1, 1), prompts)  # (B,)
        logged = {"train/reward": rewards.mean().detach()}
        loss = -rewards.mean()
        if self.diffusion_weight > 0:
            diffusion = module._common_step(batch)
            logged["train/diffusion_loss"] = diffusion.detach()
            loss = loss + self.diffusion_weight * diffusion
        if getattr(module, "_trainer", None) is not None:  # also called outside fit (tests, notebooks)
            module.log_dict(logged, on_step=True, on_epoch=True, batch_size=len(ids))
        return loss


class ClipReward(nn.Module):
    """`reward=clip`: cosine similarity of CLIP image and text embeddings (ViT-L/14 by default).

    The image is resized and normalised with differentiable ops (CLIP's processor works on PIL images).
    """

    def __init__(self, pretrained: str) -> None:
        super().__init__()
        adapter, processor = load_backbone(pretrained)
        self.source = pretrained
        self.clip, self.tokenizer = adapter, processor.tokenizer
        image = processor.image_processor
        self.size = int(adapter.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(image.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] and B prompts -> (B,) cosine similarities."""
        pixels = F.interpolate((images + 1) / 2, size=(self.size, self.size), mode="bicubic", align_corners=False)
        pixels = (pixels - self.mean) / self.std
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_emb = self.clip.get_image_features(pixels)
        text_emb = self.clip.get_text_features(
            tokens.input_ids.to(images.device), tokens.attention_mask.to(images.device)
        )
        return F.cosine_similarity(image_emb, text_emb, dim=-1)


class JudgeReward(nn.Module):
    """`reward=judge` (shapes world): log-probability of the prompt's shape, colour and position under a
    *reward* classifier, trained apart from the evaluation judge (`experiment=shapes_reward_judge`)."""

    def __init__(self, judge: str) -> None:
        super().__init__()
        self.classifier, self.report = load_judge(judge)
        self.source = judge
        self.size = int(self.report["image_size"])

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        labels = caption_labels(prompts).to(images.device)  # (B, 3); a prompt outside the world is an error
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = self.classifier(images)
        return sum(F.log_softmax(logits[a], -1).gather(1, labels[:, k : k + 1])[:, 0] for k, a in enumerate(ATTRIBUTES))
