"""Surviving faults: kill -9 and an exact resume, atomic checkpoint writes, safe loading, non-finite losses."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm.errors import ConfigError
from ldm.training.checkpoint_io import AtomicCheckpointIO, CheckpointLoadError, atomic_torch_save, safe_torch_load
from ldm.training.faults import NonFiniteLossError
from ldm.training.module import TextEncoderFineTuner
from ldm.training.resume import resolve_ckpt_path
from ldm.training.run import train
from tests.helpers import run_train, start_train

# --- kill -9 mid-epoch, then ckpt_path=last -------------------------------------------------------------

STEPS_PER_EPOCH = 6  # tiny preset: 24 train images, batch 4


def _load_step(path: Path) -> int | None:
    try:
        return int(safe_torch_load(path)["global_step"])
    except CheckpointLoadError:  # atomic writes: a reader must never see a half-written file
        pytest.fail(f"{path} was readable by name but not loadable: a half-written checkpoint")


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_from_last_matches_an_uninterrupted_run(tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "outputs"
    common = [
        "experiment=tiny",
        f"paths.cache_dir={cache_dir}",
        f"paths.runs_dir={runs}",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.deterministic=true",
        "seed=7",
    ]
    # the reference lives outside runs_dir, so `ckpt_path=last` can only find the killed run's checkpoint
    reference = start_train(*common, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path, log=tmp_path / "ref.log")
    killed_dir = runs / "killed"
    victim = start_train(
        *common,
        f"hydra.run.dir={killed_dir}",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",  # 0.4 s per step: room to kill it mid-epoch
        "+callbacks.slow.seconds=0.4",
        cwd=tmp_path,
        log=tmp_path / "killed.log",
    )
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not (last.is_file() and (_load_step(last) or 0) >= 2):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    victim.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of a checkpoint write
    victim.wait()
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    killed_at = _load_step(last)
    assert killed_at % STEPS_PER_EPOCH != 0, f"killed at step {killed_at}: not mid-epoch"
    for ckpt in killed_dir.glob("checkpoints/*.ckpt"):  # every file with a checkpoint name is complete
        _load_step(ckpt)

    resumed = run_train(*common, f"hydra.run.dir={runs / 'resumed'}", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr

    expected = safe_torch_load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    got = safe_torch_load(runs / "resumed" / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), f"{name} differs after resuming at step {killed_at}"
    moments = expected["optimizer_states"][0]["state"]
    for index, state in moments.items():
        assert all(torch.equal(got["optimizer_states"][0]["state"][index][k], v) for k, v in state.items())
    final = load_file(runs / "resumed" / "final_model" / "final_weights.safetensors")
    assert all(torch.equal(final[k], v) for k, v in expected["state_dict"].items())


class _Draws(torch.utils.data.Dataset):
    """Item i: (i, a random draw), so both the order and per-item randomness are visible."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, float(torch.rand(()))


def test_the_train_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    from ldm.data.resumable import ResumableDataLoader

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(_Draws(), batch_size=3, shuffle=True, seed=7)

    first = loader()
    first.sampler.set_epoch(1)  # Lightning calls set_epoch at every epoch start
    torch.manual_seed(0)
    batches = iter(first)
    seen = [next(batches), next(batches)]
    state = first.state_dict()
    rest = list(batches)
    assert state == {"epoch": 1, "batches": 2}

    resumed = loader()  # a new process: a new loader, another global RNG state
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    torch.manual_seed(123)
    again = list(resumed)
    assert len(again) == len(rest) == 2
    for got, expected in zip(again, rest, strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    orders = [[int(i) for b in batches for i in b[0]] for batches in ([*seen, *rest], list(resumed))]
    assert sorted(orders[0]) == list(range(10)) and orders[1] == orders[0]  # skip applied once; order = f(epoch)


# --- ckpt_path: "last", a run folder, a clear error when there is nothing -------------------------------


def _fake_run(root: Path, name: str, mtime: float) -> Path:
    ckpt = root / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (mtime, mtime))
    return ckpt


def test_ckpt_path_last_and_run_folders_resolve(tmp_path: Path) -> None:
    older = _fake_run(tmp_path, "2026-01-01/10-00-00", 1_000)
    newer = _fake_run(tmp_path, "multirun/2026-01-02/09-00-00/1", 2_000)
    assert resolve_ckpt_path("last", tmp_path) == str(newer)
    assert resolve_ckpt_path(str(tmp_path / "2026-01-01/10-00-00"), tmp_path) == str(older)
    assert resolve_ckpt_path(str(older), tmp_path) == str(older)
    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no checkpoints/last.ckpt under paths.runs_dir="):
        resolve_ckpt_path("last", tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"a folder without checkpoints/last\.ckpt"):
        resolve_ckpt_path(str(tmp_path), tmp_path)


def test_cli_ckpt_path_last_without_checkpoints_is_one_clear_line(tmp_path: Path, cache_dir: Path) -> None:
    result = run_train(
        "experiment=tiny",
        f"paths.cache_dir={cache_dir}",
        f"paths.runs_dir={tmp_path}/none",
        "ckpt_path=last",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "error: ckpt_path=last: no checkpoints/last.ckpt under paths.runs_dir=" in result.stderr
    assert "Traceback" not in result.stderr


# --- atomic writes ----------------------------------------------------------------------------------------


def test_atomic_save_leaves_the_old_file_when_a_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    class Explodes:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2, "bad": Explodes()}, path)
    assert safe_torch_load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temp file was removed


def test_readers_never_see_a_partial_checkpoint_while_it_is_rewritten(tmp_path: Path) -> None:
    path, io = tmp_path / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(200_000)}, path)
    stop, seen = threading.Event(), []

    def writer() -> None:
        for i in range(15):
            io.save_checkpoint({"w": torch.full((200_000,), float(i))}, path)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        seen.append(float(io.load_checkpoint(path)["w"][0]))  # raises if it ever reads half a file
    thread.join()
    assert io.load_checkpoint(path)["w"].eq(14.0).all() and seen


def test_the_trainer_uses_the_atomic_plugin(compose_train) -> None:
    from ldm.training.run import build_trainer

    assert isinstance(build_trainer(compose_train()).strategy.checkpoint_io, AtomicCheckpointIO)


# --- untrusted files: weights_only, clear errors, never code execution ----------------------------------


class _Payload:
    """Unpickling this would create `marker` (what a malicious checkpoint would do with os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    with open(path, "rb") as f:  # the payload is real: unrestricted unpickling runs it
        assert b"touch" in f.read()
    return path, marker


def test_a_malicious_pickle_is_refused_and_never_executed(evil_checkpoint, compose_train) -> None:
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointLoadError, match=r"evil\.ckpt.*can't be loaded safely.*nothing in it was executed"):
        safe_torch_load(path)
    with pytest.raises(CheckpointLoadError, match=r"evil\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointLoadError, match=r"evil\.ckpt"):  # Lightning's own resume path (trainer.fit)
        train(compose_train(f"ckpt_path={path}", "trainer.max_epochs=1"))
    from ldm.generation.checkpoints import CheckpointError, read_checkpoint  # sample.py / app.py's loader of exports

    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the control: torch itself refuses it under weights_only
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("size", [0, 100, "half"])
def test_a_truncated_checkpoint_is_a_clear_error_naming_the_file(tiny_run: Path, tmp_path: Path, size) -> None:
    data = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2 if size == "half" else size])
    with pytest.raises(CheckpointLoadError, match=r"checkpoint '.*cut\.ckpt' can't be loaded safely.*truncated"):
        safe_torch_load(cut)


def test_resuming_from_a_truncated_checkpoint_fails_before_training(tiny_run: Path, tmp_path, compose_train) -> None:
    data = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointLoadError, match=r"cut\.ckpt"):
        train(compose_train(f"ckpt_path={cut}"))
    assert not (tmp_path / "checkpoints").exists()


# --- non-finite losses --------------------------------------------------------------------------------


def _poison_training_losses(monkeypatch, bad_calls: set[int] | None) -> list[int]:
    """Make the training loss NaN on the given training calls (all of them when None)."""
    original, calls = TextEncoderFineTuner._common_step, []

    def poisoned(self, batch, generator=None):
        loss = original(self, batch, generator)
        if generator is not None:  # validation: left alone
            return loss
        calls.append(len(calls))
        return loss * float("nan") if bad_calls is None or calls[-1] in bad_calls else loss

    monkeypatch.setattr(TextEncoderFineTuner, "_common_step", poisoned)
    return calls


def test_nonfinite_losses_are_skipped_and_counted(monkeypatch, compose_train) -> None:
    calls = _poison_training_losses(monkeypatch, {1, 2})
    trainer, module = train(compose_train("trainer.max_epochs=1"))
    assert len(calls) == STEPS_PER_EPOCH
    # Lightning still counts the batch in global_step, but with no backward no weight or moment moves
    adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state_dict()["state"].values()}
    assert trainer.global_step == STEPS_PER_EPOCH and adam_steps == {STEPS_PER_EPOCH - 2}
    assert module.nonfinite.total == 2 and float(trainer.callback_metrics["train/nonfinite_steps"]) == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert all(torch.isfinite(p).all() for p in module.text_encoder.parameters())


def test_a_run_of_nonfinite_losses_stops_training(monkeypatch, compose_train) -> None:
    _poison_training_losses(monkeypatch, None)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf in 3 consecutive steps \(model.max_nonfinite_steps=3"):
        train(compose_train("model.max_nonfinite_steps=3"))


def test_max_nonfinite_steps_must_be_positive() -> None:
    from ldm.training.faults import NonFiniteLossGuard

    with pytest.raises(ValueError, match=r"model.max_nonfinite_steps=0: expected an integer ≥ 1"):
        NonFiniteLossGuard(0)
