"""Flickr8k data: layouts, bad-data handling, caption policy, augmentation, the generator, the YAML."""

import csv
import inspect
import re
import warnings
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import SequentialSampler
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.data import layouts
from ldm.data.datamodule import Flickr8kDataModule
from ldm.data.images import ImageTransform
from ldm.data.resumable import ResumableSampler
from ldm.data.synthetic import write_captioned_images

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
SMALL = {"resolution": 32, "batch_size": 4, "num_workers": 0}  # on top of the YAML's defaults


@pytest.fixture(scope="session")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)


@pytest.fixture
def make_dm(tokenizer):
    """Build the DataModule from conf/data/flickr8k.yaml (its defaults, not copies) plus overrides."""

    def make(**overrides) -> Flickr8kDataModule:
        cfg = OmegaConf.merge(OmegaConf.load(CONF_DATA / "flickr8k.yaml"), SMALL, overrides)
        return hydra.utils.instantiate(cfg, tokenizer=tokenizer)

    return make


def generated(root: Path, layout: str, num_images: int = 20, seed: int = 0) -> Path:
    return write_captioned_images(root, layout=layout, num_images=num_images, image_size=40, seed=seed)


def flickr_warnings(record: list) -> list[str]:
    return [str(w.message) for w in record if str(w.message).startswith("Flickr8k")]


# --- folder layouts through the DataModule ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_folder_layout_batches(tmp_path, make_dm, tokenizer, layout):
    root = generated(tmp_path, layout)
    assert layouts.detect_layout(root) == layout
    dm = make_dm(root=str(root), layout="auto")
    dm.setup()
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 16, "val": 2, "test": 2}

    train = dm.train_dataloader()
    assert isinstance(train.sampler, ResumableSampler) and train.sampler.shuffle  # exact mid-epoch resume
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert not train.persistent_workers
    batch = next(iter(train))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert -1.0 <= batch["pixel_values"].min() < batch["pixel_values"].max() <= 1.0
    assert batch["input_ids"].shape == (4, 77) and batch["input_ids"].dtype == torch.long
    assert len(batch["captions"]) == 4 and all(isinstance(c, str) and c for c in batch["captions"])
    expected = tokenizer(batch["captions"][0], padding="max_length", max_length=77, truncation=True).input_ids
    assert batch["input_ids"][0].tolist() == expected

    val_captions = [c for b in dm.val_dataloader() for c in b["captions"]]
    assert val_captions == [c for b in dm.val_dataloader() for c in b["captions"]]
    assert sum(len(b["captions"]) for b in dm.test_dataloader()) == 2


def test_explicit_layout_overrides_detection(tmp_path, make_dm):
    root = generated(tmp_path, "original")
    with pytest.raises(FileNotFoundError, match=r"captions\.txt"):
        make_dm(root=str(root), layout="kaggle").setup("fit")


def test_missing_or_empty_root_and_missing_caption_file(tmp_path, make_dm):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError, match=re.escape(str(root))) as err:
            make_dm(root=str(root)).setup("fit")
        assert "Flickr8k.token.txt" in str(err.value) and "captions.txt" in str(err.value)
    root = generated(tmp_path / "no_tokens", "original")
    (root / layouts.ORIGINAL_TOKENS).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / layouts.ORIGINAL_TOKENS))):
        make_dm(root=str(root)).setup("fit")


def test_kaggle_split_is_by_image_disjoint_and_deterministic(tmp_path, make_dm):
    names = [f"{i:04d}.jpg" for i in range(50)]
    split = layouts.split_by_image(names, val_fraction=0.1, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    assert set().union(*split.values()) == set(names)
    assert split == layouts.split_by_image(reversed(names), val_fraction=0.1, seed=0)
    assert split != layouts.split_by_image(names, val_fraction=0.1, seed=1)

    dm = make_dm(root=str(generated(tmp_path, "kaggle", num_images=30)))
    dm.setup()
    images = {s: {x.image for x in d.source.samples} for s, d in dm.splits.items()}
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])


# --- hub layout (a local folder through the real datasets.load_dataset) ----------------------------


def test_hub_layout_from_local_folder(tmp_path, make_dm, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    features = datasets.Features(
        {"image": datasets.Image(), **{f"caption_{k}": datasets.Value("string") for k in range(5)}}
    )
    folder = tmp_path / "hub"
    folder.mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for split in ("train", "validation", "test"):
        rows = {"image": [Image.new("RGB", (48, 40), c) for c in colours]}
        rows |= {f"caption_{k}": [f"{split} image {i} caption {k}" for i in range(3)] for k in range(5)}
        if split == "train":  # row 1: an undecodable image; row 2: no captions at all
            rows["image"][1] = {"bytes": b"not an image", "path": None}
            for k in range(5):
                rows[f"caption_{k}"][2] = "" if k else None
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")

    dm = make_dm(layout="hub", hub={"name": str(folder)}, batch_size=2)
    dm.prepare_data()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.setup()
    assert len(flickr_warnings(record)) == 1 and "1 of 3 rows" in flickr_warnings(record)[0]
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 2, "val": 3, "test": 3}

    batch = next(iter(dm.val_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["input_ids"].shape == (2, 77)
    assert batch["captions"] == ["validation image 0 caption 0", "validation image 1 caption 0"]
    with pytest.warns(UserWarning, match="could not decode"):
        item = dm.splits["train"][1]  # row 1 fails to decode: replaced by the next usable row (0)
    assert torch.equal(item["pixel_values"], dm.splits["train"][0]["pixel_values"])


# --- bad data ---------------------------------------------------------------------------------------


def test_missing_corrupt_truncated_and_bogus_images_are_skipped_with_one_warning(tmp_path, make_dm):
    root = generated(tmp_path, "original", num_images=10)  # train: synthetic_00000..07
    images = root / layouts.ORIGINAL_IMAGES
    (images / "synthetic_00000.jpg").write_bytes(b"garbage, not a jpeg")
    data = (images / "synthetic_00001.jpg").read_bytes()
    (images / "synthetic_00001.jpg").write_bytes(data[: len(data) // 2])
    (images / "synthetic_00002.jpg").unlink()
    bogus = "2258277193_586949ec62.jpg.1"  # the real token file's bogus key
    with open(root / layouts.ORIGINAL_TOKENS, "a") as f:
        f.write(f"{bogus}#0\tA dog runs .\n")
    with open(root / layouts.ORIGINAL_SPLIT_FILES["train"], "a") as f:
        f.write(f"{bogus}\n")

    dm = make_dm(root=str(root))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.setup("fit")
    messages = flickr_warnings(record)
    assert len(messages) == 1 and "train: skipped 4 of 9" in messages[0]
    for name in (bogus, "synthetic_00000.jpg", "synthetic_00001.jpg", "synthetic_00002.jpg"):
        assert name in messages[0]
    assert len(dm.splits["train"]) == 5 and len(dm.splits["val"]) == 1
    next(iter(dm.train_dataloader()))


def test_image_that_fails_at_read_is_replaced_deterministically(tmp_path, make_dm):
    root = generated(tmp_path, "original")
    dm = make_dm(root=str(root))
    dm.setup("validate")
    val = dm.splits["val"]
    next_item = val[1]
    val.source.samples[0].image.write_bytes(b"broken after setup")
    for _ in range(2):
        with pytest.warns(UserWarning, match="could not decode synthetic_00016.jpg"):
            item = val[0]
        assert torch.equal(item["pixel_values"], next_item["pixel_values"])
        assert item["caption"] == next_item["caption"]


@pytest.mark.parametrize(
    ("line", "lineno"),
    [("x.jpg#0 no tab here", 2), ("x.jpg\tno #N in the key", 2), ("x.jpg#a\tN is not a number", 2)],
)
def test_malformed_token_line_names_file_and_line(tmp_path, line, lineno):
    path = tmp_path / layouts.ORIGINAL_TOKENS
    path.write_text(f"ok.jpg#0\tfine\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:{lineno}")):
        layouts.read_token_file(path)


def test_malformed_csv_row_names_file_and_line(tmp_path, make_dm):
    root = generated(tmp_path, "kaggle")
    path = root / layouts.KAGGLE_CAPTIONS
    assert layouts.read_captions_csv(path)  # the generator's quoted commas parse
    rows = path.read_text().splitlines()
    rows.insert(3, "synthetic_00000.jpg,a dog, unquoted comma")
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4")):
        make_dm(root=str(root)).setup("fit")


def test_csv_header_is_checked(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("file,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1")):
        layouts.read_captions_csv(path)


# --- caption policy and augmentation ---------------------------------------------------------------


def test_train_captions_vary_and_val_captions_are_fixed(tmp_path, make_dm):
    root = generated(tmp_path, "original")
    dm = make_dm(root=str(root))
    dm.setup("fit")
    torch.manual_seed(0)
    train_caps = {dm.splits["train"][0]["caption"] for _ in range(20)}
    assert len(train_caps) > 1 and train_caps <= set(dm.splits["train"].source.captions(0))
    val = dm.splits["val"]
    assert {val[0]["caption"] for _ in range(5)} == {val.source.captions(0)[0]}


def test_caption_dropout_only_at_train(tmp_path, make_dm, tokenizer):
    root = generated(tmp_path, "original")
    dm = make_dm(root=str(root), caption_dropout=1.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["captions"] == [""] * 4
    assert batch["input_ids"][:, :2].tolist() == [[tokenizer.bos_token_id, tokenizer.eos_token_id]] * 4
    assert all(next(iter(dm.val_dataloader()))["captions"])

    dm = make_dm(root=str(root), caption_dropout=0.5)
    dm.setup("fit")
    torch.manual_seed(0)
    dropped = [dm.splits["train"][0]["caption"] == "" for _ in range(40)]
    assert 5 < sum(dropped) < 35


def test_random_crop_and_flip(tmp_path):
    ramp = torch.arange(64, dtype=torch.uint8).repeat(48, 1) * 4  # (48, 64): brightness grows left to right
    image = Image.fromarray(torch.stack([ramp] * 3, -1).numpy())
    center = ImageTransform(32, random_crop=False, random_flip=False)(image)
    assert center.shape == (3, 32, 32)
    assert torch.equal(center, ImageTransform(32, random_crop=False, random_flip=False)(image))

    torch.manual_seed(0)
    crops = {ImageTransform(32, random_crop=True, random_flip=False)(image)[0, 0, 0].item() for _ in range(20)}
    assert len(crops) > 2  # different left edges

    torch.manual_seed(0)
    flip = ImageTransform(32, random_crop=False, random_flip=True)
    outs = [flip(image) for _ in range(20)]
    flipped = [torch.equal(o, center.flip(-1)) for o in outs]
    assert any(flipped) and not all(flipped)
    assert all(f or torch.equal(o, center) for o, f in zip(outs, flipped, strict=True))


def test_augmentation_settings_reach_train_only(tmp_path, make_dm):
    dm = make_dm(root=str(generated(tmp_path, "original")), center_crop=False, random_flip=True)
    dm.setup("fit")
    train, val = dm.splits["train"].transform, dm.splits["val"].transform
    assert train.random_crop and train.random_flip
    assert not (val.random_crop or val.random_flip)


# --- the generator and prepare_data -----------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_generator_is_deterministic_and_its_captions_parse(tmp_path, layout):
    a = _files(generated(tmp_path / "a", layout, num_images=12))
    assert a == _files(generated(tmp_path / "b", layout, num_images=12))
    assert a != _files(generated(tmp_path / "c", layout, num_images=12, seed=1))

    root = tmp_path / "a"
    if layout == "original":
        images, captions, splits = layouts.read_original(root)
        assert sorted(n for names in splits.values() for n in names) == sorted(
            captions
        )  # every image in exactly one split
    else:
        images, captions, _ = layouts.read_kaggle(root, val_fraction=0.1, seed=0)
        with open(root / layouts.KAGGLE_CAPTIONS, newline="") as f:
            assert any("," in row[1] for row in csv.reader(f))  # quoted commas survive
    assert len(captions) == 12 and sorted(p.name for p in images.iterdir()) == sorted(captions)
    assert all(len(set(c)) == 5 for c in captions.values())


def test_prepare_data_generates_only_when_root_is_empty(tmp_path, make_dm):
    spec = {"num_images": 12, "image_size": 32, "seed": 0, "layout": "original"}
    root = tmp_path / "data"
    dm = make_dm(root=str(root), generate=spec)
    dm.prepare_data()
    assert layouts.find_layout(root) == "original"
    (root / layouts.ORIGINAL_IMAGES / "synthetic_00000.jpg").unlink()
    dm.prepare_data()  # data present: nothing is rewritten
    assert not (root / layouts.ORIGINAL_IMAGES / "synthetic_00000.jpg").exists()

    kaggle = generated(tmp_path / "kaggle", "kaggle")
    make_dm(root=str(kaggle), generate=spec).prepare_data()
    assert not (kaggle / layouts.ORIGINAL_TOKENS).exists()


# --- config -----------------------------------------------------------------------------------------


def test_yaml_composes_and_matches_the_python_signature(tmp_path, tokenizer):
    with hydra.initialize_config_dir(config_dir=str(CONF_DATA), version_base="1.3"):
        cfg = hydra.compose(
            "flickr8k",
            overrides=[
                f"root={tmp_path / 'gen'}",
                "generate={num_images: 12, image_size: 32, seed: 0, layout: kaggle}",
                "resolution=32",
                "batch_size=2",
                "num_workers=0",
            ],
        )
    params = inspect.signature(Flickr8kDataModule.__init__).parameters
    required = {n for n, p in params.items() if n != "self"}
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for n, p in params.items() if n != "self")
    assert set(cfg) - {"_target_", "_convert_"} == required - {"tokenizer"}

    dm = hydra.utils.instantiate(cfg, tokenizer=tokenizer)
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["input_ids"].shape == (2, 77)
    assert dm.hparams.resolution == 32 and dm.hparams.val_fraction == 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layout": "zip"}, "layout='zip'"),
        ({"val_fraction": 0.5}, "val_fraction=0.5"),
        ({"caption_dropout": 1.5}, "caption_dropout=1.5"),
        (
            {"layout": "hub", "generate": {"num_images": 3, "image_size": 8, "seed": 0, "layout": "kaggle"}},
            "hub",
        ),
        ({"generate": {"num_images": 3}}, "generate needs exactly"),
    ],
)
def test_bad_config_stops_at_instantiate(make_dm, overrides, message):
    with pytest.raises(InstantiationException, match=re.escape(message)) as err:
        make_dm(**overrides)
    assert isinstance(err.value.__cause__, ValueError)


def test_persistent_workers_only_with_workers(tmp_path, make_dm):
    root = str(generated(tmp_path, "original"))
    assert make_dm(root=root, num_workers=2).val_dataloader().persistent_workers
    assert not make_dm(root=root, num_workers=0).val_dataloader().persistent_workers
