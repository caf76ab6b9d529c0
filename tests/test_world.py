"""The offline shapes world: generator, vocabularies, the judge's check, the three stages (a few steps each),
the cached re-run, the stage-2 diffusers folder and report.json. The numbers of a full run live in the README.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPTokenizer

from benchmarks.shapes_words import words_table
from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.data.datamodule import Flickr8kDataModule
from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from ldm.training.run import build_module
from ldm.world.adherence import SamplingPlan, accuracy_by_value, eval_prompts, render, score
from ldm.world.export import JudgeNotGoodEnough, load_judge
from ldm.world.generator import VOCABULARY_ROOTS, write_world
from ldm.world.judge import jitter_colours
from ldm.world.pipeline import PIPELINE_PARTS, start_new_words_from_mean
from ldm.world.report import format_table
from ldm.world.scenes import all_combinations
from ldm.world.stages import run_all
from ldm.world.vocab import ATTRIBUTES, BASE, NEW, VALUES, VOCABULARIES, caption_token_ids, parse_caption
from tests.conftest import CONF_DIR, compose_config, torch_threads

CONF_DATA = Path(CONF_DIR) / "data"
WORLD = dict(num_images=40, image_size=32, seed=0, radius=0.17, jitter=0.03, val_images=4, test_images=8)
# every stage at toy size: a 48-image world, 2-3 optimizer steps, 4 prompts per vocabulary
SMALL = [
    "data.generate.num_images=48",
    "data.world.val_images=8",
    "data.world.test_images=8",
    "data.batch_size=8",
    "++trainer.max_steps=3",
    "++trainer.val_check_interval=3",
    "++trainer.check_val_every_n_epoch=null",
    "++trainer.enable_progress_bar=false",
]
STAGE_SMALL = {
    "shapes_judge": ["callbacks.export.min_accuracy=0.0"],  # 3 steps can't make a judge; the check still runs
    "shapes": [
        "callbacks.adherence.prompts_per_vocabulary=4",
        "callbacks.adherence.batch_size=2",
        "callbacks.adherence.steps=2",
        "callbacks.adherence.grid_prompts=2",
        "+callbacks.adherence.other_judges.again=${paths.shapes_dir}/judge",  # a second judge: here the same one
    ],
}


@pytest.fixture(scope="session")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", layout="original", mix_new_captions=3, **WORLD)
    b = write_world(tmp_path / "b", layout="original", mix_new_captions=3, **WORLD)
    files = _files(a)
    assert files == _files(b)
    assert sum(name.endswith(".jpg") for name in files) == WORLD["num_images"]
    c = write_world(tmp_path / "c", layout="original", mix_new_captions=3, **{**WORLD, "seed": 1})
    assert _files(c) != files


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_captions_parse_in_both_flickr8k_layouts(tmp_path: Path, tokenizer, layout: str) -> None:
    """Each vocabulary folder loads through the Flickr8k DataModule unchanged; every caption parses back
    to the same attributes in the expected vocabulary (mix: 3 new, then 2 base)."""
    root = write_world(tmp_path / "world", layout=layout, mix_new_captions=3, **WORLD)
    labels = {}
    for vocabulary in VOCABULARY_ROOTS:
        small = {"root": str(root / vocabulary), "resolution": 32, "batch_size": 4, "num_workers": 0, "max_length": 16}
        dm = instantiate(OmegaConf.merge(OmegaConf.load(CONF_DATA / "flickr8k.yaml"), small), tokenizer=tokenizer)
        assert isinstance(dm, Flickr8kDataModule)
        dm.setup()
        assert sum(len(s) for s in dm.splits.values()) == WORLD["num_images"]
        for split in dm.splits.values():
            for i in range(len(split)):
                name, captions = split.source.name(i), split.source.captions(i)
                parsed = [parse_caption(c) for c in captions]
                assert all(p is not None for p in parsed), captions
                expected = {"base": ["base"] * 5, "new": ["new"] * 5, "mix": ["new"] * 3 + ["base"] * 2}[vocabulary]
                assert [p[0] for p in parsed] == expected
                assert all(p[1] == parsed[0][1] for p in parsed)
                assert labels.setdefault(name, parsed[0][1]) == parsed[0][1]  # same scene in every folder
        batch = next(iter(dm.train_dataloader()))
        assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["input_ids"].shape == (4, 16)
    if layout == "original":  # the test split is balanced: it cycles through all combinations
        test_names = (root / "base" / "Flickr_8k.testImages.txt").read_text().split()
        assert [labels[n] for n in test_names] == all_combinations()[: WORLD["test_images"]]


def test_each_image_gets_five_distinct_sentences_from_the_template_pool(tmp_path: Path) -> None:
    root = write_world(tmp_path / "world", layout="original", mix_new_captions=3, **WORLD)
    lines = (root / "base" / "Flickr8k.token.txt").read_text().splitlines()
    by_image: dict[str, list[str]] = {}
    for line in lines:
        key, caption = line.split("\t")
        by_image.setdefault(key.split("#")[0], []).append(caption)
    assert all(len(set(caps)) == 5 for caps in by_image.values())
    skeletons = {c.split(" ")[1] for caps in by_image.values() for c in caps}  # 2nd word tells templates apart
    assert len(skeletons) > 5  # more sentence forms than one image's five
    assert len(BASE.templates) >= 10 and len(NEW.templates) >= 10


def test_judge_colour_jitter_keeps_the_pixel_range_and_is_off_at_zero() -> None:
    torch.manual_seed(0)
    pixels = torch.rand(8, 3, 32, 32) * 2 - 1
    assert torch.equal(jitter_colours(pixels, 0.0), pixels)
    jittered = jitter_colours(pixels, 0.2)
    assert jittered.shape == pixels.shape and jittered.min() >= -1 and jittered.max() <= 1
    assert not torch.allclose(jittered, pixels)


def test_new_words_are_clip_ids_the_base_captions_never_use(tokenizer) -> None:
    base_ids = {
        i
        for attrs in all_combinations()
        for template in (*BASE.templates, *BASE.held_out)
        for i in tokenizer(BASE.caption(attrs, template)).input_ids
    }
    for attr in ATTRIBUTES:
        for value, phrase in NEW.words[attr].items():
            ids = tokenizer(phrase, add_special_tokens=False).input_ids
            new_ids = [i for i in ids if i not in base_ids]
            assert new_ids, f"{attr}={value}: {phrase!r} has no token the base captions lack"
    for vocab in VOCABULARIES.values():
        for attrs in all_combinations()[::7]:
            for template in (*vocab.templates, *vocab.held_out):
                caption = vocab.caption(attrs, template)
                assert parse_caption(caption) == (vocab.name, attrs)
                assert len(tokenizer(caption).input_ids) <= 16  # data.max_length of conf/data/shapes.yaml


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    """All stages at toy size through the cached runner, then once more (which must skip stages 1-2)."""
    cache, runs = tmp_path_factory.mktemp("shapes-cache"), tmp_path_factory.mktemp("shapes-runs")
    overrides = [f"paths.cache_dir={cache}", f"paths.runs_dir={runs}", *SMALL]
    experiments = ["shapes_vae", "shapes_judge", "shapes_base", "shapes"]
    with torch_threads(1), initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        first = run_all(experiments, runs / "first", overrides, STAGE_SMALL)
        second = run_all(experiments, runs / "second", overrides, STAGE_SMALL)
    return cache / "shapes", runs, [first, second]


def test_stages_run_then_skip_when_cached(stages) -> None:
    shapes, _, (first, second) = stages
    assert [r.skipped for r in first] == [False] * 4
    assert [r.skipped for r in second] == [True, True, True, False]  # the mission always runs
    for stage in ("vae", "judge", "base"):
        assert json.loads((shapes / stage / "stage.json").read_text())["fingerprint"]


def test_stage2_export_is_a_full_diffusers_folder(stages, tmp_path: Path) -> None:
    shapes, _, _ = stages
    base = shapes / "base"
    assert all((base / part).exists() for part in PIPELINE_PARTS)
    pipe = StableDiffusionPipeline.from_pretrained(base)
    assert pipe.scheduler.config.clip_sample is False
    assert pipe.tokenizer.model_max_length == 16
    with torch_threads(1):
        image = pipe("a red circle on the left", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    cfg = compose_config(
        "train", ["experiment=shapes", f"paths.output_dir={tmp_path}", f"paths.cache_dir={shapes.parent}"]
    )
    module = build_module(cfg)  # model.pretrained=<stage-2 folder>: the SD1.5 loading path
    assert module.trainable_names == ["text_encoder"]
    assert torch.equal(module.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_judge_check_refuses_a_weak_classifier(stages, tmp_path: Path) -> None:
    shapes, runs, _ = stages
    overrides = [f"paths.cache_dir={shapes.parent}", f"paths.runs_dir={runs}", *SMALL]
    with (
        pytest.raises(JudgeNotGoodEnough, match="below 95%"),  # 3 steps: far from a judge
        torch_threads(1),
        initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"),
    ):
        run_all(["shapes_judge"], tmp_path, [*overrides, "callbacks.export.dirpath=" + str(tmp_path / "j")])
    assert not (tmp_path / "j").exists()
    accuracy = json.loads((shapes / "judge" / "accuracy.json").read_text())["accuracy"]
    assert set(accuracy) == {"renders", "reconstructions"} and set(accuracy["renders"]) == set(ATTRIBUTES)


def test_report_has_its_fields(stages) -> None:
    _, runs, _ = stages
    report = json.loads((runs / "second" / "report.json").read_text())
    assert set(report["adherence"]) == {"base_model", "after_stage3"}
    for stage in report["adherence"].values():
        assert set(stage) == {"base", "new"}
        for scores in stage.values():
            assert set(scores) == {*ATTRIBUTES, "mean", "n", "ci95"} and scores["n"] == 4
            shares = {k: scores[k] for k in (*ATTRIBUTES, "mean")}
            assert all(v * 4 == round(v * 4) for k, v in shares.items() if k != "mean")  # shares of 4 images
            assert scores["mean"] == pytest.approx(sum(scores[a] for a in ATTRIBUTES) / 3)
            for key, value in shares.items():
                assert scores["ci95"][key] == pytest.approx(wilson_by_search(value, 4), abs=1e-4), key
    assert report["chance"] == pytest.approx({"shape": 1 / 4, "colour": 1 / 6, "position": 1 / 5})
    assert set(report["judge"]["accuracy"]) == {"renders", "reconstructions"}
    assert {"scheduler", "steps", "guidance_scale", "seed"} <= set(report["sampling"])
    assert report["sampling"]["steps"] == 2 and len(report["prompts"]["new"]) == 4
    assert set(report["checks"]) == {
        "base_model_on_base_prompts",
        "base_model_on_new_prompts_near_chance",
        "after_stage3_on_new_prompts",
        "base_prompts_drop",
    }
    before, after = report["adherence"]["base_model"], report["adherence"]["after_stage3"]
    checks = report["checks"]
    assert checks["after_stage3_on_new_prompts"]["value"] == after["new"]["mean"]
    assert checks["after_stage3_on_new_prompts"]["met"] == (after["new"]["mean"] >= 0.88)  # the point estimate
    assert checks["base_prompts_drop"]["value"] == pytest.approx(before["base"]["mean"] - after["base"]["mean"])
    for check in checks.values():
        low, high = check["ci95"]
        assert low <= check["value"] <= high
    assert "95% Wilson interval" in format_table(report)
    # every image is scored by each of other_judges too; the same judge again must give the same figures
    assert report["adherence_by_other_judge"]["again"] == report["adherence"]
    assert report["other_judges"]["again"]["accuracy"] == report["judge"]["accuracy"]
    assert "scored by again" in format_table(report, "again")
    assert (runs / "second" / "grid.png").is_file()
    assert (runs / "second" / "final_model" / "text_encoder").is_dir()


def wilson_by_search(share: float, n: int, z: float = 1.96) -> list[float]:
    """The Wilson interval by its definition: every p whose score test |share - p| <= z sd(p) accepts."""
    grid = np.linspace(0, 1, 200_001)
    accepted = grid[np.abs(share - grid) <= z * np.sqrt(grid * (1 - grid) / n)]
    return [float(accepted.min()), float(accepted.max())]


def test_report_numbers_are_the_judged_images_of_the_exported_model(stages) -> None:
    """Re-render the report's prompts with the exported model and its recorded seeds: the same scores."""
    shapes, runs, _ = stages
    report = json.loads((runs / "second" / "report.json").read_text())
    sampling = report["sampling"]
    judge, _ = load_judge(shapes / "judge")
    module = build_model(compose_config("sample", []).model, runs / "second" / "final_model")
    prepare_for_inference(module, torch.device("cpu"), "off")
    plan = SamplingPlan(
        sampling["steps"], sampling["guidance_scale"], sampling["scheduler"], sampling["seed"], 2,
        guidance_rescale=sampling["guidance_rescale"],
    )  # fmt: skip
    with torch_threads(1):
        for vocab in VOCABULARIES:
            prompts = eval_prompts(vocab, 4, sampling["templates"], sampling["seed"])
            assert [p.text for p in prompts] == report["prompts"][vocab]
            scores = score(judge, render(module, prompts, plan, desc=vocab), prompts)
            assert scores == {k: report["adherence"]["after_stage3"][vocab][k] for k in scores}, vocab


def test_adherence_gives_each_prompt_its_own_seed(cache_dir: Path) -> None:
    """One noise draw per prompt (issue 13, item 5): the same text twice in one batch gives two images."""
    prompts = eval_prompts("new", 120, "held_out", seed=5)
    assert [p.seed for p in prompts] == list(range(5, 125))
    module = build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"]).model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    twins = [prompts[0], replace(prompts[0], seed=prompts[1].seed)]
    first, second = render(module, twins, SamplingPlan(2, 3.0, "ddim", 5, batch_size=2), desc="twins")
    (alone,) = render(module, twins[1:], SamplingPlan(2, 3.0, "ddim", 5, batch_size=1), desc="alone")
    first, second, alone = (np.asarray(im, dtype=np.int16) for im in (first, second, alone))
    assert np.abs(first - second).mean() > 10  # two noise draws, not one
    assert np.abs(alone - second).max() <= 1  # its own seed, whatever its place in the batch (up to rounding)


def test_adherence_renders_with_the_plans_guidance_interval(cache_dir: Path) -> None:
    """benchmarks/adherence.py judges `guidance_interval` through the plan: the images are sample.py's for it."""
    prompts = eval_prompts("base", 2, "held_out", seed=3)
    module = build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"]).model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    plan = SamplingPlan(4, 3.0, "ddim", 3, batch_size=2)
    full, gi = (render(module, prompts, replace(plan, guidance_interval=i), "gi") for i in ((0.0, 1.0), (0.5, 1.0)))
    settings = SampleSettings(
        prompts=tuple(p.text for p in prompts), negative_prompt="", steps=4, guidance_scale=3.0, scheduler="ddim",
        seed=3, height=None, width=None, num_images=1, batch_size=2, guidance_interval=(0.5, 1.0),
    )  # fmt: skip
    direct = generate(module, settings, prompt_seeds=[p.seed for p in prompts])
    pixels = [[np.asarray(im, dtype=np.int16) for im in ims] for ims in (full, gi, direct)]
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(pixels[0], pixels[1], strict=True))  # the interval acts
    assert all(np.array_equal(a, b) for a, b in zip(pixels[1], pixels[2], strict=True))  # exactly sample.py's


def test_one_cache_named_two_ways_has_one_fingerprint(tmp_path: Path) -> None:
    """`.cache` and its absolute path (or a moved cache folder) are the same cache; a changed setting is not."""
    from ldm.world.stages import fingerprint

    def of(*overrides: str) -> str:
        return fingerprint(compose_config("train", ["experiment=shapes_base", *overrides]), [])

    relative = of("paths.cache_dir=.cache", "paths.output_dir=a")
    assert of(f"paths.cache_dir={Path('.cache').resolve()}", "paths.output_dir=b") == relative
    assert of(f"paths.cache_dir={tmp_path}", "paths.output_dir=a") == relative
    assert of("paths.cache_dir=.cache", "paths.output_dir=a", "trainer.max_steps=601") != relative


def test_accuracy_by_value_finds_the_one_word_a_mean_hides() -> None:
    """One position judged wrong every time, every other value right: its own row says 0% and what was seen,
    the others 100%, while the position mean would still read 80%."""
    prompts = eval_prompts("new", 120, "held_out", 0)
    wanted = {attr: torch.tensor([VALUES[attr].index(p.attributes[attr]) for p in prompts]) for attr in ATTRIBUTES}
    predicted = dict(wanted)
    left, centre = VALUES["position"].index("left"), VALUES["position"].index("center")
    predicted["position"] = torch.where(wanted["position"] == left, centre, wanted["position"])
    by_value = accuracy_by_value(predicted, prompts)
    assert by_value["position"]["left"]["accuracy"] == 0.0 and by_value["position"]["left"]["instead"] == {"center": 24}
    assert by_value["position"]["left"]["ci95"][1] < 0.2 and by_value["position"]["left"]["n"] == 24
    others = [cell for attr in ATTRIBUTES for value, cell in by_value[attr].items() if value != "left"]
    assert len(others) == 14 and all(cell["accuracy"] == 1.0 and cell["instead"] == {} for cell in others)
    table = words_table({"held_out": by_value, "train": by_value}, "new")
    assert "| position | left | toward the west | 0.0 [0, 14] | center 24 |" in table


def test_caption_token_ids_are_the_tokens_of_every_caption(tokenizer) -> None:
    for vocab in VOCABULARIES.values():
        ids = {
            i
            for attrs in all_combinations()
            for template in (*vocab.templates, *vocab.held_out)
            for i in tokenizer(vocab.caption(attrs, template), add_special_tokens=False).input_ids
        }
        assert caption_token_ids(vocab, tokenizer) == ids


def test_new_words_start_from_the_mean_of_the_base_words(tokenizer) -> None:
    """Only the rows that new captions alone use change: to the base rows' mean, apart by the small noise."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            vocab_size=tokenizer.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    exact, noisy = CLIPTextModel(config), CLIPTextModel(config)
    noisy.load_state_dict(exact.state_dict())
    before = exact.get_input_embeddings().weight.detach().clone()
    changed = start_new_words_from_mean(exact, tokenizer, noise=0.0)
    base_ids = sorted(caption_token_ids(BASE, tokenizer))
    assert set(changed) == caption_token_ids(NEW, tokenizer) - set(base_ids)
    words = {tokenizer.convert_ids_to_tokens(i) for i in changed}
    assert words >= {"east</w>", "west</w>", "crimson</w>", "toward</w>"}
    after = exact.get_input_embeddings().weight.detach()
    assert torch.equal(after[changed], before[base_ids].mean(dim=0).expand(len(changed), -1))
    untouched = torch.ones(len(after), dtype=torch.bool)
    untouched[changed] = False
    assert torch.equal(after[untouched], before[untouched])
    assert start_new_words_from_mean(noisy, tokenizer) == changed  # the default: 0.01 noise keeps the rows apart
    rows = noisy.get_input_embeddings().weight.detach()[changed]
    assert len({tuple(row.tolist()) for row in rows}) == len(changed) and (rows - after[changed]).abs().max() < 0.06


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.text_encoder=/some/stage3/text_encoder", "model.text_encoder='/some/stage3/text_encoder': expected"),
        ("model/adapter=shapes", "with a LoRA adapter: expected model.adapter=null"),
    ],
)
def test_new_words_from_mean_refuses_what_it_would_break(override: str, message: str, tmp_path: Path) -> None:
    from ldm.errors import ConfigError
    from ldm.world.pipeline import finetuner

    cfg = compose_config(
        "train", ["experiment=shapes", "model.new_words_from_mean=true", f"paths.cache_dir={tmp_path}", override]
    )
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    with pytest.raises(ConfigError, match=message):  # before anything is loaded: no stage 2 exists here
        finetuner(**kwargs)


def test_new_word_search_gives_each_word_the_row_with_the_lowest_loss(stages, tmp_path: Path) -> None:
    """Every new attribute word ends on the candidate row (its own or a base token's) whose loss is lowest."""
    from ldm.world.word_search import (
        caption_batches,
        loss_of_rows,
        new_word_token_ids,
        search_new_word_rows,
        training_samples,
    )

    shapes, _, _ = stages
    cfg = compose_config(
        "train", ["experiment=shapes", f"paths.output_dir={tmp_path}", f"paths.cache_dir={shapes.parent}", *SMALL]
    )
    module = build_module(cfg)
    tokenizer, table = module.tokenizer, module.text_encoder.get_input_embeddings().weight
    before = table.detach().clone()
    samples = training_samples(shapes / "world" / "mix", "auto", val_fraction=0.1, split_seed=0)
    with torch_threads(1):
        chosen = search_new_word_rows(module, samples, captions_per_word=4)
    word_ids = new_word_token_ids(tokenizer)
    assert {tokenizer.decode([i]) for i in word_ids} >= {"west", "east", "crimson", "toward"}
    assert set(chosen) == {tokenizer.decode([i]) for i in word_ids}  # the toy world's captions hold every word
    after = table.detach()
    others = torch.ones(len(after), dtype=torch.bool)
    others[word_ids] = False
    assert torch.equal(after[others], before[others])  # no other row moves
    assert any(source != "(its own row)" for source in chosen.values())
    # the last word searched, with every earlier choice in place: no candidate row beats the one it kept
    last = word_ids[-1]
    pixels, ids = caption_batches(module, samples, word_ids, captions_per_word=4, seed=0)[last]
    base_ids = sorted(caption_token_ids(BASE, tokenizer))
    with torch.no_grad(), torch_threads(1):
        score = loss_of_rows(module, pixels, ids, seed=0)
        kept, losses = float(score().mean()), []
        for row in [before[last].clone(), *(after[i].clone() for i in base_ids)]:
            table.data[last] = row
            losses.append(float(score().mean()))
    assert kept == pytest.approx(min(losses), abs=1e-7) and max(losses) > kept


def test_new_word_search_keeps_a_words_own_row_without_evidence(stages, tmp_path: Path, caplog) -> None:
    """min_evidence: a word takes its best row only if that row beats its own by a paired t of at least that;
    below it the own row stays, and with an infinite threshold no row moves at all."""
    import logging

    from ldm.world.word_search import search_new_word_rows, training_samples

    shapes, _, _ = stages
    cfg = compose_config(
        "train", ["experiment=shapes", f"paths.output_dir={tmp_path}", f"paths.cache_dir={shapes.parent}", *SMALL]
    )
    samples = training_samples(shapes / "world" / "mix", "auto", val_fraction=0.1, split_seed=0)

    def search(min_evidence: float) -> tuple[dict[str, str], list[tuple], bool]:
        module = build_module(cfg)
        table = module.text_encoder.get_input_embeddings().weight
        before = table.detach().clone()
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="ldm.world.word_search"), torch_threads(1):
            chosen = search_new_word_rows(module, samples, captions_per_word=4, min_evidence=min_evidence)
        decisions = [r.args for r in caplog.records if r.msg.startswith("new word %s: best")]
        return chosen, decisions, torch.equal(table.detach(), before)

    _, decisions, _ = search(0.0)
    evidence = sorted(t for *_, t, _ in decisions)
    threshold = evidence[len(evidence) // 2]  # the median t: some words above it, some below
    chosen, decisions, _ = search(threshold)
    assert len(decisions) == len(chosen)
    for word, best, _, _, t, kept in decisions:
        assert chosen[word] == kept == (best if t >= threshold else "(its own row)"), (word, best, t)
    assert {"(its own row)"} < set(chosen.values())  # both: some words copied a row, some kept their own
    chosen, _, unmoved = search(float("inf"))
    assert unmoved and set(chosen.values()) == {"(its own row)"}


def test_improvement_is_the_paired_t_of_the_loss_falling() -> None:
    from ldm.world.word_search import improvement

    before = torch.tensor([1.0, 2.0, 3.0, 4.0])
    after = before - torch.tensor([0.1, 0.2, 0.1, 0.2])  # falls by 0.15 on average, spread 0.0577 / sqrt(4)
    assert improvement(before, after) == pytest.approx(0.15 / (0.057735 / 2), rel=1e-4)
    assert improvement(after, before) == pytest.approx(-improvement(before, after))
    assert improvement(before, before - 0.5) == float("inf")  # the same fall on every caption
    assert improvement(before, before) == 0.0


@pytest.mark.parametrize(
    ("hparams", "adapter", "message"),
    [
        ({"text_encoder": "/runs/stage3/final_model"}, None, "model.text_encoder='/runs/stage3/final_model': expected"),
        ({"text_encoder": None}, {"rank": 4}, "with a LoRA adapter: expected model.adapter=null"),
    ],
)
def test_new_word_search_refuses_rows_that_were_trained_or_are_not_its_own(hparams, adapter, message) -> None:
    from types import SimpleNamespace

    from ldm.errors import ConfigError
    from ldm.world.word_search import NewWordSearch

    search = NewWordSearch(root="/nowhere", layout="auto", val_fraction=0.1, split_seed=0)
    with pytest.raises(ConfigError, match=message):
        search.setup(SimpleNamespace(), SimpleNamespace(hparams=hparams, adapter=adapter), "fit")
    with pytest.raises(ConfigError, match=r"min_evidence=-1\.0: expected a number >= 0"):
        NewWordSearch(root="/nowhere", layout="auto", val_fraction=0.1, split_seed=0, min_evidence=-1.0)


def test_new_word_search_leaves_a_resumed_run_as_trained() -> None:
    from types import SimpleNamespace

    from ldm.world.word_search import NewWordSearch

    search = NewWordSearch(root="/nowhere", layout="auto", val_fraction=0.1, split_seed=0)
    search.on_train_start(SimpleNamespace(ckpt_path="last.ckpt"), SimpleNamespace())  # a search would fail here
    assert search.chosen == {}
    from ldm.errors import ConfigError

    with pytest.raises(ConfigError, match="'/nowhere', which does not exist"):
        search.on_train_start(SimpleNamespace(ckpt_path=None), SimpleNamespace())
