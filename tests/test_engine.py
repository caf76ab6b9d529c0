"""The OpenVINO engine (ldm/generation/engine.py, ldm/generation/openvino/) and the guidance interval (tiny model).

One real export per module (the tiny U-Net and VAE through `ov.convert_model`), then cache hits; the
corrupt-entry case rebuilds for real. Images are compared with the torch fp32 path at the same seed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.errors import ConfigError, SamplingError
from ldm.generation import engine as engine_module
from ldm.generation.engine import EngineError
from ldm.generation.fast import FastSamplingError
from ldm.generation.loading import load_for_inference
from ldm.generation.openvino import build, cache, choice, export
from ldm.generation.openvino.calibration import calibration_fields, calibration_tag, spread
from ldm.generation.openvino.runtime import OpenVINOUNet
from ldm.generation.output import png_bytes
from ldm.generation.pipeline import generate
from ldm.generation.progress import step_callback
from ldm.generation.settings import SampleSettings
from ldm.hardware import cpu_name
from ldm.training.module import TextEncoderFineTuner
from tests.conftest import compose_config

pytest.importorskip("openvino")
PROMPT = "a red circle on the left"
# OpenVINO f32 vs torch fp32, 8-bit pixels after 4 DPM++ steps and the VAE: different kernels, same maths
MAX_PIXEL_DIFF = 2
FULL = (0.0, 1.0)  # every step guided (the default guides 0.2 <= i/N < 0.8 only)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino")


def sample_cfg(cache_dir: Path, engine_cache: Path, *overrides: str):
    return compose_config(
        "sample",
        ["model=tiny", f"paths.cache_dir={cache_dir}", f"engine.cache_dir={engine_cache}", "dtype=fp32", *overrides],
    )


def load(cache_dir: Path, engine_cache: Path, *overrides: str):
    cfg = sample_cfg(cache_dir, engine_cache, *overrides)
    return load_for_inference(cfg, base_override=True), cfg


def render(model, cfg, steps: int = 4, **changes) -> tuple[np.ndarray, dict]:
    base = SampleSettings.from_config(cfg, (PROMPT,))
    (image,) = generate(model, SampleSettings(**{**base.__dict__, "steps": steps, "seed": 3, **changes}))
    return np.asarray(image, dtype=np.int16), image.info


def entry_of(engine_cache: Path) -> Path:
    (entry,) = [p for p in engine_cache.glob("*/ov*-f32-v*") if p.is_dir()]
    return entry


@pytest.fixture(scope="module")
def ov_model(cache_dir: Path, engine_cache: Path):
    """The first load: a cache miss, so the export runs (once for the module)."""
    return load(cache_dir, engine_cache, "engine.backend=openvino")


def test_export_writes_a_checked_entry_and_images_match_torch_fp32(ov_model, cache_dir, engine_cache) -> None:
    model, cfg = ov_model
    assert isinstance(model.unet, OpenVINOUNet) and model.text_encoder.__class__.__module__.startswith("transformers")
    entry = entry_of(engine_cache)
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    assert set(manifest["files"]) == {"unet.xml", "unet.bin", "vae_decoder.xml", "vae_decoder.bin"}
    assert manifest["precision"] == "f32" and manifest["quantize"] is None
    assert (entry.parent / "compiled").is_dir() and any((entry.parent / "compiled").iterdir())  # CACHE_DIR blobs
    import openvino as ov

    context = ov.Core().read_model(str(entry / "unet.xml")).input("encoder_hidden_states").get_partial_shape()
    assert context[0].is_dynamic and context[1].is_dynamic  # any batch, any token count (the world's 16, SD's 77)
    ours, info = render(model, cfg)
    torch_model, torch_cfg = load(cache_dir, engine_cache, "engine.backend=torch")
    reference, torch_info = render(torch_model, torch_cfg)
    assert info["precision"] == "openvino-f32" and torch_info["precision"] == "fp32"
    assert np.abs(ours - reference).max() <= MAX_PIXEL_DIFF
    assert np.abs(ours - render(torch_model, torch_cfg, seed=4)[0]).mean() > 5  # another seed is another image


def test_second_load_is_a_cache_hit(ov_model, cache_dir, engine_cache, capfd) -> None:
    capfd.readouterr()
    model, _ = load(cache_dir, engine_cache, "engine.backend=openvino")
    assert isinstance(model.unet, OpenVINOUNet)
    assert "building the OpenVINO" not in capfd.readouterr().err


def test_stale_and_altered_entries_are_detected(ov_model, engine_cache, tmp_path) -> None:
    entry = entry_of(engine_cache)
    expected = {k: v for k, v in json.loads((entry / cache.MANIFEST).read_text()).items() if k not in ("files",)}
    copy = shutil.copytree(entry, tmp_path / "entry")
    assert cache.check_entry(copy, expected) is None
    assert "openvino is" in cache.check_entry(copy, {**expected, "openvino": "2099.1.0"})  # another version: stale
    data = bytearray((copy / "vae_decoder.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    (copy / "vae_decoder.bin").write_bytes(bytes(data))
    assert "does not match its checksum" in cache.check_entry(copy, expected)
    (copy / cache.MANIFEST).unlink()
    assert cache.check_entry(copy, expected) == "no readable manifest"


@pytest.mark.slow  # a second real export
def test_a_corrupt_entry_is_rebuilt_and_logged(ov_model, cache_dir, engine_cache, capfd, caplog, tmp_path) -> None:
    copy = shutil.copytree(engine_cache, tmp_path / "openvino")  # ov_model memory-maps the original's files
    entry = entry_of(copy)
    with open(entry / "unet.bin", "r+b") as f:
        f.truncate(100)  # an interrupted copy, say
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        model, cfg = load(cache_dir, copy, "engine.backend=openvino")
    assert "unet.bin is missing or truncated" in caplog.text and "rebuilding" in caplog.text
    err = capfd.readouterr().err
    assert "building the OpenVINO U-Net and VAE decoder" in err and "built the OpenVINO" in err
    assert cache.check_entry(entry, {}) is None  # complete again
    assert render(model, cfg)[0].shape == (64, 64, 3)


def test_auto_is_the_default_and_a_gpu_keeps_torch(cache_dir, engine_cache, monkeypatch) -> None:
    monkeypatch.delenv("LDM_ENGINE")  # the suite pins torch (tests/conftest.py); users get the config's default
    cfg = compose_config("sample", [])
    assert cfg.engine.backend == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a GPU runs torch fp16: a choice, not a fallback
        assert engine_module.install_engine(None, cfg, torch.device("cuda")) == "torch"
    with pytest.raises(EngineError, match=r"engine.backend=openvino: device=cuda"):
        engine_module.install_engine(None, compose_config("sample", ["engine.backend=openvino"]), torch.device("cuda"))
    monkeypatch.setenv("LDM_ENGINE", "fast")
    with pytest.raises(ConfigError, match=r"engine.backend='fast': expected auto \| torch \| openvino .*LDM_ENGINE"):
        engine_module.check_engine_config(compose_config("sample", []).engine)


def test_auto_falls_back_to_torch_when_openvino_is_missing(cache_dir, engine_cache, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.warns(UserWarning, match=r"engine.backend=auto: using torch, because OpenVINO is not installed"):
        model, _ = load(cache_dir, engine_cache, "engine.backend=auto")
    assert not isinstance(model.unet, OpenVINOUNet)
    with pytest.raises(EngineError, match=r"engine.backend=openvino: OpenVINO is not installed"):
        load(cache_dir, engine_cache, "engine.backend=openvino")


def test_auto_falls_back_to_torch_when_compiling_fails(ov_model, cache_dir, engine_cache, monkeypatch) -> None:
    import openvino as ov

    def fail(*args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: simulated compile failure")

    reloaded: list[list[str]] = []
    reload = TextEncoderFineTuner.reload_base_parts

    def spy(self, names):
        reloaded.append(list(names))
        assert self.unet is None and self.vae is None  # dropped before the engine compiled
        reload(self, names)

    monkeypatch.setattr(ov.Core, "compile_model", fail)
    monkeypatch.setattr(TextEncoderFineTuner, "reload_base_parts", spy)
    with pytest.warns(UserWarning, match="OpenVINO failed: Exception from src/plugins/intel_cpu: simulated"):
        model, cfg = load(cache_dir, engine_cache, "engine.backend=auto")
    assert reloaded == [["unet", "vae"]]
    assert not isinstance(model.unet, OpenVINOUNet) and not model.unet.training
    assert not any(p.requires_grad for p in (*model.unet.parameters(), *model.vae.parameters()))
    image, info = render(model, cfg)
    reference, _ = render(load(cache_dir, engine_cache, "engine.backend=torch")[0], cfg)
    assert info["precision"] == "fp32" and np.array_equal(image, reference)  # the base's own U-Net and VAE again


def test_bad_values_are_clear_errors(cache_dir, engine_cache) -> None:
    with pytest.raises(FastSamplingError, match=r"deep_cache.branch=5: expected 0 to 1 for this U-Net"):
        load(cache_dir, engine_cache, "engine.backend=openvino", "deep_cache.interval=3", "deep_cache.branch=5")
    with pytest.raises(ConfigError, match=r"engine.backend='fast'.*auto \| torch \| openvino"):
        load(cache_dir, engine_cache, "engine.backend=fast")
    with pytest.raises(ConfigError, match=r"engine.quantize='int4'"):
        load(cache_dir, engine_cache, "engine.quantize=int4")


# --- DeepCache on the engine -----------------------------------------------------------------------
def deep_cache_kinds(model) -> list[list[str]]:
    """The full/shallow schedule of each pipeline call the engine's DeepCache ran."""
    sessions, make = [], model.unet.deep_cache

    def spy(interval: int, branch: int):
        sessions.append(make(interval, branch))
        return sessions[-1]

    model.unet.deep_cache = spy
    return sessions


@pytest.mark.parametrize("branch", [0, 1])
def test_deep_cache_runs_on_the_engine_as_on_torch(branch, ov_model, cache_dir, engine_cache) -> None:
    """The full graph's extra outputs feed the shallow graph: torch DeepCache's images, in OpenVINO."""
    import openvino as ov

    options = ("deep_cache.interval=3", f"deep_cache.branch={branch}")
    model, cfg = load(cache_dir, engine_cache, "engine.backend=openvino", *options)
    assert len(ov.Core().read_model(str(entry_of(engine_cache) / "unet.xml")).outputs) == 3  # noise + 2 branches
    (shallow,) = engine_cache.glob(f"*/ov*-f32-shallow{branch}-v*")
    assert json.loads((shallow / cache.MANIFEST).read_text())["branch"] == branch
    sessions = deep_cache_kinds(model)
    ours, info = render(model, cfg, steps=6, guidance_interval=FULL)
    assert info["deep_cache"] == f"interval=3,branch={branch}" and info["precision"] == "openvino-f32"
    assert [s.kinds for s in sessions] == [["full", "shallow", "shallow"] * 2]
    torch_model, torch_cfg = load(cache_dir, engine_cache, "engine.backend=torch", *options)
    reference, _ = render(torch_model, torch_cfg, steps=6, guidance_interval=FULL)
    assert np.abs(ours - reference).max() <= MAX_PIXEL_DIFF
    plain, _ = render(ov_model[0], ov_model[1], steps=6, guidance_interval=FULL)
    assert np.abs(ours - plain).mean() > 0.5  # the shallow calls really ran: the image moved
    sessions.clear()
    render(model, cfg, guidance_interval=(0.5, 1.0))  # batches 1, 1, 2, 2: a new batch size calls in full
    assert [s.kinds for s in sessions] == [["full", "shallow", "full", "full"]]


# --- guidance interval, on both engines ------------------------------------------------------------
def unet_batches(model) -> list[int]:
    batches: list[int] = []
    model.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    return batches


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_guidance_interval(engine, ov_model, cache_dir, engine_cache) -> None:
    model, cfg = ov_model if engine == "openvino" else load(cache_dir, engine_cache, "engine.backend=torch")
    batches = unet_batches(model)
    plain, _ = render(model, cfg, guidance_interval=FULL)
    inside, info = render(model, cfg, guidance_interval=(0.0, 0.99))  # every step i/4 < 0.99: all guided
    assert np.array_equal(inside, plain) and info["guidance_interval"] == [0.0, 0.99]
    assert batches == [2] * 8
    batches.clear()
    none, _ = render(model, cfg, guidance_interval=(0.5, 0.5))  # zero width: conditional only
    unguided, _ = render(model, cfg, guidance_scale=1.0)
    assert np.array_equal(none, unguided) and not np.array_equal(none, plain)
    assert batches == [1] * 8  # half the U-Net work
    batches.clear()
    half, _ = render(model, cfg, guidance_interval=(0.5, 1.0))
    assert batches == [1, 1, 2, 2]
    assert not np.array_equal(half, plain) and not np.array_equal(half, unguided)
    if engine == "openvino":  # batch 1 and batch 2 ran on one compiled copy (one set of weights in memory)
        assert len(model.unet.run.compiled) == 1


def test_guidance_interval_keeps_its_embeddings_under_a_progress_callback(cache_dir, engine_cache) -> None:
    """sample.py's and the app's step callbacks return {}: the interval's switch of embeddings must survive it."""
    model, cfg = load(cache_dir, engine_cache, "engine.backend=torch")
    base = SampleSettings.from_config(cfg, (PROMPT,))
    chosen = SampleSettings(**{**base.__dict__, "steps": 4, "seed": 3, "guidance_interval": (0.5, 1.0)})
    steps: list[int] = []
    (watched,) = generate(model, chosen, on_step=step_callback(lambda step, total, latents: steps.append(step)))
    (plain,) = generate(model, chosen)
    assert steps == [1, 2, 3, 4] and watched.tobytes() == plain.tobytes()


def test_the_saved_png_records_the_guidance_interval(cache_dir, engine_cache) -> None:
    model, cfg = load(cache_dir, engine_cache, "engine.backend=torch")
    base = SampleSettings.from_config(cfg, (PROMPT,))  # the default interval, [0.2, 0.8]
    for interval, recorded in [(base.guidance_interval, "[0.2, 0.8]"), (FULL, None)]:
        (image,) = generate(model, SampleSettings(**{**base.__dict__, "steps": 2, "guidance_interval": interval}))
        assert Image.open(io.BytesIO(png_bytes(image))).info.get("guidance_interval") == recorded


def test_guidance_interval_is_checked() -> None:
    cfg = compose_config("sample", ["model=tiny", "guidance_interval=[0.6,0.2]"])
    from ldm.generation.settings import validate_settings

    with pytest.raises(SamplingError, match=r"guidance_interval=\[0.6, 0.2\]: expected \[start, end\] with 0 ≤ start"):
        validate_settings(SampleSettings.from_config(cfg, (PROMPT,)))


@pytest.mark.slow
def test_int8_engine_is_calibrated_on_its_own_trajectories(ov_model, cache_dir, engine_cache, capfd) -> None:
    model, cfg = load(cache_dir, engine_cache, "engine.backend=openvino", "engine.quantize=int8", "steps=3")
    (entry,) = engine_cache.glob("*/ov*-f32-int8-c*-v*")
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    assert manifest["quantize"] == "int8" and manifest["calibration"]["steps"] == 3
    assert "int8 U-Net and VAE" in capfd.readouterr().err
    ours, info = render(model, cfg)
    reference, _ = render(*ov_model)
    assert info["precision"] == "openvino-f32-int8"
    assert np.abs(ours - reference).mean() < 20  # the same picture, up to int8 rounding


def test_fingerprint_follows_the_weights() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert cache.fingerprint(a) != cache.fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert cache.fingerprint(a) == cache.fingerprint(b)


def test_the_step_preview_is_fitted_on_the_engines_vae(ov_model, cache_dir, engine_cache) -> None:
    """app.py with engine.backend=auto picked OpenVINO on a bf16 CPU and crashed fitting the preview map: the
    engine's VAE holds no torch parameters. The map fitted through the engine matches the torch VAE's."""
    from ldm.generation.preview import latent_preview_for

    model, _ = ov_model
    assert not list(model.vae.parameters())  # the case this test is about
    on_engine = latent_preview_for(model)
    on_torch = latent_preview_for(load(cache_dir, engine_cache, "engine.backend=torch")[0])
    assert on_engine.source == on_torch.source == "fitted"
    torch.testing.assert_close(on_engine.factors, on_torch.factors, atol=0.05, rtol=0.1)
    torch.testing.assert_close(on_engine.bias, on_torch.bias, atol=0.05, rtol=0.1)


# --- engine.backend=auto: the measured choice and its cache ---------------------------------------
@pytest.fixture
def own_cache(ov_model, engine_cache: Path, tmp_path: Path) -> Path:
    """A copy of the module's engine cache (its float entry built): a choice written here stays here."""
    return shutil.copytree(engine_cache, tmp_path / "openvino", ignore=shutil.ignore_patterns(choice.FILE, ".*"))


@pytest.fixture
def timed(monkeypatch) -> list[str]:
    """The candidates `auto` timed, in order (the real measurement still runs)."""
    names: list[str] = []
    real = choice.time_call

    def spy(name: str, call: Callable[[], object]) -> float:
        names.append(name)
        return real(name, call)

    monkeypatch.setattr(choice, "time_call", spy)
    return names


def ov_version() -> str:
    import openvino as ov

    return ov.get_version()


def auto_line(caplog) -> str:
    """The one line `auto` logs about its choice."""
    (line,) = [r.getMessage() for r in caplog.records if "the fastest U-Net call" in r.getMessage()]
    return line


def load_auto(cache_dir: Path, engines: Path, caplog, *overrides: str):
    caplog.clear()
    with caplog.at_level("INFO", logger="ldm.generation.engine"):
        return load(cache_dir, engines, "engine.backend=auto", *overrides)


def test_auto_measures_on_a_miss_and_reads_its_choice_on_a_hit(cache_dir, own_cache, timed, caplog) -> None:
    import openvino as ov

    model, _ = load_auto(cache_dir, own_cache, caplog)
    assert timed == ["torch-fp32", "openvino-f32"]  # a miss: each candidate timed, torch at the CPU's dtype
    (entry,) = json.loads((own_cache / choice.FILE).read_text())["entries"]
    side = model.unet.config.sample_size
    assert entry["key"] == {"cpu": cpu_name(), "fingerprint": entry["key"]["fingerprint"], "openvino": ov.get_version(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(), "shape": [2, 4, side, side],
                            "precision": "f32", "candidates": ["torch-fp32", "openvino-f32"]}  # fmt: skip
    assert (own_cache / entry["key"]["fingerprint"]).is_dir()  # the base's fingerprint, as the entries'
    seconds = entry["seconds_per_call"]
    assert set(seconds) == {"torch-fp32", "openvino-f32"} and all(s > 0 for s in seconds.values())
    assert entry["choice"] == min(seconds, key=seconds.__getitem__)
    assert isinstance(model.unet, OpenVINOUNet) == (entry["choice"] == "openvino-f32")
    line = auto_line(caplog)
    assert line.startswith(f"engine.backend=auto: {entry['choice']}, the fastest U-Net call on this CPU")
    assert all(f"{name} {s:.3g} s" in line for name, s in seconds.items())
    assert "int8 is not a candidate: no adherence cost recorded (engine.int8_adherence_cost)" in line
    for recorded in ("openvino-f32", "torch-fp32"):  # hits: the recorded choice runs, whichever it is, untimed
        (own_cache / choice.FILE).write_text(json.dumps({"entries": [{**entry, "choice": recorded}]}))
        model, cfg = load_auto(cache_dir, own_cache, caplog)
        assert timed == ["torch-fp32", "openvino-f32"]  # nothing more was timed
        assert isinstance(model.unet, OpenVINOUNet) == (recorded == "openvino-f32")
        assert auto_line(caplog).startswith(f"engine.backend=auto: {recorded},") and "cached in" in auto_line(caplog)
    assert render(model, cfg)[1]["precision"] == "fp32"  # torch's U-Net and VAE are back


def test_a_choice_is_stale_on_another_openvino_or_cpu(cache_dir, own_cache, timed, caplog, monkeypatch) -> None:
    load_auto(cache_dir, own_cache, caplog)
    path = own_cache / choice.FILE
    (entry,) = json.loads(path.read_text())["entries"]
    assert choice.read_choice(path, entry["key"]) == (entry, "cached")
    newer = {**entry["key"], "openvino": "2099.1.0-1-new"}
    assert choice.read_choice(path, newer) == (None, f"the cached choice is stale (openvino was {ov_version()!r})")
    timed.clear()
    monkeypatch.setattr(choice, "cpu_name", lambda: "Another CPU")  # a cache shared with another machine
    load_auto(cache_dir, own_cache, caplog)
    assert timed == ["torch-fp32", "openvino-f32"] and f"stale (cpu was {cpu_name()!r})" in caplog.text
    assert {e["key"]["cpu"] for e in json.loads(path.read_text())["entries"]} == {cpu_name(), "Another CPU"}


def test_a_forced_backend_measures_nothing(cache_dir, own_cache, timed) -> None:
    assert isinstance(load(cache_dir, own_cache, "engine.backend=openvino")[0].unet, OpenVINOUNet)
    assert not isinstance(load(cache_dir, own_cache, "engine.backend=torch")[0].unet, OpenVINOUNet)
    assert timed == [] and not (own_cache / choice.FILE).exists()


def test_auto_times_int8_only_with_a_recorded_cost_and_never_builds_it(cache_dir, own_cache, timed, caplog) -> None:
    model, cfg = load(cache_dir, own_cache, "engine.backend=torch")
    b = build.EngineBuild.start(model, cfg)

    def why_not(cost: float | None) -> str | None:
        return engine_module.int8_candidate(b, OmegaConf.merge(cfg.engine, {"int8_adherence_cost": cost}))

    assert why_not(None) == "int8 is not a candidate: no adherence cost recorded (engine.int8_adherence_cost)"
    assert why_not(3) == "int8 is not a candidate: its adherence cost, 3 points, is above 2"
    assert why_not(1.5).startswith("int8 is not a candidate: no int8 entry for engine.calibration (missing")
    # an int8 manifest whose files are gone: a candidate by its manifest, but never rebuilt (a long calibration)
    folder, expected = build.int8_location(b, calibration_fields(cfg.engine))
    folder.mkdir()
    files = {"unet.bin": {"bytes": 7, "sha256": "0"}}
    (folder / cache.MANIFEST).write_text(json.dumps({"format": cache.FORMAT, **expected, "files": files}))
    assert why_not(1.5) is None and why_not(-1) is None  # within the bound (a gain counts as within)
    gone = r"using torch, because the int8 entry .* cannot be used \(unet.bin is missing or truncated\)"
    with pytest.warns(UserWarning, match=gone):
        model, _ = load_auto(cache_dir, own_cache, caplog, "engine.int8_adherence_cost=1.5")
    assert timed == ["torch-fp32", "openvino-f32"]  # the float engine was timed; int8 failed before its timing
    assert not isinstance(model.unet, OpenVINOUNet) and sorted(p.name for p in folder.iterdir()) == [cache.MANIFEST]


# --- build failures, the build lock and the int8 key -----------------------------------------------
def test_a_full_disk_falls_back_under_auto_and_is_named_under_openvino(cache_dir, tmp_path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "convert_unet", lambda unet, tokens=77: object())  # the export's work is not the point
    monkeypatch.setattr(export, "save", full)
    engines = tmp_path / "openvino"
    message = r"building the engine's cache entry under .* failed: \[Errno 28\] No space left on device"
    with pytest.warns(UserWarning, match=r"engine.backend=auto: using torch, because " + message):
        model, cfg = load(cache_dir, engines, "engine.backend=auto")
    assert not isinstance(model.unet, OpenVINOUNet) and render(model, cfg)[1]["precision"] == "fp32"
    assert not list(engines.glob("*/.*-new-*")) and not list(engines.glob("*/ov*"))  # no half-written entry
    assert not (engines / choice.FILE).exists()  # a failure is not a choice: the next run tries again
    with pytest.raises(EngineError, match=r"engine.backend=openvino: " + message):
        load(cache_dir, engines, "engine.backend=openvino")


def test_an_nncf_failure_falls_back_under_auto_and_is_named_under_openvino(
    cache_dir, own_cache, monkeypatch, timed
) -> None:
    given: list[int] = []

    def broken(model, samples):
        given.append(len(samples))
        raise RuntimeError("simulated failure inside nncf")

    monkeypatch.setattr(export, "quantize_unet", broken)
    before = sorted(own_cache.glob("*/ov*-int8-*"))  # the slow int8 test's entry, when it ran first
    int8 = ("engine.quantize=int8", "engine.calibration.steps=3", "engine.calibration.samples=2",
            "engine.calibration_prompts=['a red circle']")  # fmt: skip
    message = r"nncf failed quantizing the U-Net: RuntimeError: simulated failure inside nncf"
    with pytest.warns(UserWarning, match=r"engine.backend=auto: using torch, because " + message):
        model, cfg = load(cache_dir, own_cache, "engine.backend=auto", *int8)
    assert given == [2]  # 2 of the 3 calibration calls (engine.calibration.samples), spread over the schedule
    assert timed == ["torch-fp32"] and not isinstance(model.unet, OpenVINOUNet)
    assert render(model, cfg)[1]["precision"] == "fp32"  # the torch U-Net and VAE came back
    with pytest.raises(EngineError, match=r"engine.backend=openvino: " + message):
        load(cache_dir, own_cache, "engine.backend=openvino", *int8)
    assert sorted(own_cache.glob("*/ov*-int8-*")) == before  # no half-built entry


def test_calibration_samples_are_spread_over_the_schedule() -> None:
    assert spread(list(range(45)), 5) == [0, 11, 22, 33, 44]
    assert spread(list(range(4)), None) == spread(list(range(4)), 9) == [0, 1, 2, 3]


def test_the_int8_key_holds_what_it_was_calibrated_on(monkeypatch) -> None:
    import nncf

    def tag(*overrides: str) -> str:
        return calibration_tag(calibration_fields(compose_config("sample", ["model=tiny", *overrides]).engine))

    base = tag()
    assert tag() == base and tag("seed=5", "engine.backend=openvino") == base  # what calibration does not read
    others = [tag("engine.calibration_prompts=['a blue square']"), tag("engine.calibration.steps=20"),
              tag("engine.calibration.scheduler=ddim"), tag("engine.calibration.guidance_scale=3"),
              tag("engine.calibration.samples=8")]  # fmt: skip
    assert tag("steps=20") == others[1]  # by default calibration renders at the render's steps
    monkeypatch.setattr(nncf, "__version__", "9.9.9")
    others.append(tag())
    assert len({base, *others}) == len(others) + 1
    assert cache.entry_key("2026.4.1-1-abc", "f32", "int8", base) == f"ov2026.4.1-f32-int8-{base}-v{cache.FORMAT}"


LOCK_WORKER = """
import os, sys, time
from pathlib import Path
from ldm.generation.openvino import cache

folder, builds, release = (Path(a) for a in sys.argv[1:4])

def build(tmp):
    with open(builds, "a") as f:
        f.write(f"{os.getpid()}\\n")
    while not release.exists():  # the test lets the build finish once the other process is waiting
        time.sleep(0.05)
    (tmp / "unet.bin").write_bytes(b"weights")
    return ["unet.bin"]

_, seconds = cache.ensure_entry(folder, {"fingerprint": "test"}, build, "test entry")
print("built" if seconds is not None else "reused")
"""


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_processes_that_need_one_entry_build_it_once(tmp_path) -> None:
    script, builds, release = tmp_path / "worker.py", tmp_path / "builds.txt", tmp_path / "release"
    script.write_text(LOCK_WORKER)
    folder = tmp_path / "openvino" / "0123456789abcdef" / "ov2026.4.1-f32-v3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(script), str(folder), str(builds), str(release)]

    def start() -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    wait_until(builds.exists)  # the first process holds the lock, mid-build
    second, said = start(), []
    reader = threading.Thread(target=lambda: said.extend(second.stderr), daemon=True)
    reader.start()
    wait_until(lambda: any("waiting" in line for line in said) or len(builds.read_text().splitlines()) > 1)
    release.touch()
    out_first, _ = first.communicate(timeout=60)
    out_second = second.stdout.read()
    second.wait(timeout=60)
    reader.join(timeout=10)
    assert len(builds.read_text().splitlines()) == 1  # one build
    assert out_first.split() == ["built"] and out_second.split() == ["reused"]
    said = "".join(said)
    assert "waiting for another process that is building the OpenVINO test entry" in said
    assert "using the OpenVINO test entry that another process built" in said
    assert cache.check_entry(folder, {"fingerprint": "test"}) is None
