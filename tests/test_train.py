"""The training path end to end on the tiny preset: what learns, what stays frozen, what gets written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import CLIPTextModel

from ldm.training.checkpoint_fit import CheckpointMismatchError, check_checkpoint_fits
from ldm.training.module import TextEncoderFineTuner
from ldm.training.run import build_module, train
from tests.conftest import compose_config, tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """One 2-epoch tiny run shared by the tests below (≈10 s)."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", tiny_overrides(out, cache_dir, "trainer.max_epochs=2"))
    trainer, module = train(cfg)
    return out, cfg, trainer, module


def test_only_trainable_weights_change(run) -> None:
    _, cfg, _, module = run
    base = cfg.model.pretrained
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    for fresh, trained in ((unet, module.unet), (vae, module.vae)):
        trained_sd = trained.state_dict()
        for name, tensor in fresh.state_dict().items():
            assert torch.equal(tensor, trained_sd[name]), name
    trained_text = module.text_encoder.state_dict()
    changed = [n for n, t in text.state_dict().items() if not torch.equal(t, trained_text[n])]
    assert len(changed) > 0.9 * len(trained_text)
    module.train()  # Lightning calls this every epoch: frozen parts must stay in eval
    assert not module.unet.training and not module.vae.training and module.text_encoder.training
    assert not any(p.requires_grad for p in [*module.unet.parameters(), *module.vae.parameters()])


def test_run_folder_has_light_checkpoints_events_and_export(run) -> None:
    out, _, _trainer, module = run
    ckpt_dir = out / "checkpoints"
    assert (ckpt_dir / "last.ckpt").is_file()
    assert len(list(ckpt_dir.glob("epoch*.ckpt"))) == 2  # top-k by val/loss
    ckpt = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("text_encoder.") for k in ckpt["state_dict"])
    assert ckpt["ldm"]["trainable"] == ["text_encoder"]
    text_bytes = sum(p.numel() * 4 for p in module.text_encoder.parameters())
    assert (ckpt_dir / "last.ckpt").stat().st_size < 3.5 * text_bytes  # weights + 2 Adam moments, no U-Net/VAE

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "lr-AdamW", "train/grad_norm"} <= tags
    assert len(events.Scalars("val/loss")) == 2

    final = out / "final_model"
    weights = load_file(final / "final_weights.safetensors")
    assert weights.keys() == module.trainable_state_dict().keys()
    exported = load_file(final / "text_encoder" / "model.safetensors")
    live = module.text_encoder.state_dict()
    assert all(torch.equal(t, live[k]) for k, t in exported.items())


def test_export_loads_into_stable_diffusion_pipeline(run) -> None:
    out, cfg, _, _ = run
    text_encoder = CLIPTextModel.from_pretrained(out / "final_model" / "text_encoder")
    pipe = StableDiffusionPipeline.from_pretrained(cfg.model.pretrained, text_encoder=text_encoder, safety_checker=None)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_resume_restores_step_optimizer_and_schedule(run, cache_dir: Path, tmp_path: Path) -> None:
    out, _, first, _ = run
    steps_per_epoch = first.global_step // 2
    cfg = compose_config(
        "train", tiny_overrides(tmp_path, cache_dir, "trainer.max_epochs=3", f"ckpt_path={out}/checkpoints/last.ckpt")
    )
    trainer, _ = train(cfg)
    assert trainer.current_epoch == 3
    assert trainer.global_step == first.global_step + steps_per_epoch
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == trainer.global_step
    state = trainer.optimizers[0].state_dict()["state"]
    assert int(next(iter(state.values()))["step"]) == trainer.global_step


def test_checkpoint_for_another_trainable_set_or_base_is_a_clear_error(run, cache_dir: Path, tmp_path) -> None:
    out, _cfg, _, module = run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    both = build_module(
        compose_config("train", tiny_overrides(tmp_path, cache_dir, "model.trainable=[unet,text_encoder]"))
    )
    with pytest.raises(CheckpointMismatchError, match=r"trains \['text_encoder'\] but this model trains"):
        both.on_load_checkpoint(ckpt)
    other_base = {**module.checkpoint_signature(), "base": str(tmp_path / "another-model")}
    with pytest.raises(CheckpointMismatchError, match="trained on base="):
        check_checkpoint_fits(ckpt, other_base, module.trainable_state_dict())
    with pytest.raises(CheckpointMismatchError, match="no 'ldm' metadata"):
        module.on_load_checkpoint({"state_dict": ckpt["state_dict"]})
    truncated = {**ckpt, "state_dict": dict(list(ckpt["state_dict"].items())[:-1])}
    with pytest.raises(CheckpointMismatchError, match="1 missing"):
        module.on_load_checkpoint(truncated)
    reloaded = TextEncoderFineTuner.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu")
    live = module.text_encoder.state_dict()
    assert all(torch.equal(t, live[k]) for k, t in reloaded.text_encoder.state_dict().items())


def test_a_run_moved_from_another_machine_resumes_onto_a_local_copy_of_its_base(
    run, cache_dir: Path, tmp_path: Path, caplog
) -> None:
    """Its recorded base folder is not here: a local folder chosen with model.pretrained= stands in (warned);
    the hub default is refused with the option to set, never used in its place."""
    out, _, first, module = run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["ldm"]["base"] = "/another/machine/tiny-sd15"
    torch.save(ckpt, tmp_path / "moved.ckpt")
    hub_default = {**module.checkpoint_signature(), "base": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
    with pytest.raises(CheckpointMismatchError, match=r"not on this machine .*pass model\.pretrained=PATH"):
        check_checkpoint_fits(ckpt, hub_default, module.trainable_state_dict())
    copy = shutil.copytree(cache_dir / "tiny-sd15", tmp_path / "copy-of-base")
    overrides = ["trainer.max_epochs=3", f"model.pretrained={copy}", f"ckpt_path={tmp_path / 'moved.ckpt'}"]
    with caplog.at_level("WARNING", logger="ldm.training.checkpoint_fit"):
        trainer, _ = train(compose_config("train", tiny_overrides(tmp_path / "resumed", cache_dir, *overrides)))
    assert trainer.global_step == first.global_step * 3 // 2
    assert "'/another/machine/tiny-sd15' recorded in the checkpoint is not on this machine" in caplog.text


def _fixed_batch(module: TextEncoderFineTuner) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = module.tokenizer(
        ["a red circle on the left", "a blue square on the right"],
        padding="max_length",
        max_length=77,
        return_tensors="pt",
    ).input_ids
    return {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1, "input_ids": ids}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="epsilon"),
        pytest.param(["model.prediction_type=v_prediction"], id="v_prediction"),
        pytest.param(["model.trainable=[unet,text_encoder]"], id="unet+text_encoder"),
        pytest.param(["model.trainable=[unet]"], id="unet-only"),
        pytest.param(["model.projection=true", "model.text_encoder=TOWER"], id="b32-style-projection"),
    ],
)
def test_loss_falls_on_a_fixed_batch(overrides: list[str], compose_train, cache_dir: Path) -> None:
    """30 AdamW steps on one batch with fixed noise and timesteps: the loss must fall."""
    from ldm.tiny import ensure_tiny_text_tower

    tower = ensure_tiny_text_tower(cache_dir / "tiny-text-tower-16")
    module = build_module(compose_train("optimizer.lr=1e-3", *[o.replace("TOWER", tower) for o in overrides]))
    optimizer = module.optimizer_factory(params=[p for p in module.parameters() if p.requires_grad])
    batch = _fixed_batch(module)
    losses = []
    for _ in range(30):
        loss = module._common_step(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.97 * losses[0], losses
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.text_encoder.parameters() if p.requires_grad
    )
    if "model.trainable=[unet]" in overrides:
        assert not any(p.requires_grad for p in module.text_encoder.parameters())


def test_grads_reach_every_text_encoder_tensor_and_no_unet_tensor(compose_train) -> None:
    module = build_module(compose_train())
    module._common_step(_fixed_batch(module), torch.Generator().manual_seed(0)).backward()
    params = dict(module.text_encoder.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert all(p.grad is None for p in [*module.unet.parameters(), *module.vae.parameters()])


def test_width_mismatch_without_projection_fails_at_start_up(compose_train, cache_dir: Path) -> None:
    from ldm.tiny import ensure_tiny_text_tower

    tower = ensure_tiny_text_tower(cache_dir / "tiny-text-tower-16")
    with pytest.raises(ValueError, match=r"16-d embeddings but the U-Net's cross_attention_dim is 32.*projection=true"):
        build_module(compose_train(f"model.text_encoder={tower}"))


def test_projection_path_trains_through_fit(compose_train, cache_dir: Path, tmp_path: Path) -> None:
    from ldm.tiny import ensure_tiny_text_tower

    tower = ensure_tiny_text_tower(cache_dir / "tiny-text-tower-16")
    trainer, _module = train(
        compose_train(f"model.text_encoder={tower}", "model.projection=true", "trainer.max_epochs=1")
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"text_encoder", "text_projection"}
    assert trainer.global_step > 0


def test_learning_check_stops_a_run_whose_weights_do_not_move(compose_train) -> None:
    """An lr so small that fp32 weights can't change: the run must stop and say so."""
    with pytest.raises(RuntimeError, match=r"learning check failed.*have not moved"):
        train(compose_train("optimizer.lr=1e-30", "optimizer.weight_decay=0"))


def test_16_mixed_on_cpu_is_resolved_with_one_warning(compose_train) -> None:
    from ldm.hardware import cpu_has_native_bf16
    from ldm.training.run import build_trainer

    cfg = compose_train()
    assert cfg.trainer.precision == "16-mixed"
    with pytest.warns(UserWarning, match="is the GPU default"):
        trainer = build_trainer(cfg)
    assert trainer.precision == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
