"""The colour built-ins 'emoji' (vendored 3x32x32) and 'emoji-64' (drawn from Debian's font), their split, labels,
rendering, `data info`, and the rebuild script reproducing the vendored file byte for byte."""

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from denoiserlab.cli import main
from denoiserlab.data import load
from denoiserlab.data import emoji
from denoiserlab.data.builtin import builtin_label_names
from denoiserlab.errors import DenoiserLabError

from repo_scripts import load_script


script = load_script("make_vendored_emoji")
needs_noto_emoji = pytest.mark.skipif(
    not emoji.DEBIAN_NOTO_EMOJI.is_file(), reason="Debian package fonts-noto-color-emoji is not installed"
)
needs_emoji_test = pytest.mark.skipif(
    not script.EMOJI_TEST.is_file(), reason="Debian package unicode-data (emoji-test.txt) is not installed"
)


def vendored_arrays() -> dict[str, np.ndarray]:
    with np.load(emoji.VENDORED_EMOJI, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# ------------------------------------------------------------------------------------------------ vendored 'emoji'


def test_emoji_loads_as_rgb_32x32_with_a_90_10_split():
    train, test = load("emoji"), load("emoji", split="test")
    assert train.uint8.dtype == torch.uint8 and train.uint8.shape[1:] == (3, 32, 32)
    assert test.uint8.shape[1:] == (3, 32, 32)
    assert 0.09 <= len(test) / (len(train) + len(test)) <= 0.11
    assert len(train) + len(test) > 3_500  # every emoji glyph of the font, not a subset
    assert train.name == "emoji/train" and test.name == "emoji/test"


def test_emoji_labels_are_the_named_groups():
    names = builtin_label_names("emoji")
    assert names == emoji.emoji_label_names() and len(names) == 9
    assert names[0] == "Smileys & Emotion" and names[-1] == "Flags" and "Component" not in names
    for split in ("train", "test"):
        labels = load("emoji", split=split).labels
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < len(names)
    assert torch.bincount(load("emoji").labels, minlength=len(names)).min() > 0  # every group has training images


def test_emoji_images_are_composited_onto_white():
    images = load("emoji").uint8
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # [N, 3, 4]
    assert (corners == 255).all()
    assert (images < 250).any(dim=(1, 2, 3)).all()  # and every image draws something


def test_emoji_split_is_seeded_by_base_emoji_and_reproducible():
    arrays = vendored_arrays()
    train, test = list(arrays["train_sequences"]), list(arrays["test_sequences"])
    everything = sorted(train + test, key=emoji.parse_sequence)
    is_test = script.split_by_base([emoji.parse_sequence(text) for text in everything])
    assert [text for text, chosen in zip(everything, is_test) if chosen] == test
    assert [text for text, chosen in zip(everything, is_test) if not chosen] == train

    def base(text):
        return tuple(point for point in emoji.parse_sequence(text) if point not in script.SKIN_TONES)

    assert not {base(text) for text in train} & {base(text) for text in test}  # no skin-tone twin across splits
    assert len(set(train + test)) == len(train) + len(test)
    assert torch.equal(load("emoji", subset=50, seed=3).uint8, load("emoji", subset=50, seed=3).uint8)


def test_data_info_emoji_prints_shape_and_group_names(tmp_path, capsys):
    assert main(["data", "info", "emoji", "--split", "test", "--out", str(tmp_path), "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "3 x 32 x 32" in out and "0 (Smileys & Emotion): " in out and "8 (Flags): " in out
    assert f"images       {len(load('emoji', split='test'))} " in out
    assert (tmp_path / "emoji-test-examples.png").is_file()


# ------------------------------------------------------------------------------------------------- rendering


def png_bytes(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_render_png_composites_alpha_onto_white():
    half_red = np.zeros((8, 8, 4), dtype=np.uint8)
    half_red[..., 0], half_red[..., 3] = 255, 128  # red at alpha 128/255
    rendered = emoji.render_png(png_bytes(half_red), 4).astype(np.int64)  # [3, 4, 4]
    expected = [255, round(255 * (1 - 128 / 255)), round(255 * (1 - 128 / 255))]
    assert np.abs(rendered - np.array(expected)[:, None, None]).max() <= 1
    transparent = np.zeros((8, 8, 4), dtype=np.uint8)
    assert (emoji.render_png(png_bytes(transparent), 4) == 255).all()


def test_render_png_centres_a_wide_glyph_with_its_aspect_kept():
    wide = np.zeros((8, 16, 4), dtype=np.uint8)
    wide[..., 2], wide[..., 3] = 255, 255  # opaque blue, 16 wide and 8 high
    rendered = emoji.render_png(png_bytes(wide), 16)  # on a 16x16 white square: rows 4..11 blue
    assert rendered.shape == (3, 16, 16) and rendered.dtype == np.uint8
    assert (rendered[:, :3] == 255).all() and (rendered[:, -3:] == 255).all()
    assert (rendered[:, 5:11] == np.array([0, 0, 255])[:, None, None]).all()


def test_canonical_sequence_rules():
    group_of = {(0x1F3C3,): "People & Body", (0x27A1,): "Symbols", (0x1F600,): "Smileys & Emotion",
                (0x1F3C3, 0x1F3FB): "People & Body"}
    assert script.canonical_sequence({(0x1F600,)}, group_of) == ((0x1F600,), "Smileys & Emotion")
    facing_right = (0x1F3C3, 0x200D, 0x27A1)  # newer than the file, and Noto also maps it reversed
    assert script.canonical_sequence({facing_right, facing_right[::-1]}, group_of) == (facing_right, "People & Body")
    toned = (0x1F3C3, 0x1F3FB, 0x200D, 0x27A1)
    assert script.canonical_sequence({toned}, group_of) == (toned, "People & Body")
    assert script.canonical_sequence({(0x1F1E6,)}, group_of) is None  # a regional indicator letter alone


# ------------------------------------------------------------------------------------------ rebuild and 'emoji-64'


@needs_noto_emoji
@needs_emoji_test
def test_rebuild_script_reproduces_the_vendored_file_exactly(tmp_path):
    out = tmp_path / "emoji-32.npz"
    script.main(["--out", str(out)])
    rebuilt = np.load(out, allow_pickle=False)
    for key, array in vendored_arrays().items():
        assert np.array_equal(rebuilt[key], array), f"{key} differs from the vendored file"
    assert out.read_bytes() == emoji.VENDORED_EMOJI.read_bytes(), "same arrays, different bytes (zlib version?)"


@pytest.fixture(scope="module")
def emoji_64(tmp_path_factory):
    """('emoji-64' train, test), built once into a fresh cache folder; yields (train, test, cache folder)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DENOISERLAB_CACHE", str(cache))
        yield load("emoji-64"), load("emoji-64", split="test"), cache


@needs_noto_emoji
def test_emoji_64_is_the_same_glyphs_at_64x64(emoji_64):
    train64, test64, _ = emoji_64
    for big, split in ((train64, "train"), (test64, "test")):
        small = load("emoji", split=split)
        assert big.uint8.shape == (len(small), 3, 64, 64) and big.uint8.dtype == torch.uint8
        assert torch.equal(big.labels, small.labels)
        halved = torch.nn.functional.avg_pool2d(big.uint8.float(), 2)  # [N, 3, 32, 32]
        per_image = (halved - small.uint8.float()).abs().mean(dim=(1, 2, 3))
        assert per_image.max() < 8  # same picture, on a 0..255 scale, up to the two filters' differences


@needs_noto_emoji
def test_emoji_64_is_read_back_from_the_cache_and_rebuilt_when_damaged(emoji_64, monkeypatch):
    train64, test64, cache = emoji_64
    monkeypatch.setenv("DENOISERLAB_CACHE", str(cache))
    monkeypatch.setattr(emoji, "_build_emoji_64", lambda *args: pytest.fail("rebuilt although cached"))
    assert torch.equal(load("emoji-64").uint8, train64.uint8)
    (cached,) = (cache / "emoji").glob("emoji-64-*.safetensors")
    cached.write_bytes(b"not safetensors")
    rebuilt = {"train": train64.uint8.numpy(), "test": test64.uint8.numpy()}  # stands in for drawing them again
    monkeypatch.setattr(emoji, "_build_emoji_64", lambda *args: rebuilt)
    assert torch.equal(load("emoji-64", split="test").uint8, test64.uint8)
    assert emoji._read_emoji_64_cache(cached, {"train": len(train64), "test": len(test64)}) is not None


def test_emoji_64_without_the_font_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(emoji, "DEBIAN_NOTO_EMOJI", tmp_path / "absent.ttf")
    with pytest.raises(DenoiserLabError, match="apt-get install fonts-noto-color-emoji"):
        load("emoji-64")


def test_reading_glyphs_without_fonttools_says_which_extra(monkeypatch, tmp_path):
    font = tmp_path / "font.ttf"
    font.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "fontTools.ttLib", None)  # import fails as if not installed
    with pytest.raises(DenoiserLabError, match=r"denoiserlab\[emoji\]"):
        emoji.open_font(font)
