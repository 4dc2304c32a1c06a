"""Build the vendored emoji set shipped in the package (run once; the output is committed).

    apt-get install fonts-noto-color-emoji unicode-data
    pip install -e '.[emoji]'   # fontTools
    python scripts/make_vendored_emoji.py

Reads every colour glyph of Noto Color Emoji (the PNG bitmaps of its CBDT table), labels each with its Unicode
emoji group from `emoji-test.txt` (Debian's `unicode-data`), draws it onto white at 3x32x32 (see
`denoiserlab.data.emoji.render_png`) and splits the set about 90/10, seeded, keeping every skin-tone variant of
an emoji on one side. The output has the same bytes on every run with the same inputs, Pillow and zlib.

Which glyphs: those whose code point sequence, or failing that its longest prefix, is listed in emoji-test.txt,
except the 'Component' group (skin-tone swatches, hair pieces); left out with it are the glyphs the font keeps
only to build others (digits, '#', '*', the keycap frame, regional indicator letters, the unknown flag). A glyph
drawn identically for several sequences (bitmaps with the same bytes) is kept once.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from denoiserlab.atomic import atomic_write
from denoiserlab.data.emoji import (
    DEBIAN_NOTO_EMOJI,
    VENDORED_EMOJI,
    file_sha256,
    glyph_pngs,
    glyph_sequences,
    open_font,
    render_png,
    sequence_text,
    without_fe0f,
)

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")  # `dpkg -L unicode-data`
SIZE = 32  # side of the vendored images in pixels
SEED = 20261124  # seed of the train/test split
TEST_FRACTION = 0.1
LEFT_OUT_GROUPS = ("Component",)  # skin-tone swatches and hair pieces: parts of emoji, not pictures
SKIN_TONES = range(0x1F3FB, 0x1F400)  # Fitzpatrick modifiers 1F3FB..1F3FF
ZWJ = 0x200D
# Code points that Unicode places last in a ZWJ sequence (gender signs, "facing right", "shaking" arrows, the
# colour squares of lime and brown mushroom, the fire of phoenix, the collision of broken chain). Noto also maps
# each such sequence reversed to the same glyph; a sequence starting with one of these is that alias.
TRAILING_ZWJ_ELEMENTS = frozenset({0x2640, 0x2642, 0x27A1, 0x2194, 0x2195, 0x1F7E9, 0x1F7EB, 0x1F525, 0x1F4A5})


def read_emoji_groups(path: Path) -> tuple[list[str], dict[tuple[int, ...], str]]:
    """(group names in file order, sequence without FE0F -> group name) from Unicode's emoji-test.txt."""
    names, group_of, group = [], {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            names.append(group)
        elif line.strip() and not line.startswith("#"):
            codepoints = line.split(";", 1)[0].split()
            group_of.setdefault(without_fe0f(tuple(int(code, 16) for code in codepoints)), group)
    return names, group_of


def is_reversed_alias(sequence: tuple[int, ...]) -> bool:
    """A ZWJ sequence that starts with an element Unicode puts last: Noto's reversed alias of a real sequence."""
    return len(sequence) > 1 and sequence[0] in TRAILING_ZWJ_ELEMENTS and sequence[1] == ZWJ


def listed_prefix_length(sequence: tuple[int, ...], group_of: dict[tuple[int, ...], str]) -> int:
    """Length of the longest prefix of `sequence` listed in emoji-test.txt (the whole sequence counts); 0 if none."""
    return max((length for length in range(1, len(sequence) + 1) if sequence[:length] in group_of), default=0)


def canonical_sequence(sequences: set[tuple[int, ...]],
                       group_of: dict[tuple[int, ...], str]) -> tuple[tuple[int, ...], str] | None:
    """(the sequence that names a glyph, its group) or None when no sequence has a listed prefix.

    A listed sequence wins; otherwise (emoji newer than the file, subdivision flags, skin tones the standard does
    not list) the sequence with the longest listed prefix, reversed aliases left out, and its group is the
    prefix's; ties go to the smallest sequence."""
    listed = sorted(sequence for sequence in sequences if sequence in group_of)
    if listed:
        return listed[0], group_of[listed[0]]
    candidates = sorted(sequence for sequence in sequences if not is_reversed_alias(sequence))
    lengths = [listed_prefix_length(sequence, group_of) for sequence in candidates]
    if not candidates or max(lengths) == 0:
        return None
    best = candidates[lengths.index(max(lengths))]
    return best, group_of[best[: max(lengths)]]


def choose_glyphs(font, group_of: dict[tuple[int, ...], str]) -> list[tuple[tuple[int, ...], str, bytes]]:
    """(sequence, group, PNG bytes) of each kept glyph, sorted by sequence; identical bitmaps kept once."""
    pngs, chosen = glyph_pngs(font), []
    for glyph, sequences in glyph_sequences(font).items():
        named = canonical_sequence(sequences, group_of)
        if glyph in pngs and named is not None and named[1] not in LEFT_OUT_GROUPS:
            chosen.append((*named, pngs[glyph]))
    chosen.sort(key=lambda entry: entry[0])
    seen, unique = set(), []
    for entry in chosen:
        if entry[2] not in seen:
            seen.add(entry[2])
            unique.append(entry)
    return unique


def split_by_base(sequences: list[tuple[int, ...]], seed: int = SEED,
                  test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean [N], True for the test split: whole bases (a sequence without its skin tones) in a seeded random
    order until the test split holds at least test_fraction of the images."""
    bases = [tuple(codepoint for codepoint in sequence if codepoint not in SKIN_TONES) for sequence in sequences]
    distinct = sorted(set(bases))
    order = np.random.default_rng(seed).permutation(len(distinct))
    target, test_bases, n_test = round(test_fraction * len(sequences)), set(), 0
    counts = Counter(bases)
    for index in order:
        if n_test >= target:
            break
        test_bases.add(distinct[index])
        n_test += counts[distinct[index]]
    return np.array([base in test_bases for base in bases])


def build_arrays(font_path: Path, emoji_test: Path) -> dict[str, np.ndarray]:
    """The arrays of the vendored file: {split}_images, {split}_labels, {split}_sequences, label_names, font_sha256."""
    names, group_of = read_emoji_groups(emoji_test)
    label_names = [name for name in names if name not in LEFT_OUT_GROUPS]
    font = open_font(font_path)
    try:
        glyphs = choose_glyphs(font, group_of)
    finally:
        font.close()
    images = np.stack([render_png(png, SIZE) for _, _, png in glyphs])  # [N, 3, 32, 32]
    labels = np.array([label_names.index(group) for _, group, _ in glyphs], dtype=np.uint8)
    sequences = np.array([sequence_text(sequence) for sequence, _, _ in glyphs])
    is_test = split_by_base([sequence for sequence, _, _ in glyphs])
    arrays = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[mask], labels[mask]
        arrays[f"{split}_sequences"] = sequences[mask]
    arrays["label_names"] = np.array(label_names)
    arrays["font_sha256"] = np.array(file_sha256(font_path))
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz np.load reads, with fixed member dates and order, so equal arrays give equal bytes (np.savez stamps
    the current time). Written atomically."""
    def write(temp: Path) -> None:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for key, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(member, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)

    atomic_write(path, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--font", type=Path, default=DEBIAN_NOTO_EMOJI, help="NotoColorEmoji.ttf")
    parser.add_argument("--emoji-test", type=Path, default=EMOJI_TEST, help="Unicode's emoji-test.txt")
    parser.add_argument("--out", type=Path, default=VENDORED_EMOJI)
    args = parser.parse_args(argv)
    arrays = build_arrays(args.font, args.emoji_test)
    write_npz(args.out, arrays)
    counts = {split: np.bincount(arrays[f"{split}_labels"], minlength=len(arrays["label_names"]))
              for split in ("train", "test")}
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): "
          f"{len(arrays['train_images'])} train, {len(arrays['test_images'])} test")
    for label, name in enumerate(arrays["label_names"]):
        print(f"  {label} {name:<20} train {counts['train'][label]:5d}  test {counts['test'][label]:4d}")


if __name__ == "__main__":
    main(sys.argv[1:])
