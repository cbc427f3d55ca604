"""Image folders (``mdarts_rs.data.folder``): decoding against Pillow, CIFAR-10 as PNG files, the cache and bad
inputs."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

import mdarts_rs as md
from mdarts_rs import data
from mdarts_rs._core import DataFormatError, decode_images, load_cifar10_bin
from mdarts_rs.data import CifarLoader, SkippedImagesWarning, load_folder

from hostile import png_claiming

#: Largest per-pixel difference allowed between our decode + resize and Pillow's (libjpeg-turbo vs zune-jpeg
#: IDCT and chroma upsampling, then two triangle-filter implementations): measured at most 3 on these
#: images (mean under 0.5), so 4 leaves room for other decoder versions; the mean must stay under 1.
PILLOW_MAX_DIFF, PILLOW_MEAN_DIFF = 4, 1.0


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder."""
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))


# ---- decoding ---------------------------------------------------------------------------------------------


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, photograph-like RGB image with some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(x / 17 + y / 29), 128 + 90 * np.cos(y / 13), 128 + 80 * np.sin((x + y) / 23)], -1)
    return np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)


def _pillow(path: Path, size: int) -> np.ndarray:
    """Pillow's version of our decoding: EXIF transpose, RGB, shorter side to ``size`` (bilinear), centre crop."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def _decode(paths: list[Path], size: int) -> np.ndarray:
    out = np.zeros((len(paths), 3, size, size), np.uint8)
    assert decode_images(paths, out, 2) == []
    return out


def test_decoding_agrees_with_pillow(tmp_path):
    a = _photo(120, 160)
    files = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        files[name] = tmp_path / name
        img.save(files[name], **kw)

    save("baseline.jpg", Image.fromarray(a), quality=95)
    save("progressive.jpg", Image.fromarray(a), quality=95, progressive=True)
    save("cmyk.jpg", Image.fromarray(a).convert("CMYK"), quality=95)
    save("png_named.JPEG", Image.fromarray(a), format="PNG")  # the header decides, not the name
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the decoded image must be 160 high
    save("rotated.jpg", Image.fromarray(a), quality=95, exif=exif)
    save("gray.jpg", Image.fromarray(a).convert("L"), quality=95)
    save("palette.png", Image.fromarray(a).convert("P"))
    save("rgba.png", Image.fromarray(np.dstack([a, np.full(a.shape[:2], 99, np.uint8)])))
    save("wide.png", Image.fromarray(_photo(40, 200, seed=1)))
    for size in (32, 64):
        got = _decode(list(files.values()), size)
        for k, (name, path) in enumerate(files.items()):
            diff = np.abs(got[k].astype(int) - _pillow(path, size).astype(int))
            assert diff.max() <= PILLOW_MAX_DIFF and diff.mean() < PILLOW_MEAN_DIFF, (name, size, diff.max())
    # The rotation really is applied: without it the picture differs a lot.
    with Image.open(files["baseline.jpg"]) as im:
        im.rotate(-90, expand=True).save(tmp_path / "manual.png")
    diff = np.abs(_decode([files["rotated.jpg"]], 32).astype(int) - _decode([tmp_path / "manual.png"], 32).astype(int))
    assert diff.max() <= PILLOW_MAX_DIFF


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    a = _photo(48, 48)[..., 0]
    Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # v·257: exactly v in 8 bits
    Image.fromarray(a).save(tmp_path / "g8.png")
    got = _decode([tmp_path / "g16.png", tmp_path / "g8.png"], 48)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0][0], a)


# ---- CIFAR-10 as PNG files --------------------------------------------------------------------------------


def test_png_folder_of_cifar10_gives_the_binary_readers_pixels_and_batches(tmp_path, cifar_mini):
    x, y = load_cifar10_bin(cifar_mini, "test")
    x, y = x[:120], y[:120]
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "pngs" / data.CIFAR10_CLASSES[label]  # CIFAR-10's names sort in label order
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    order = np.lexsort((np.arange(len(y)), y))  # by class, then by file name
    folder = load_folder(tmp_path / "pngs", image_size=32)
    assert np.array_equal(folder.images, x[order]) and np.array_equal(folder.labels, y[order])
    assert folder.class_names == list(data.CIFAR10_CLASSES)
    stats = dict(mean=md.data.CIFAR10_MEAN, std=md.data.CIFAR10_STD)
    kw = dict(batch_size=16, cutout=16, seed=5, workers=2, normalize=False, **stats)
    a = [b for b in CifarLoader(folder.images, folder.labels, **kw).batches(1)]
    b = [b for b in CifarLoader(x[order], y[order], **kw).batches(1)]
    assert len(a) == len(b) == 7
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype and np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya, yb)


# ---- the cache ---------------------------------------------------------------------------------------------


def _color_folder(root: Path, per_class: int = 4, size: tuple[int, int] = (20, 16), fmt: str = "png") -> Path:
    colours = {"blue": (20, 30, 220), "green": (30, 200, 40), "red": (210, 20, 30)}
    for name, c in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(i)
            a = np.clip(np.array(c) + rng.normal(0, 20, (*size[::-1], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.{fmt}")
    return root


def test_cache_is_reused_rebuilt_on_change_and_refuses_damage(tmp_path, capsys):
    root = _color_folder(tmp_path / "data")
    a = load_folder(root, image_size=8)
    cache = Path(a.info["cache"])
    header_mtime = (cache / "header.json").stat().st_mtime_ns
    b = load_folder(root, image_size=8)
    assert b.info["cache_key"] == a.info["cache_key"] and (cache / "header.json").stat().st_mtime_ns == header_mtime
    assert np.array_equal(a.images, b.images) and isinstance(b.images, np.memmap)
    assert load_folder(root, image_size=12).info["cache_key"] != a.info["cache_key"]  # resize settings
    keys = {a.info["cache_key"]}
    Image.new("RGB", (9, 9), (10, 220, 10)).save(root / "green" / "new.png")  # a file added
    added = load_folder(root, image_size=8)
    assert len(added) == 13 and added.info["cache_key"] not in keys
    keys.add(added.info["cache_key"])
    os.utime(root / "red" / "0.png", ns=(1, 1))  # a file touched
    touched = load_folder(root, image_size=8)
    assert touched.info["cache_key"] not in keys
    keys.add(touched.info["cache_key"])
    (root / "green" / "new.png").unlink()  # a file removed
    removed = load_folder(root, image_size=8)
    assert len(removed) == 12 and removed.info["cache_key"] not in keys
    # Damage: a flipped pixel byte, then a truncated header; each is found, reported and rebuilt.
    cache, expected = Path(removed.info["cache"]), np.array(removed.images)  # a copy: the file is damaged in place
    raw = bytearray((cache / "images.u8").read_bytes())
    raw[5] ^= 0xFF
    (cache / "images.u8").write_bytes(bytes(raw))
    capsys.readouterr()
    again = load_folder(root, image_size=8)
    assert "is damaged (its pixels do not match the hash" in capsys.readouterr().err
    assert np.array_equal(again.images, expected)
    (cache / "header.json").write_text((cache / "header.json").read_text()[:40])
    again = load_folder(root, image_size=8)
    assert "is damaged (JSONDecodeError" in capsys.readouterr().err
    assert np.array_equal(again.images, expected)
    header = json.loads((cache / "header.json").read_text())
    assert header["class_names"] == ["blue", "green", "red"] and len(header["mean"]) == 3


def _repaint(path: Path, seed: int) -> None:
    """Rewrite the BMP ``path`` with other pixels: the same size in bytes, its modification time put back."""
    st = path.stat()
    with Image.open(path) as im:
        shape = (im.height, im.width, 3)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path, format="BMP")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_cache_key_belongs_to_one_folder_and_changes_with_any_rewrite(tmp_path):
    import shutil

    a_root = _color_folder(tmp_path / "a", fmt="bmp")
    a = load_folder(a_root, image_size=8)
    b_root = tmp_path / "b"
    shutil.copytree(a_root, b_root)  # A's names, sizes and modification times ...
    for i, f in enumerate(sorted(b_root.rglob("*.bmp"))):
        _repaint(f, seed=100 + i)  # ... and other pixels
    b = load_folder(b_root, image_size=8)
    assert b.info["cache_key"] != a.info["cache_key"] and not np.array_equal(a.images, b.images)
    assert np.array_equal(b.images, _decode(sorted(b_root.rglob("*.bmp")), 8))
    _repaint(a_root / "red" / "0.bmp", seed=7)  # same size and modification time, other content
    again = load_folder(a_root, image_size=8)
    assert again.info["cache_key"] != a.info["cache_key"]
    assert np.array_equal(again.images[8], _decode([a_root / "red" / "0.bmp"], 8)[0])
    assert not np.array_equal(again.images[8], a.images[8])


def _cache_dir_of(root: Path) -> Path:
    return Path(load_folder(root, image_size=8).info["cache"])


def _edit_header(change):
    def edit(cache: Path) -> None:
        header = json.loads((cache / "header.json").read_text())
        header = change(header) or header
        (cache / "header.json").write_text(json.dumps(header))

    return edit


def _replace_by_file(cache: Path) -> None:
    import shutil

    shutil.rmtree(cache)
    cache.write_text("a file where the cache was")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_edit_header(lambda h: h["labels"].reverse()), "its header was changed after it was written"),
        (_edit_header(lambda h: h.update(class_names=["x", "y", "z"])), "its header was changed after it was written"),
        (_edit_header(lambda h: h.update(mean=[0.5, 0.5, 0.5])), "its header was changed after it was written"),
        (_edit_header(lambda h: h.update(labels=[str(v) for v in h["labels"]])), "its header's 'labels' are not 12"),
        (_edit_header(lambda h: h.update(mean=["0.5"] * 3)), "its header's 'mean' and 'std' are not 3 finite"),
        (_edit_header(lambda h: h.update(std=[0.2, 0.2])), "its header's 'mean' and 'std' are not 3 finite"),
        (_edit_header(lambda h: h.update(count="12")), "its header's 'count' is str, not int"),
        (_edit_header(lambda h: [h]), "its header holds a list, not a JSON object"),
        (lambda cache: (cache / "header.json").unlink(), "it has no header.json"),
        (_replace_by_file, "it is a file, not a folder"),
    ],
)
def test_an_edited_or_damaged_cache_is_rebuilt_never_used(tmp_path, capsys, damage, problem):
    root = _color_folder(tmp_path / "data")
    first = load_folder(root, image_size=8)
    expected = (np.array(first.images), first.labels.copy(), first.class_names, first.mean)
    damage(Path(first.info["cache"]))
    capsys.readouterr()
    again = load_folder(root, image_size=8)
    assert f"the image cache {first.info['cache']} is damaged ({problem}" in capsys.readouterr().err
    assert np.array_equal(again.images, expected[0]) and np.array_equal(again.labels, expected[1])
    assert (again.class_names, again.mean) == expected[2:]


def test_nested_folders_are_read_and_odd_entries_named(tmp_path):
    root = _color_folder(tmp_path / "data")
    deep = root / "red" / "sub" / "subsub"
    deep.mkdir(parents=True)
    Image.new("RGB", (6, 6), (250, 1, 2)).save(deep / "deep.png")
    Image.new("RGB", (6, 6), (3, 250, 4)).save(root / "red" / "sub" / "mid.png")
    (root / "red" / ".hidden").mkdir()
    Image.new("RGB", (6, 6)).save(root / "red" / ".hidden" / "x.png")  # hidden folders are skipped, as hidden files
    names, files, labels, _ = data.scan_folder(root)
    red = [f.relative_to(root / "red").as_posix() for f, y in zip(files, labels) if y == 2]
    assert red == ["0.png", "1.png", "2.png", "3.png", "sub/mid.png", "sub/subsub/deep.png"]
    d = load_folder(root, image_size=4)
    assert len(d) == 14 and (d.images[-1][:, 0, 0] == [250, 1, 2]).all() and d.labels[-1] == 2
    (root / "blue" / "sub").mkdir()
    (root / "blue" / "sub" / "loop").symlink_to(root / "blue")  # a folder that would hold itself
    with pytest.raises(DataFormatError, match=r"blue/sub/loop: a symbolic link to a folder that holds it"):
        load_folder(root, image_size=4)
    (root / "blue" / "sub" / "loop").unlink()
    os.mkfifo(root / "blue" / "sub" / "pipe.png")  # not read (it would block): named, as a bad file
    (root / "green" / "self.png").symlink_to(root / "green" / "self.png")  # a link loop
    (root / "green" / "gone.png").symlink_to(root / "green" / "nowhere.png")
    with pytest.raises(DataFormatError) as e:
        load_folder(root, image_size=4)
    for line in (
        f"{root}/blue/sub/pipe.png: a FIFO (named pipe), not a regular file",
        f"{root}/green/self.png: Too many levels of symbolic links",
        f"{root}/green/gone.png: a symbolic link to {root}/green/nowhere.png, which does not exist",
    ):
        assert line in str(e.value), str(e.value)
    with pytest.warns(SkippedImagesWarning, match="pipe.png"):
        assert len(load_folder(root, image_size=4, skip_bad_images=True)) == 14


def test_cache_folder_problems_name_the_path_and_leave_no_unfinished_cache(tmp_path, monkeypatch):
    root = _color_folder(tmp_path / "data")
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cachefile"))
    with pytest.raises(OSError, match=r"cachefile/folders: cannot create the image cache folder \(.*cachefile is a"):
        load_folder(root, image_size=8)
    caches = tmp_path / "cache" / "folders"
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))
    _hostile(root / "red" / "strip.png")
    _, files, _, stats = data.scan_folder(root)
    key = data.cache_key(root, files, stats, 8)
    (caches / f"{key}.lock").mkdir(parents=True)  # the lock file cannot be opened
    with pytest.raises(OSError) as e:
        load_folder(root, image_size=8)
    assert e.value.strerror.startswith(f"{caches / key}.lock: Is a directory (in the image cache {caches}")
    (caches / f"{key}.lock").rmdir()
    (caches / f"{key}.tmp-999999").mkdir()  # left by a process killed while building
    with pytest.raises(DataFormatError, match="strip.png: 1×20000000 pixels"):
        load_folder(root, image_size=8)
    assert not list(caches.glob("*.tmp-*"))
    with pytest.warns(SkippedImagesWarning, match="strip.png"):
        assert len(load_folder(root, image_size=8, skip_bad_images=True)) == 12
    assert not list(caches.glob("*.tmp-*"))


def test_concurrent_processes_build_the_cache_once(tmp_path):
    # As under torchrun: every rank loads the folder; one builds the cache while the others wait, then reuse it.
    import subprocess
    import sys

    root = _color_folder(tmp_path / "data", per_class=20)
    code = (
        "import sys; from mdarts_rs.data import load_folder; "
        f"d = load_folder({str(root)!r}, image_size=16, quiet=False); print(d.info['cache_key'], int(d.images.sum()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({out for out, _ in outs}) == 1  # the same key and pixels everywhere
    assert sum("decoding 60 images" in err for _, err in outs) == 1, outs


def test_cache_refuses_to_fill_the_disk(tmp_path, monkeypatch):
    import shutil

    root = _color_folder(tmp_path / "data")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9 - 10**6, free=10**6))
    with pytest.raises(OSError, match="the image cache needs .* MB .* only 1 MB are free"):
        load_folder(root, image_size=8)


def test_train_and_val_folders_are_separate_splits(tmp_path):
    _color_folder(tmp_path / "d" / "train", per_class=3)
    _color_folder(tmp_path / "d" / "val", per_class=2)
    train = data.load_dataset("folder", tmp_path / "d", "train", image_size=8)
    test = data.load_dataset("folder", tmp_path / "d", "test", image_size=8)
    assert (len(train), len(test)) == (9, 6) and train.info["split_dirs"]
    assert data.has_test_set("folder", tmp_path / "d") and not data.has_test_set("folder", tmp_path / "d/val")
    with pytest.raises(DataFormatError, match="no train/ and val/ folders"):
        load_folder(tmp_path / "d" / "train", "test")


# ---- bad inputs --------------------------------------------------------------------------------------------


def _jpeg_cut_in_its_data() -> bytes:
    """A JPEG cut at 70% of its length: the header whole, the lower part of the image missing (Pillow: "image
    file is truncated"; decoders that go on fill it with grey)."""
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 80)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[: buf.tell() * 7 // 10]


#: Files that must fail as themselves (named, and skipped by --skip-bad-images), never hang or abort.
HOSTILE_FILES = {
    "cut.jpg": (_jpeg_cut_in_its_data, r"truncated: the JPEG data ends at byte \d+ before its end-of-image marker"),
    "strip.png": (lambda: png_claiming(1, 20_000_000), r"1×20000000 pixels: .* 32×640000000, above the limit"),
    "wide.png": (lambda: png_claiming(2_000_000, 1), r"makes it 64000000×32, above the limit of 100000000 pixels"),
    "bomb.png": (lambda: png_claiming(100_000, 100_000), r"100000×100000 pixels is above the limit of 100000000"),
    "fifo.png": (None, r"a FIFO \(named pipe\), not a regular file; only regular files are read"),
}


def _hostile(path: Path) -> Path:
    make = HOSTILE_FILES[path.name][0]
    if make is None:
        os.mkfifo(path)
    else:
        path.write_bytes(make())
    return path


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_decode_images_refuses_hostile_files_naming_them(tmp_path, name):
    path = _hostile(tmp_path / name)
    out = np.full((1, 3, 32, 32), 7, np.uint8)
    ((i, message),) = decode_images([path], out, 1)
    assert i == 0 and message.startswith(f"{path}: ") and (out == 0).all(), message
    assert re.search(HOSTILE_FILES[name][1], message), message


def test_decode_images_refuses_a_read_only_out(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    out = np.zeros((1, 3, 4, 4), np.uint8)
    out.flags.writeable = False
    with pytest.raises(DataFormatError, match="out cannot be written .*not writeable"):
        decode_images([tmp_path / "a.png"], out)


def test_bad_images_are_errors_naming_the_file_or_skipped_with_a_warning(tmp_path):
    root = _color_folder(tmp_path / "data", fmt="jpg")
    good = (root / "red" / "1.jpg").read_bytes()
    (root / "red" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "blue" / "notes.png").write_text("this is text, not a picture")
    with pytest.raises(DataFormatError) as e:
        load_folder(root, image_size=8)
    message = str(e.value)
    assert "2 of 14 files cannot be read" in message and "--skip-bad-images" in message
    assert str(root / "red" / "truncated.jpg") in message and str(root / "blue" / "notes.png") in message
    with pytest.warns(SkippedImagesWarning) as w:
        d = load_folder(root, image_size=8, skip_bad_images=True)
    assert len(d) == 12 and "truncated.jpg" in str(w[0].message) and "notes.png" in str(w[0].message)
    with pytest.warns(SkippedImagesWarning, match="truncated.jpg"):  # the reused cache warns again
        load_folder(root, image_size=8, skip_bad_images=True)
    with pytest.raises(DataFormatError, match="built with --skip-bad-images"):
        load_folder(root, image_size=8)


def test_folder_layout_errors(tmp_path):
    root = _color_folder(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty: an empty class folder"):
        load_folder(root)
    (root / "empty").rmdir()
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "cat" / "a.png")
    with pytest.raises(DataFormatError, match=r"one class folder only \('cat'\)"):
        load_folder(one)
    with pytest.raises(DataFormatError, match="no class folders"):
        load_folder(one / "cat")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_folder(tmp_path / "nowhere")


def test_tiny_images_are_upscaled_and_odd_names_are_read(tmp_path):
    root = _color_folder(tmp_path / "data")
    Image.new("RGB", (1, 1), (7, 8, 9)).save(root / "red" / "dot.png")  # documented: resized up like any other
    raw_name = os.fsencode(root / "blue") + b"/caf\xe9.png"  # Latin-1, not UTF-8: read by its bytes
    Image.new("RGB", (5, 5), (1, 2, 250)).save(raw_name.decode("utf-8", "surrogateescape"))
    d = load_folder(root, image_size=8)
    assert len(d) == 14
    dot = d.images[d.labels == 2][-1]  # b"dot.png" sorts after b"0.png" .. b"3.png"
    assert (dot[:, 0, 0] == [7, 8, 9]).all() and (dot == dot[:, :1, :1]).all()
    bad_class = os.fsencode(root) + b"/\xffclass"
    os.mkdir(bad_class)
    Image.new("RGB", (4, 4)).save(bad_class.decode("utf-8", "surrogateescape") + "/a.png")
    with pytest.raises(DataFormatError, match=r"class folder named b'\\xffclass' is not valid UTF-8"):
        load_folder(root, image_size=8)
