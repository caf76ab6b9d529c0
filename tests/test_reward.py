"""The reward objective on the tiny model: where gradients go, the reward rising, exact checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ldm.errors import ConfigError
from ldm.evaluation.backbones import ensure_tiny_clip
from ldm.training.reward import JudgeReward
from ldm.training.run import build_module, train
from ldm.world.judge import AttributeCNN
from ldm.world.vocab import ATTRIBUTES, VALUES
from tests.conftest import compose_config, tiny_overrides

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random attribute classifier saved as the shapes world saves its judges (64 px, the tiny model's size)."""
    path = tmp_path_factory.mktemp("reward-judge")
    torch.manual_seed(3)
    judge = AttributeCNN(8, 64)
    with torch.no_grad():  # sharper heads: a random judge near uniform barely tells images apart
        for head in judge.heads.values():
            head.weight.mul_(30)
    save_file(judge.state_dict(), path / "model.safetensors")
    (path / "accuracy.json").write_text(json.dumps({"width": 8, "image_size": 64}))
    return path


def reward_overrides(cache_dir: Path, judge: Path | None = None, *extra: str) -> list[str]:
    chosen = ["reward=judge", f"reward.judge={judge}"] if judge else [f"reward.pretrained={clip(cache_dir)}"]
    return ["objective=reward", *chosen, "objective.steps=4", "objective.grad_steps=2", *extra]


def clip(cache_dir: Path) -> str:
    return ensure_tiny_clip(cache_dir / "tiny-clip-a", 0)


def batch(module, prompts=(PROMPT, PROMPT)) -> dict[str, torch.Tensor]:
    ids = module.tokenizer(list(prompts), padding="max_length", max_length=77, return_tensors="pt").input_ids
    return {"input_ids": ids, "pixel_values": torch.zeros(len(prompts), 3, 64, 64)}


def grads(module, seed: int = 0) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    module.objective(module, batch(module)).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter", [False, True])
def test_gradients_reach_only_trainable_tensors(compose_train, cache_dir: Path, adapter: bool) -> None:
    extra = ["model/adapter=lora"] if adapter else []
    module = build_module(compose_train(*reward_overrides(cache_dir), *extra))
    got = grads(module)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(got) <= trainable
    assert not any(n.startswith(("unet.", "vae.", "objective.")) for n in trainable)
    reached = {n for n, g in got.items() if g.abs().sum() > 0}
    if adapter:  # LoRA's B starts at zero, so A gets no gradient on the first step: B must
        assert trainable == module.adapter_keys and all(n in reached for n in trainable if "lora_B" in n)
    else:
        assert len(reached) > 0.9 * len(trainable), sorted(trainable - reached)[:5]


def test_checkpointing_is_exact_and_passes_gradients_into_the_text_encoder(compose_train, cache_dir: Path) -> None:
    module = build_module(compose_train(*reward_overrides(cache_dir)))
    plain = grads(module)
    module.objective.checkpointing = True
    checkpointed = grads(module)
    assert plain.keys() == checkpointed.keys() and any(n.startswith("text_encoder.") for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("reward", ["clip", "judge"])
def test_the_reward_rises_on_a_fixed_prompt_and_frozen_weights_stay(
    compose_train, cache_dir: Path, tiny_judge: Path, reward: str
) -> None:
    judge = tiny_judge if reward == "judge" else None
    # guidance 7.5 amplifies what the text changes in the tiny random U-Net's output
    module = build_module(compose_train(*reward_overrides(cache_dir, judge, "objective.guidance_scale=7.5")))
    frozen = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(("unet.", "vae.", "objective."))}
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)

    def measure() -> float:  # the reward itself, measured apart from the loss
        torch.manual_seed(0)  # the same starting noise each time: only the text encoder changes
        with torch.no_grad():
            return float(
                module.objective.reward(
                    module.objective.sample(module, batch(module)["input_ids"]), [PROMPT] * 2
                ).mean()
            )

    rewards = [measure()]
    for _ in range(4):
        optimizer.zero_grad()
        torch.manual_seed(0)
        module.objective(module, batch(module)).backward()
        optimizer.step()
        rewards.append(measure())
    assert rewards[1] > rewards[0] and rewards[-1] - rewards[0] > 0.005, rewards
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not module.objective.reward.training  # the reward model stays in eval


def test_judge_reward_is_the_log_probability_of_the_prompts_attributes(tiny_judge: Path) -> None:
    reward = JudgeReward(str(tiny_judge))
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    got = reward(images, [PROMPT])
    logits = reward.classifier(images)
    expected = sum(
        logits[a].log_softmax(-1)[0, VALUES[a].index(v)]
        for a, v in zip(ATTRIBUTES, ("circle", "red", "left"), strict=True)
    )
    torch.testing.assert_close(got, expected.reshape(1))
    assert float(got) < 0


def test_a_reward_run_fits_and_its_checkpoint_holds_no_reward_model(cache_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        tiny_overrides(
            tmp_path, cache_dir, *reward_overrides(cache_dir, None, "objective.diffusion_weight=0.5"),
            "trainer.max_steps=3", "callbacks.learning_check.check_after_steps=2",
        ),
    )  # fmt: skip
    trainer, _ = train(cfg)
    assert trainer.global_step == 3 and "train/reward_step" in trainer.callback_metrics
    assert "train/diffusion_loss_step" in trainer.callback_metrics
    assert trainer.callback_metrics["train/preservation_loss_step"] > 0  # preservation runs beside the reward
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("text_encoder.") for k in ckpt["state_dict"])
    recorded = {"name": "reward", "reward": "ClipReward", "reward_model": clip(cache_dir)}
    assert ckpt["ldm"]["objective"] == recorded  # evaluate.py reads it to flag the backbone that was optimised
    assert json.loads((tmp_path / "final_model" / "export.json").read_text())["objective"] == recorded


def test_grad_steps_are_the_last_steps_of_the_schedule_pndm_included(compose_train, cache_dir: Path) -> None:
    """PNDM's schedule is one step longer than `steps`: still exactly `grad_steps` U-Net calls carry gradients."""
    module = build_module(compose_train(*reward_overrides(cache_dir), "objective.scheduler=pndm"))
    grad_enabled: list[bool] = []
    module.unet.register_forward_pre_hook(lambda unet, args: grad_enabled.append(torch.is_grad_enabled()))
    torch.manual_seed(0)
    module.objective.sample(module, batch(module)["input_ids"])
    assert len(grad_enabled) > 4  # the schedule is longer than objective.steps=4: the case this test is about
    assert grad_enabled == [False] * (len(grad_enabled) - 2) + [True, True]  # objective.grad_steps=2


def test_out_of_range_pixels_cannot_raise_the_reward(compose_train, cache_dir: Path, monkeypatch) -> None:
    module = build_module(compose_train(*reward_overrides(cache_dir)))
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64) * 3  # mostly beyond [-1, 1], where no saved image can be
    monkeypatch.setattr(module.objective, "sample", lambda module, ids: images)
    loss = module.objective(module, batch(module))
    reward = module.objective.reward
    clamped = reward(images.clamp(-1, 1), [PROMPT, PROMPT]).mean()
    torch.testing.assert_close(loss, -clamped)  # the loss sees only what an image can show
    assert not torch.allclose(reward(images, [PROMPT, PROMPT]).mean(), clamped)  # and the clamp matters here


@pytest.mark.parametrize(
    ("override", "message"),
    [("objective.grad_steps=5", "objective.grad_steps=5"), ("objective.scheduler=nope", "objective.scheduler")],
)
def test_bad_objective_settings_are_clear_errors(compose_train, cache_dir: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_module(compose_train(*reward_overrides(cache_dir), override))
