"""evaluate.py on the tiny run: both variants side by side, every metric, the grid, the judge, errors.

Offline: the CLIP backbones are tiny random models written with save_pretrained (backbones=tiny), the
held-out set is the generated Flickr8k-layout set the tiny run trained on (its official test split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldm.errors import ConfigError
from ldm.evaluation import metrics
from ldm.evaluation.backbones import BackboneLoadError, check_backbone, register_resolvers
from ldm.evaluation.report import run_folder
from ldm.evaluation.run import base_model_config, evaluate, render, validate_eval_config
from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
register_resolvers()


def eval_config(cache_dir: Path, checkpoint: Path | str, out_dir: Path, *overrides: str):
    return compose_config(
        "evaluate",
        [
            f"checkpoint={checkpoint}",
            "backbones=tiny",
            f"paths.cache_dir={cache_dir}",
            f"data.root={cache_dir / 'data' / 'tiny-flickr8k'}",  # what tiny_run trained on
            "prompts.count=3",
            "steps=2",
            f"out_dir={out_dir}",
            *overrides,
        ],
    )


def write_random_judge(folder: Path) -> Path:
    """A random attribute classifier in the folder format of ldm.world's judge export."""
    from safetensors.torch import save_file

    from ldm.world.judge import AttributeCNN

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(AttributeCNN(4, 64).state_dict(), folder / "model.safetensors")
    report = {"accuracy": {"renders": {}}, "min_accuracy": 0.95, "width": 4, "image_size": 64}
    (folder / "accuracy.json").write_text(json.dumps(report))
    return folder


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    judge = write_random_judge(out / "judge")
    cfg = eval_config(cache_dir, tiny_run / "checkpoints" / "last.ckpt", out, f"judge={judge}")
    return evaluate(cfg), out


def test_eval_json_has_both_variants_for_every_metric(evaluated) -> None:
    report, out = evaluated
    saved = json.loads((out / "eval.json").read_text())
    assert saved["prompts"]["count"] == 3 and saved["prompts"]["source"].startswith("test split of ")
    assert saved["sampling"]["seeds"] == "prompt i uses seed + i, in both variants"
    m = saved["metrics"]
    assert set(m["clip_score"]) == set(m["fd_clip"]) == {"tiny_a", "tiny_b"}
    for row in (*m["clip_score"].values(), *m["fd_clip"].values()):
        assert {"base", "finetuned", "backbone"} <= set(row)
        assert all(isinstance(row[v], float) and row[v] == row[v] for v in ("base", "finetuned"))  # no NaN
    assert all(row["real_images"] == 3 for row in m["fd_clip"].values())
    drift = m["embedding_drift"]["mean_cosine_drift"]
    assert 0 < drift < 1  # the tiny run moved the text encoder, a little
    assert "FD on CLIP tiny_a features ↓" in report["table"] and "prompt embedding drift" in report["table"]


def test_fid_is_inception_fid_or_skipped_with_the_reason(evaluated) -> None:
    fid = evaluated[0]["metrics"]["fid_inception"]
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:  # this machine: torch-fidelity pulls in a torchvision that breaks torch
        assert "torch-fidelity is not installed" in fid["skipped"]
        assert "FID (Inception) ↓" in evaluated[0]["table"] and "skipped" in evaluated[0]["table"]
    else:  # installed: offline it may only lack the Inception weights, and must say so; else two numbers
        if "skipped" in fid:
            assert "fid.inception_weights=PATH" in fid["skipped"], fid
        else:
            assert all(isinstance(fid[v], float) and 0 <= fid[v] < float("inf") for v in ("base", "finetuned"))


def test_the_grid_shows_each_prompt_for_both_variants(evaluated) -> None:
    grid = Image.open(evaluated[1] / "eval_grid.png")
    # 240 px of text, then 2 columns of 64 px images shown at 128 px (+4 px gaps); a header and 3 rows
    assert grid.size == (240 + 2 * 132, 20 + 3 * 132)


def test_the_judge_scores_adherence_on_the_shapes_world(evaluated) -> None:
    adherence = evaluated[0]["metrics"].get("adherence")
    assert adherence is not None, "judge= was given but eval.json has no adherence"
    assert adherence["judged_prompts"] == 3 and adherence["unreadable_prompts"] == 0
    for variant in ("base", "finetuned"):
        assert set(adherence[variant]) == {"shape", "colour", "position", "mean"}
        assert all(0 <= v <= 1 for v in adherence[variant].values())
    assert "adherence position ↑" in evaluated[0]["table"]


def test_the_base_is_the_recorded_base_as_is_and_each_prompt_has_its_own_seed(tiny_run, cache_dir, tmp_path) -> None:
    cfg = eval_config(cache_dir, tiny_run / "final_model", tmp_path)
    tuned = build_model(cfg.model, cfg.checkpoint)
    base = build_model(base_model_config(cfg.model, tuned.hparams.pretrained, tuned.hparams.revision))
    plain = build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"]).model)
    key = "text_encoder.embeddings.token_embedding.weight"
    assert torch.equal(base.state_dict()[key], plain.state_dict()[key])
    assert not torch.equal(base.state_dict()[key], tuned.state_dict()[key])

    prepare_for_inference(base, torch.device("cpu"), "off")
    images = render(base, cfg, ["a red circle", "a blue square"], [5, 6], label="base model", checkpoint=None)
    settings = SampleSettings.from_config(cfg, ["a blue square"], seed=6, num_images=1, batch_size=1)
    assert images[1].tobytes() == generate(base, settings)[0].tobytes()


def test_default_backbones_are_sd15s_own_clip_and_a_different_one() -> None:
    cfg = compose_config("evaluate", ["checkpoint=x"])
    assert dict(cfg.backbones) == {
        "vit_l14": "openai/clip-vit-large-patch14",
        "laion_b32": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
    }
    assert cfg.prompts.split == "test" and cfg.data.root == "data/Flickr8k" and cfg.seed == 0


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        ("run/checkpoints/last.ckpt", "run"),
        ("run/final_model/final_weights.safetensors", "run"),
        ("run/final_model", "run"),
        ("elsewhere/model.ckpt", "elsewhere"),
    ],
)
def test_results_go_to_the_run_folder_of_each_checkpoint_form(tmp_path: Path, checkpoint: str, expected: str) -> None:
    (tmp_path / "run" / "final_model").mkdir(parents=True)
    assert run_folder(tmp_path / checkpoint) == tmp_path / expected


def test_embedding_drift_counts_only_each_prompts_own_tokens() -> None:
    base = torch.randn(2, 5, 8)
    tuned = base.clone()
    tuned[:, 3:] = torch.randn(2, 2, 8)  # only padding positions differ
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert metrics.embedding_drift(base, tuned, mask)["mean_cosine_drift"] == pytest.approx(0, abs=1e-6)
    assert metrics.embedding_drift(base, -base, mask)["mean_cosine_drift"] == pytest.approx(2)


def test_inception_fid_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics.inception_frechet("off", None) == (None, "fid.inception=off")

    import torchmetrics.image.fid as fid

    def no_weights(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(fid, "FrechetInceptionDistance", no_weights)
    metric, reason = metrics.inception_frechet("auto", None)
    assert metric is None and "fid.inception_weights=PATH" in reason and "name resolution" in reason
    with pytest.raises(metrics.MetricUnavailableError, match=r"fid\.inception=on but the Inception network"):
        metrics.inception_frechet("on", None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prompts.count=1", r"prompts.count=1: expected an integer ≥ 2"),
        ("seed=null", "seed=None: expected an integer ≥ 0 .fixed seeds"),
        ("prompts.split=holdout", "prompts.split='holdout': expected one of train, val, test"),
        ("fid.inception=maybe", "fid.inception='maybe': expected one of auto, on, off"),
        ("fid.real_images=1", "fid.real_images=1"),
        ("backbones.tiny_a=", r"backbones=\{'tiny_a': '', .*\}: expected a mapping name -> CLIP hub id"),
        ("checkpoint=/no/such.ckpt", "checkpoint='/no/such.ckpt': expected an existing"),
    ],
)
def test_bad_settings_stop_before_any_model_loads(tiny_run, cache_dir, tmp_path, override: str, message: str) -> None:
    cfg = eval_config(cache_dir, tiny_run / "final_model", tmp_path, override)
    with pytest.raises(ConfigError, match=message):
        validate_eval_config(cfg)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/clip", "backbones.b='/no/such/clip': folder not found"),
        ("nobody/no-such-clip", "not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
    ],
)
def test_a_backbone_that_cannot_load_stops_before_generating(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(BackboneLoadError, match=message):
        check_backbone("b", source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneLoadError, match=r"no config\.json there"):
        check_backbone("b", str(tmp_path / "empty"))


def test_evaluate_py_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "error: checkpoint=None: expected the checkpoint to evaluate" in result.stderr
    assert "Traceback" not in result.stderr


class ChannelMeans(torch.nn.Module):
    """uint8 (B, 3, H, W) -> (B, 3) channel means: a feature network whose features are known exactly."""

    num_features = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.double().mean(dim=(2, 3))


def flat_images(colours: list[tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, -1, 8, 8).contiguous()


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    """FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2): a shift by d gives |d|^2; spreading every feature
    twice as wide about the same mean (S2 = 4 S1) gives Tr(S1). Real statistics are kept across fake sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = [(100 + 10 * i, 60 + 5 * i, 200 - 20 * i) for i in range(5)]  # means (120, 70, 160)
    variances = torch.tensor(real, dtype=torch.float64).var(dim=0)  # unbiased, as FID's covariance
    shifted = [(r + 10, g - 20, b + 5) for r, g, b in real]
    spread = [(2 * r - 120, 2 * g - 70, 2 * b - 160) for r, g, b in real]
    metric = FrechetInceptionDistance(feature=ChannelMeans(), reset_real_features=False)
    distances = metrics.frechet_distances(
        metric,
        [flat_images(real)],
        {"shifted": flat_images(shifted), "spread": flat_images(spread), "same": flat_images(real)},
        torch.device("cpu"),
    )
    assert distances["shifted"] == pytest.approx(10**2 + 20**2 + 5**2, rel=1e-4)
    assert distances["spread"] == pytest.approx(float(variances.sum()), rel=1e-4)
    assert distances["same"] == pytest.approx(0, abs=1e-3)


def test_clip_score_matches_cosine_similarity_computed_by_hand(cache_dir: Path, tmp_path: Path) -> None:
    """torchmetrics' CLIPScore: 100 x cos(image, text) of the backbone's projected features, averaged over the
    pairs, then floored at 0 (the floor applies to the average)."""
    from ldm.evaluation.backbones import load_backbone

    cfg = eval_config(cache_dir, "x", tmp_path)
    adapter, processor = load_backbone(cfg.backbones.tiny_b)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
    prompts = ["a red circle", "a blue square on the left", "two dogs", "a green triangle", "a cat", "sunset"]
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        image_features = adapter.model.get_image_features(pixel_values=pixels)
        text_features = adapter.model.get_text_features(**tokens)
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)  # (6,)
    for chosen in ([0, 1, 2, 4], list(range(6))):
        expected = max(float(100 * cosine[chosen].mean()), 0.0)
        score = metrics.clip_score(
            adapter, processor, images[chosen], [prompts[i] for i in chosen], torch.device("cpu")
        )
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-4), chosen
    assert 100 * cosine[[0, 1, 2, 4]].mean() > 1 and 100 * cosine.mean() < 0  # a value, and the floor


def test_the_backbone_training_optimised_is_flagged_and_comes_last(cache_dir: Path, tmp_path: Path) -> None:
    """objective=reward reward=clip with backbones=tiny's tiny_a as the reward model: tiny_a's scores grade the
    run's own homework, so eval.json and the table mark them and lead with tiny_b."""
    from ldm.evaluation.backbones import ensure_tiny_clip
    from ldm.training.run import train
    from tests.conftest import tiny_overrides

    reward_model = ensure_tiny_clip(cache_dir / "tiny-clip-a", 0)  # what backbones=tiny calls tiny_a
    run = tmp_path / "run"
    train(
        compose_config(
            "train",
            tiny_overrides(
                run, cache_dir, "objective=reward", f"reward.pretrained={reward_model}", "objective.steps=2",
                "objective.grad_steps=1", "trainer.max_steps=2", "callbacks.learning_check.check_after_steps=1",
            ),
        )
    )  # fmt: skip
    report = evaluate(eval_config(cache_dir, run / "final_model", tmp_path / "eval", "fid.clip=false"))
    assert report["objective"] == {"name": "reward", "reward": "ClipReward", "reward_model": reward_model}
    scores = report["metrics"]["clip_score"]
    assert list(scores) == ["tiny_b", "tiny_a"]
    assert (
        "not independent" in scores["tiny_a"]["optimised_by_training"]
        and "optimised_by_training" not in scores["tiny_b"]
    )
    rows = [line for line in report["table"].splitlines() if line.startswith("CLIP score")]
    assert rows[0].startswith("CLIP score tiny_b ↑") and rows[1].startswith("CLIP score tiny_a * ↑")
    assert "* tiny_a: optimised by training, not independent" in report["table"]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (
        saved["metrics"]["clip_score"]["tiny_a"]["optimised_by_training"] == scores["tiny_a"]["optimised_by_training"]
    )


def test_a_diffusion_run_has_no_flagged_backbone(evaluated) -> None:
    report, _ = evaluated
    assert report["objective"] == {"name": "diffusion"}
    assert not any("optimised_by_training" in row for row in report["metrics"]["clip_score"].values())
    assert "not independent" not in report["table"]
