"""`python train.py` prints no third-party banners (Lightning's tips, transformers' torchvision fallback)
while our own warnings, and every other message of those libraries, still print."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from tests.helpers import run_train

BANNERS = (
    "litlogger",
    "litmodels",
    "💡 Tip",
    "TPU available",
    "requires torchvision (not installed)",
    "isinstance(treespec, LeafSpec)",
    "in eval mode at the start of training",
)


def test_train_tiny_prints_no_third_party_banners_but_our_warnings(cache_dir: Path, tmp_path: Path) -> None:
    result = run_train(
        "experiment=tiny",
        "trainer.max_epochs=1",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert [banner for banner in BANNERS if banner in console] == []
    assert "trainer.precision=16-mixed needs a GPU" in console  # our own warning is not hidden
    assert "GPU available: False" in console  # Lightning's other messages still print


def test_the_filters_drop_only_the_named_messages(caplog) -> None:
    import ldm.console  # importing ldm installs the filters

    caplog.set_level(logging.INFO)
    transformers_log = logging.getLogger("transformers.utils.import_utils")
    transformers_log.warning("`XImageProcessor` requires torchvision (not installed); falling back to `XPil` ...")
    transformers_log.warning("some other transformers warning")
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
    lightning_log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == [
        "some other transformers warning",
        "GPU available: False, used: False",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        ldm.console.quiet_third_party()
        warnings.warn("Found 401 module(s) in eval mode at the start of training.", stacklevel=1)
        warnings.warn("our own warning", stacklevel=1)
    assert [str(w.message) for w in caught] == ["our own warning"]
