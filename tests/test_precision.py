"""16-mixed on a CPU resolves to something that runs fast there, with one warning; explicit choices stay."""

import pytest
import torch

from ldm.errors import ConfigError
from ldm.hardware import cpu_has_native_bf16
from ldm.training.precision import frozen_weight_dtype, resolve_precision


def test_16_mixed_on_cpu_without_bf16_falls_back_to_fp32() -> None:
    with pytest.warns(UserWarning, match="no bf16 unit"):
        assert resolve_precision("16-mixed", "cpu", native_bf16=False) == "32-true"


def test_16_mixed_on_cpu_with_bf16_uses_bf16() -> None:
    with pytest.warns(UserWarning, match="native bf16"):
        assert resolve_precision("16-mixed", "cpu", native_bf16=True) == "bf16-mixed"


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "64-true"])
def test_explicit_choice_is_respected(explicit: str, recwarn: pytest.WarningsRecorder) -> None:
    assert resolve_precision(explicit, "cpu", native_bf16=False) == explicit
    assert not [w for w in recwarn if "precision" in str(w.message)]


def test_gpu_keeps_16_mixed() -> None:
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"


def test_cpuinfo_flags(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_the_override_pins_this_machines_answer_and_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    with pytest.warns(UserWarning, match="native bf16 unit"):
        assert cpu_has_native_bf16() and resolve_precision("16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setenv("LDM_CPU_BF16", "0")
    with pytest.warns(UserWarning, match="no bf16 unit"):
        assert not cpu_has_native_bf16() and resolve_precision("16-mixed", "cpu") == "32-true"
    monkeypatch.setenv("LDM_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match=r"LDM_CPU_BF16='yes': expected 0 \(no bf16 unit\) or 1"):
        cpu_has_native_bf16()


def test_frozen_dtype() -> None:
    assert frozen_weight_dtype("16-mixed") is torch.float16
    assert frozen_weight_dtype("bf16-mixed") is torch.bfloat16
    assert frozen_weight_dtype("32-true") is torch.float32
