"""The headline claim, as a test: fine-tuning the text encoder alone lifts adherence on new words from chance.

A reduced shapes world (16 px renders, 1,200 images, a few hundred steps a stage) runs all four stages
through the same runner as `make demo`: a VAE, a base model on base words, a judge, then the mission, in
which only the text encoder trains on captions that mix the new words in. The adherence report judges the
base model and the result on the same 120 held-out prompts with one seed each. If the text encoder stopped
learning (a detached conditioning, a frozen encoder, a wrong parameter list), new-word adherence would stay
at the base model's chance level and this test fails. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import initialize_config_dir

from ldm.world.adherence import chance_levels
from ldm.world.stages import run_all
from tests.conftest import CONF_DIR, torch_threads

STAGES = ["shapes_vae", "shapes_base", "shapes_judge", "shapes"]
REDUCED_WORLD = [  # every stage
    "data.generate.image_size=16",  # 4x4x8 latents: a quarter of the demo's pixels
    "data.generate.num_images=960",
    "data.world.val_images=16",
    "++trainer.enable_progress_bar=false",
]
REDUCED_STAGES = {
    # 300 VAE steps, not 150: at 150, on a Zen 4 (AVX-512 kernels), the judge read colour at 48% on the VAE's
    # reconstructions, below the 50% it must reach (it passed on the AVX2 EPYC); the test stopped at the judge
    "shapes_vae": ["trainer.max_steps=300", "trainer.val_check_interval=300"],
    "shapes_base": ["trainer.max_steps=150", "trainer.val_check_interval=150", "optimizer.lr=2e-3"],
    # at 16 px the judge reads shape less well than at 32: its export check is lowered, not skipped
    "shapes_judge": ["trainer.max_steps=150", "trainer.val_check_interval=150", "callbacks.export.min_accuracy=0.5"],
    # without the new-word search: it copies known rows into the new words without a gradient, so with it a
    # detached conditioning would still gain; this test is about what the gradient teaches the text encoder
    "shapes": [
        "trainer.max_epochs=6",
        "callbacks.adherence.steps=10",
        "callbacks.adherence.grid_prompts=4",
        "callbacks.new_word_search=null",
    ],
}
# New-prompt mean adherence the mission must gain. Measured (2026-12-01, AMD EPYC with AVX2, 2 threads, 120 s):
# 18.3% [13, 26] -> 37.2% [29, 46], a gain of 18.9 points; with 300 VAE steps on a Zen 4 (2026-12-02, 142 s):
# 18.3% [12, 26] -> 38.1% [30, 47], 19.8 points. With the U-Net's conditioning detached from the
# text encoder the images, and so the score, stay exactly where they started (a gain of 0).
MIN_RISE = 0.10
# Two torch threads, also beside other `make test` workers (tests/conftest.py makes OpenMP's waiting threads
# sleep, not spin). Not one: the reduced world is measured at two, and at one thread its judge fell to 45%
# on colour in reconstructions, below the 50% it must reach.
THREADS = 2


@pytest.mark.slow
def test_text_encoder_fine_tuning_lifts_new_word_adherence_from_chance(tmp_path: Path) -> None:
    overrides = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}", *REDUCED_WORLD]
    with torch_threads(THREADS), initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        results = run_all(STAGES, tmp_path / "run", overrides, REDUCED_STAGES)
    assert [r.skipped for r in results] == [False] * 4
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["trainable"] == ["text_encoder"]  # only the text encoder learned
    before, after = report["adherence"]["base_model"]["new"], report["adherence"]["after_stage3"]["new"]
    chance = sum(chance_levels().values()) / len(chance_levels())
    assert abs(before["mean"] - chance) <= 0.12, f"base model on new words: {before['mean']:.1%}, chance {chance:.1%}"
    rise = after["mean"] - before["mean"]
    assert rise >= MIN_RISE, f"new-word adherence {before['mean']:.1%} -> {after['mean']:.1%}: gained {rise:.1%}"
    low, _ = after["ci95"]["mean"]
    assert low > before["ci95"]["mean"][1], "the rise is inside the noise of 120 prompts"
