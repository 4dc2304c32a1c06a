"""The colour built-ins 'emoji' (vendored, 3x32x32) and 'emoji-64' (3x64x64, built on first use from Debian's font).

Both hold the colour glyphs of Noto Color Emoji (Debian's `fonts-noto-color-emoji`), each composited onto white,
centred on a square with its aspect kept and resized with Lanczos. The vendored file `vendored/emoji-32.npz`
(made by `scripts/make_vendored_emoji.py`) fixes which glyphs, in which order and split, with which labels (the
Unicode emoji group); 'emoji-64' draws the same code point sequences again from the installed font at 64x64 and
keeps them in the user cache folder, so 64x64 needs the Debian package and fontTools but adds nothing to the
repository. Reading glyphs needs fontTools (`pip install 'denoiserlab[emoji]'`); reading the vendored set does not.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from denoiserlab.atomic import atomic_write
from denoiserlab.data.npz import read_npz
from denoiserlab.errors import DenoiserLabError
from denoiserlab.user_cache import user_cache_dir

VENDORED_EMOJI = Path(__file__).parent / "vendored" / "emoji-32.npz"
DEBIAN_NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # `dpkg -L fonts-noto-color-emoji`
EMOJI_64_SIZE = 64  # side in pixels of 'emoji-64'
EMOJI_64_CACHE_VERSION = 1  # bump when the rendering changes, so old cache files are not read

_VARIATION_SELECTOR_16 = 0xFE0F  # "emoji presentation": fonts draw the same glyph with or without it
_CANCEL_TAG = 0xE007F
_TAG_LETTERS = range(0xE0020, 0xE007F)
_WHITE = (255, 255, 255, 255)


# ------------------------------------------------------------------------------------------- code point sequences


def sequence_text(sequence: tuple[int, ...]) -> str:
    """(0x1F468, 0x200D, 0x1F469) -> '1F468-200D-1F469'."""
    return "-".join(f"{codepoint:X}" for codepoint in sequence)


def parse_sequence(text: str) -> tuple[int, ...]:
    """'1F468-200D-1F469' -> (0x1F468, 0x200D, 0x1F469)."""
    return tuple(int(part, 16) for part in text.split("-"))


def without_fe0f(sequence: tuple[int, ...]) -> tuple[int, ...]:
    """The sequence with variation selector 16 left out (it does not change the glyph)."""
    return tuple(codepoint for codepoint in sequence if codepoint != _VARIATION_SELECTOR_16)


def _is_empty_tag_sequence(sequence: tuple[int, ...]) -> bool:
    """A cancel tag with no tag letters before it: the font maps it to its unknown-flag glyph, not to an emoji."""
    return _CANCEL_TAG in sequence and not any(codepoint in _TAG_LETTERS for codepoint in sequence)


# -------------------------------------------------------------------------------------------------------- the font


def open_font(path: str | Path = DEBIAN_NOTO_EMOJI):
    """The font as a fontTools TTFont; one error naming the missing package or module."""
    path = Path(path)
    if not path.is_file():
        raise DenoiserLabError(f"Noto Color Emoji not found at {path}: install it with "
                               "'sudo apt-get install fonts-noto-color-emoji'")
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        raise DenoiserLabError("reading emoji glyphs needs fontTools: pip install 'denoiserlab[emoji]'") from None
    font = TTFont(str(path), lazy=True)
    if "CBDT" not in font or "CBLC" not in font:
        raise DenoiserLabError(f"{path} has no CBDT/CBLC colour bitmaps (not a Noto Color Emoji bitmap font)")
    return font


def glyph_sequences(font) -> dict[str, set[tuple[int, ...]]]:
    """Glyph name -> the code point sequences (FE0F left out) the font draws with it: its cmap entries and the
    ligatures of its GSUB (ZWJ sequences, skin tones, flags, keycaps). Ligatures of glyphs without a code point
    and empty tag sequences are left out."""
    sequences: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    for codepoint, glyph in font.getBestCmap().items():
        if codepoint != _VARIATION_SELECTOR_16:
            sequences[glyph].add((codepoint,))
    codepoint_of = {glyph: min(found)[0] for glyph, found in sequences.items()}
    for components, glyph in _ligatures(font):
        if all(component in codepoint_of for component in components):
            sequence = without_fe0f(tuple(codepoint_of[component] for component in components))
            if not _is_empty_tag_sequence(sequence):
                sequences[glyph].add(sequence)
    return dict(sequences)


def _ligatures(font):
    """(component glyph names, ligature glyph name) of every ligature substitution in the font's GSUB."""
    if "GSUB" not in font:
        return
    for lookup in font["GSUB"].table.LookupList.Lookup:
        for subtable in lookup.SubTable:
            if lookup.LookupType == 7:  # extension lookup: the real subtable is wrapped
                subtable = subtable.ExtSubTable
            if getattr(subtable, "LookupType", lookup.LookupType) != 4:
                continue
            for first, ligatures in subtable.ligatures.items():
                for ligature in ligatures:
                    yield [first, *ligature.Component], ligature.LigGlyph


def glyph_pngs(font) -> dict[str, bytes]:
    """Glyph name -> PNG bytes of its bitmap in the font's largest CBDT strike."""
    strikes = font["CBLC"].strikes
    largest = max(range(len(strikes)), key=lambda index: strikes[index].bitmapSizeTable.ppemY)
    return {glyph: bitmap.imageData for glyph, bitmap in font["CBDT"].strikeData[largest].items()}


def render_png(png: bytes, size: int) -> np.ndarray:
    """A glyph bitmap composited onto white, centred on a square (aspect kept), resized with Lanczos to
    size x size; uint8 [3, size, size]. Compositing comes first so the resize never averages transparent colour."""
    with Image.open(io.BytesIO(png)) as glyph:
        rgba = glyph.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), _WHITE)
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    resized = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized).transpose(2, 0, 1).copy()


def render_sequences(font, sequences: list[str], size: int) -> np.ndarray:
    """The glyphs of these sequences ('1F600', '1F468-200D-1F469', ...), uint8 [N, 3, size, size]."""
    glyph_of = {sequence: glyph for glyph, found in glyph_sequences(font).items() for sequence in found}
    pngs = glyph_pngs(font)
    missing = [text for text in sequences if glyph_of.get(parse_sequence(text)) not in pngs]
    if missing:
        raise DenoiserLabError(f"the installed Noto Color Emoji has no colour glyph for {len(missing)} of the "
                               f"{len(sequences)} emoji (first: {missing[0]})")
    images = np.empty((len(sequences), 3, size, size), dtype=np.uint8)
    for index, text in enumerate(sequences):
        images[index] = render_png(pngs[glyph_of[parse_sequence(text)]], size)
    return images


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------- the built-ins


def read_emoji(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The vendored set: uint8 images [N, 3, 32, 32] and int64 labels [N] (the emoji group, see `emoji_label_names`)."""
    return read_npz(VENDORED_EMOJI, split)


def emoji_label_names() -> list[str]:
    """Names of the labels of 'emoji' and 'emoji-64': Unicode emoji groups, label i is names[i]."""
    with np.load(VENDORED_EMOJI, allow_pickle=False) as archive:
        return [str(name) for name in archive["label_names"]]


def read_emoji_64(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The vendored set's glyphs drawn at 64x64 from the installed font: uint8 [N, 3, 64, 64] and int64 labels [N].

    Built on first use (a few seconds) and kept in the user cache folder, keyed by the font's and the vendored
    file's hashes; a cache file that does not load as the expected arrays is rebuilt."""
    font_path = DEBIAN_NOTO_EMOJI
    if not font_path.is_file():
        raise DenoiserLabError(f"emoji-64 is drawn from Debian's Noto Color Emoji, not found at {font_path}: install"
                               " it with 'sudo apt-get install fonts-noto-color-emoji', or use 'emoji' (32x32, "
                               "shipped with the package)")
    with np.load(VENDORED_EMOJI, allow_pickle=False) as archive:
        sequences = {name: [str(text) for text in archive[f"{name}_sequences"]] for name in ("train", "test")}
        vendored_font_sha256 = str(archive["font_sha256"].item())
    counts = {name: len(found) for name, found in sequences.items()}
    font_sha256 = file_sha256(font_path)
    key = hashlib.sha256(f"{EMOJI_64_CACHE_VERSION} {font_sha256} {file_sha256(VENDORED_EMOJI)}".encode())
    path = user_cache_dir("emoji") / f"emoji-64-{key.hexdigest()[:20]}.safetensors"
    images = _read_emoji_64_cache(path, counts)
    if images is None:
        if font_sha256 != vendored_font_sha256:
            warnings.warn(f"{font_path} is not the font the vendored 'emoji' set was drawn from (SHA-256 "
                          f"{font_sha256[:12]}... instead of {vendored_font_sha256[:12]}...): emoji-64 has the same "
                          "emoji, drawn as this font draws them", stacklevel=2)
        images = _build_emoji_64(font_path, sequences)
        _write_emoji_64_cache(path, images)
    return images[split], read_emoji(split)[1]


def _build_emoji_64(font_path: Path, sequences: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """{'train': uint8 [N_train, 3, 64, 64], 'test': [N_test, 3, 64, 64]} drawn from the font."""
    font = open_font(font_path)
    try:
        return {name: render_sequences(font, found, EMOJI_64_SIZE) for name, found in sequences.items()}
    finally:
        font.close()


def _read_emoji_64_cache(path: Path, counts: dict[str, int]) -> dict[str, np.ndarray] | None:
    """The cached 64x64 splits, or None when the file is absent or not exactly two uint8 arrays of these counts."""
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except Exception:  # absent, truncated or not safetensors (safetensors raises its own error types)
        return None
    expected = {name: (count, 3, EMOJI_64_SIZE, EMOJI_64_SIZE) for name, count in counts.items()}
    if set(stored) != set(expected) or any(stored[name].shape != shape or stored[name].dtype != np.uint8
                                           for name, shape in expected.items()):
        return None
    return stored


def _write_emoji_64_cache(path: Path, images: dict[str, np.ndarray]) -> None:
    """Keep the 64x64 splits as safetensors, written atomically; a cache folder that cannot be written is skipped."""
    from safetensors.numpy import save_file

    try:
        atomic_write(path, lambda temp: save_file(images, str(temp)))
    except OSError:  # read-only or full cache folder: the images are still right, only not kept
        pass
