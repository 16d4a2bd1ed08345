"""Reading, writing and checking nnU-Net raw datasets in semisam's layout (see docs/architecture.md).

``DatasetNNN_Name/``: ``imagesTr/`` (every training case, labeled and unlabeled), ``labelsTr/`` (labeled
cases only), ``imagesTs/`` + ``labelsTs/`` (test cases), ``labelsHidden/`` (ground truth of unlabeled cases,
read by evaluation only), ``dataset.json`` (nnU-Net's, with ``"ignore": max_label + 1`` and an explicit
``"dataset"`` case list naming the labeled cases only, so stock nnU-Net plans and trains on them alone) and
``semisam_split.json``.

Images and labels are read and written through nnU-Net's own reader/writers, so what semisam reads is what
nnU-Net reads. Arrays are ``(C, Z, Y, X)`` for images and ``(Z, Y, X)`` for label maps; 2D cases have Z == 1.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from semisam.data.cases import LabeledCase, UnlabeledCase
from semisam.data.split import SPLIT_FILE, Split, load_split, save_split
from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_dir, atomic_write_path, quiet_finalizers, write_failure

#: File endings read by nnU-Net's NaturalImage2DIO (2D only) and SimpleITKIO (2D or 3D).
NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif")
SITK_ENDINGS = (".nii.gz", ".nrrd", ".mha")
HIDDEN_DIR = "labelsHidden"
#: training images tried, in order, to find nnU-Net's reader for a dataset
READER_EXAMPLES = 5
#: at most this many cases are read at a time by :func:`check_case_files`
CHECK_THREADS = 4
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------- reading
def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SemisamError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise SemisamError(f"{path} must hold a JSON object")
    return obj


def _channel_files(folder: Path, file_ending: str) -> dict[str, tuple[Path, ...]]:
    """Map case id -> its channel files (sorted by channel index) for ``<case>_XXXX<ending>`` in ``folder``."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    found: dict[str, list[tuple[int, Path]]] = {}
    if folder.is_dir():
        for f in folder.iterdir():
            m = pattern.match(f.name)
            if m and f.is_file():
                found.setdefault(m.group(1), []).append((int(m.group(2)), f))
    return {k: tuple(p for _, p in sorted(v)) for k, v in sorted(found.items())}


def _label_ids(folder: Path, file_ending: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {f.name[: -len(file_ending)] for f in folder.iterdir() if f.name.endswith(file_ending) and f.is_file()}


def parse_labels(labels: Mapping[str, Any], where: str = "labels") -> tuple[dict[str, int], int | None]:
    """Validate nnU-Net ``labels`` (name -> int) and split off the ignore label.

    Returns:
        ``(labels without "ignore", ignore value or None)``.

    Raises:
        SemisamError: not a dict of ints, no background 0, values not consecutive, region labels,
            or an ignore label that is not the highest value.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise SemisamError(f"{where} must be a non-empty mapping of label name to integer value")
    plain: dict[str, int] = {}
    ignore = None
    for k, v in labels.items():
        if isinstance(v, (list, tuple)) or isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise SemisamError(f"{where}: label '{k}' must be one integer (region-based labels are not supported)")
        if k == "ignore":
            ignore = int(v)
        else:
            plain[str(k)] = int(v)
    values = sorted(plain.values())
    if values != list(range(len(values))):
        raise SemisamError(f"{where}: label values must be 0 (background), 1, 2, ... without gaps; got {values}")
    if ignore is not None and ignore != len(values):
        raise SemisamError(f"{where}: the ignore label must be the highest label ({len(values)}), got {ignore}")
    return plain, ignore


class RawDataset:
    """A read view of an nnU-Net raw dataset in semisam's layout.

    Without ``semisam_split.json``: the cases of dataset.json's ``"dataset"`` list (or, when there is none,
    every ``imagesTr`` case with a ``labelsTr`` label) are labeled, the other ``imagesTr`` cases are
    unlabeled, and ``imagesTs`` cases with a ``labelsTs`` label are the test cases.
    """

    def __init__(self, root: Path, dataset_json: dict, split: Split | None, example_file: Path | None = None):
        self.root = Path(root)
        self.dataset_json = dataset_json
        self.split = split
        self._labels, self._ignore = parse_labels(dataset_json.get("labels"), f"{self.root / 'dataset.json'} labels")
        self._rw = None
        self._example = example_file  # picks nnU-Net's reader when root is not a raw dataset folder

    @classmethod
    def open(cls, raw_dir: str | os.PathLike) -> "RawDataset":
        """Open ``raw_dir``.

        Raises:
            SemisamError: the folder or its dataset.json is missing or malformed, or the split file is bad.
        """
        root = Path(raw_dir)
        if not root.is_dir():
            raise SemisamError(f"dataset folder {root} does not exist")
        dj_path = root / "dataset.json"
        if not dj_path.is_file():
            raise SemisamError(f"{root} has no dataset.json; it is not an nnU-Net raw dataset")
        dj = _load_json(dj_path)
        missing = [k for k in ("labels", "channel_names", "file_ending") if k not in dj]
        if missing:
            raise SemisamError(f"{dj_path} lacks required key(s) {missing}")
        if not isinstance(dj["channel_names"], dict) or not dj["channel_names"]:
            raise SemisamError(f"{dj_path}: 'channel_names' must be a non-empty mapping")
        split = load_split(root / SPLIT_FILE) if (root / SPLIT_FILE).is_file() else None
        return cls(root, dj, split)

    # ---- metadata
    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value, background included, ``"ignore"`` excluded."""
        return dict(self._labels)

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background (0) and ignore, ascending."""
        return sorted(v for v in self._labels.values() if v != 0)

    @property
    def ignore_label(self) -> int | None:
        return self._ignore

    @property
    def pseudo_ignore_label(self) -> int:
        """The value pseudo-labels mark untrusted pixels with: the dataset's ignore label, or one past its labels."""
        return self._ignore if self._ignore is not None else max(self._labels.values()) + 1

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json["file_ending"])

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def name(self) -> str:
        return str(self.dataset_json.get("name", self.root.name))

    # ---- cases
    def _train_images(self) -> dict[str, tuple[Path, ...]]:
        return _channel_files(self.root / "imagesTr", self.file_ending)

    def _listed_cases(self) -> dict[str, LabeledCase] | None:
        """Labeled cases of dataset.json's explicit ``"dataset"`` list, or None when it has none."""
        entries = self.dataset_json.get("dataset")
        if entries is None:
            return None
        if not isinstance(entries, dict):
            raise SemisamError(f"{self.root / 'dataset.json'}: 'dataset' must map case id to images and label")
        out = {}
        for cid, e in entries.items():
            try:
                images = tuple(self._resolve(p) for p in e["images"])
                label = self._resolve(e["label"])
            except (KeyError, TypeError):
                raise SemisamError(f"{self.root / 'dataset.json'}: entry '{cid}' needs 'images' and 'label'") from None
            out[str(cid)] = LabeledCase(str(cid), images, label)
        return out

    def _resolve(self, p: str) -> Path:
        p = os.path.expandvars(str(p))
        return Path(p) if os.path.isabs(p) else self.root / p

    def labeled_cases(self) -> list[LabeledCase]:
        """The labeled training cases, sorted by id.

        Raises:
            SemisamError: a labeled case has no image or no label file.
        """
        images = self._train_images()
        listed = self._listed_cases()
        if self.split is not None:
            ids = list(self.split.labeled)
        elif listed is not None:
            ids = sorted(listed)
        else:
            ids = sorted(_label_ids(self.root / "labelsTr", self.file_ending) & set(images))
        out = []
        for cid in ids:
            if listed is not None and cid in listed:
                case = listed[cid]
            else:
                if cid not in images:
                    raise SemisamError(f"labeled case '{cid}' has no image in {self.root / 'imagesTr'}")
                case = LabeledCase(cid, images[cid], self.root / "labelsTr" / f"{cid}{self.file_ending}")
            if not case.label_file.is_file():
                raise SemisamError(f"labeled case '{cid}' has no label file {case.label_file}")
            out.append(case)
        return out

    def unlabeled_cases(self) -> list[UnlabeledCase]:
        """The unlabeled training cases (images only), sorted by id."""
        images = self._train_images()
        if self.split is not None:
            ids = list(self.split.unlabeled)
        else:
            labeled = {c.case_id for c in self.labeled_cases()}
            ids = [c for c in images if c not in labeled]
        out = []
        for cid in ids:
            if cid not in images:
                raise SemisamError(f"unlabeled case '{cid}' has no image in {self.root / 'imagesTr'}")
            out.append(UnlabeledCase(cid, images[cid]))
        return out

    def test_cases(self) -> list[LabeledCase]:
        """The held-out test cases with labels in ``labelsTs``, sorted by id."""
        images = _channel_files(self.root / "imagesTs", self.file_ending)
        labels = _label_ids(self.root / "labelsTs", self.file_ending)
        ids = list(self.split.test) if self.split is not None else sorted(set(images) & labels)
        out = []
        for cid in ids:
            label = self.root / "labelsTs" / f"{cid}{self.file_ending}"
            if cid not in images or not label.is_file():
                raise SemisamError(f"test case '{cid}' lacks its image in imagesTs or its label in labelsTs")
            out.append(LabeledCase(cid, images[cid], label))
        return out

    def hidden_label_file(self, case_id: str) -> Path | None:
        """The true label of an unlabeled case, or None. FOR EVALUATION ONLY: training and the teacher
        must never call this (the honesty guarantee of docs/architecture.md)."""
        p = self.root / HIDDEN_DIR / f"{case_id}{self.file_ending}"
        return p if p.is_file() else None

    # ---- I/O through nnU-Net's reader/writer
    @property
    def reader_writer(self):
        """An instance of the nnU-Net reader/writer class for this dataset's files.

        nnU-Net picks the class that can read an example file; a damaged example is skipped for the next
        training image (up to :data:`READER_EXAMPLES`), so that the file check can name the damaged case.

        Raises:
            SemisamError: no reader of the file ending reads any example.
        """
        if self._rw is None:
            from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

            examples: list[Path | None] = [self._example] if self._example is not None else \
                [files[0] for files in list(self._train_images().values())[:READER_EXAMPLES]]
            for example in examples or [None]:
                try:  # nnU-Net prints a traceback for every reader that fails, verbose or not
                    with _quiet(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                        cls = determine_reader_writer_from_dataset_json(
                            self.dataset_json, None if example is None else str(example), verbose=False)
                except RuntimeError:
                    continue
                self._rw = cls()
                break
            else:
                raise SemisamError(f"no nnU-Net reader for {self.file_ending} files can read {examples[0]} "
                                   f"({_damaged(self.file_ending)}); replace the file, or remove the case")
        return self._rw

    def read_image(self, files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
        """Read one case's channel files.

        Returns:
            ``(image (C, Z, Y, X) float32, properties)`` as nnU-Net's reader gives them.
        """
        return self.reader_writer.read_images([str(f) for f in files])

    def read_seg(self, file: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """Read a label map. Returns ``(seg (1, Z, Y, X), properties)``."""
        return self.reader_writer.read_seg(str(file))

    def image_label_pairs(self, cases: Sequence[LabeledCase]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(image (C, Z, Y, X), label (Z, Y, X))`` of labeled cases, as a teacher adapts on them."""
        return [(self.read_image(c.image_files)[0], self.read_seg(c.label_file)[0][0]) for c in cases]

    def write_seg(self, seg: np.ndarray, props: dict, out_file: str | os.PathLike) -> Path:
        """Write a label map ``seg (Z, Y, X)`` (integers) atomically, with the geometry in ``props``
        (the properties returned by :meth:`read_image` for the same case).

        The file is read back under its temporary name before it takes ``out_file``'s: ITK's NIfTI writer
        ignores failed writes (a full disk, a file-size limit) and leaves a short file behind without an error.

        Raises:
            SemisamError: the file cannot be written or does not read back as written (one line: what failed,
                and what to do); nothing is left at ``out_file`` or under a temporary name.
        """
        seg = np.asarray(seg)
        if seg.ndim != 3:
            raise ValueError(f"write_seg expects a (Z, Y, X) label map, got shape {seg.shape}")
        out_file = Path(out_file)
        failure = None
        with quiet_finalizers():  # a writer that failed may fail again when finalised
            try:
                with atomic_write_path(out_file) as tmp:
                    with _quiet():
                        self.reader_writer.write_seg(seg, str(tmp), props)
                    _read_back(self.reader_writer, tmp, seg)
            except OSError as e:  # ENOSPC, EDQUOT, EFBIG (a file-size limit), EACCES, ...
                failure = (e.strerror or str(e) or type(e).__name__, e.errno)
            except RuntimeError as e:  # SimpleITK's writer raises RuntimeError for every failure
                if "SimpleITK" not in str(e):
                    raise
                failure = (_error_detail(e), None)
            except _IncompleteWrite as e:
                failure = (str(e), errno.ENOSPC)
            if failure is not None:
                gc.collect()
        if failure is not None:  # raised out here: no chained exception keeps the writer's frames alive
            raise SemisamError(write_failure(out_file, *failure))
        return out_file


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


class _IncompleteWrite(Exception):
    """A label file that does not read back as what was written."""


def _read_back(reader_writer, file: Path, seg: np.ndarray) -> None:
    try:
        with _quiet():
            back, _ = reader_writer.read_seg(str(file))
    except Exception:  # noqa: BLE001 - any reader failure means the file is not what was written
        raise _IncompleteWrite("the file written cannot be read back (disk full?)") from None
    if tuple(back.shape[1:]) != tuple(seg.shape) or not np.array_equal(back[0], seg):
        raise _IncompleteWrite("the file written does not read back as written (disk full?)")


def _error_detail(e: BaseException) -> str:
    """The informative line of a reader/writer error (SimpleITK's last line: ``sitk::ERROR: ...``)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def _damaged(file_ending: str) -> str:
    return f"damaged, truncated or not a {file_ending} file"


# --------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class Geometry:
    """Voxel geometry written with a SimpleITK file: spacing ``(z, y, x)``, and in SimpleITK's own order
    the origin ``(x, y, z)`` and direction (row-major 3x3). Natural 2D images (PNG) carry none."""

    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_xyz: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CaseData:
    """One case for :func:`write_raw_dataset`.

    ``image`` is an array ``(C, Z, Y, X)`` or a tuple of existing channel files (copied verbatim, or linked:
    see :func:`write_raw_dataset`'s ``link_files``); ``label`` is an integer array ``(Z, Y, X)``, an existing
    label file (the same), or None (no ground truth).
    """

    case_id: str
    image: np.ndarray | tuple[Path, ...]
    label: np.ndarray | Path | None = None
    geometry: Geometry | None = None


def _image_dtype_for_natural(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind in "ui" or (np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
    raise SemisamError(f"{what}: 2D natural images need integer intensities in [0, 65535]; use .nii.gz for other data")


def write_array(arr_zyx: np.ndarray, path: Path, geometry: Geometry | None, *, seg: bool) -> None:
    """Write one channel or label map ``(Z, Y, X)`` to ``path`` in the format its ending names.

    PNG/BMP/TIF need Z == 1 (nnU-Net's NaturalImage2DIO); SimpleITK endings are written 3D with
    ``geometry``. Labels are written as uint8 (uint16 above 254 classes); images keep integer dtypes and
    are otherwise float32.
    """
    arr_zyx = np.asarray(arr_zyx)
    name = path.name.lower()
    if seg:
        arr_zyx = arr_zyx.astype(np.uint8 if arr_zyx.max(initial=0) < 255 else np.uint16)
    if name.endswith(NATURAL_2D_ENDINGS):
        if arr_zyx.shape[0] != 1:
            raise SemisamError(f"{path.name}: {path.suffix} holds 2D images only, got {arr_zyx.shape[0]} slices")
        plane = arr_zyx[0] if seg else _image_dtype_for_natural(arr_zyx[0], path.name)
        if name.endswith(".tif"):
            import tifffile

            tifffile.imwrite(path, plane)
        else:
            from skimage import io

            io.imsave(str(path), plane, check_contrast=False)
        return
    if not name.endswith(SITK_ENDINGS):
        raise SemisamError(f"unsupported file ending for {path.name}; use one of {NATURAL_2D_ENDINGS + SITK_ENDINGS}")
    import SimpleITK as sitk

    if not seg and arr_zyx.dtype.kind not in "ui":
        arr_zyx = arr_zyx.astype(np.float32)
    img = sitk.GetImageFromArray(arr_zyx)
    g = geometry or Geometry()
    img.SetSpacing([float(s) for s in g.spacing_zyx[::-1]])
    if g.origin_xyz is not None:
        img.SetOrigin([float(o) for o in g.origin_xyz])
    if g.direction is not None:
        img.SetDirection([float(d) for d in g.direction])
    sitk.WriteImage(img, str(path), True)


def _reader_for(file_ending: str, example: Path):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    try:
        with _quiet(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            return determine_reader_writer_from_file_ending(file_ending, str(example), verbose=False)()
    except RuntimeError:
        raise SemisamError(f"nnU-Net cannot read {example}") from None


def _numbers(values: Sequence[float]) -> str:
    """``[0, 1, 2.5]``: integral values without a decimal point."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _check_label(label: np.ndarray, spatial_shape: tuple[int, ...], allowed: set[int], what: str) -> None:
    if tuple(label.shape) != tuple(spatial_shape):
        raise SemisamError(f"{what}: image shape {tuple(spatial_shape)} and label shape {tuple(label.shape)} differ; "
                           "the label must be drawn on its image's voxel grid")
    if label.size and not np.all(np.isfinite(label)):
        raise SemisamError(f"{what}: label contains NaN or infinite values; labels hold the integers that "
                           "dataset.json declares")
    values = set(np.unique(label).tolist())
    bad = sorted(v for v in values if v not in allowed or int(v) != v)
    if bad:
        raise SemisamError(f"{what}: label value(s) {_numbers(bad[:8])} are not declared in dataset.json labels "
                           f"(declared: {_numbers(sorted(allowed))}); fix the label, or declare the value in "
                           "dataset.json")


def _check_image_values(image: np.ndarray, what: str) -> None:
    """Refuse NaN/Inf in an image ``(C, Z, Y, X)``: nnU-Net's normalisation and SAM's intensity mapping turn
    them into NaN everywhere."""
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise SemisamError(f"{what}: the image holds {bad} NaN/Inf value(s); replace them (e.g. with the "
                           "background intensity), or remove the case")


def place_file(src: Path, dst: Path, link: bool) -> str:
    """Put the existing file ``src`` at ``dst``: a copy, or with ``link`` a hard link when the filesystem allows
    one (same filesystem), else a symbolic link to ``src``'s absolute path, else a copy.

    Returns:
        How it was placed: ``"hardlink"``, ``"symlink"`` or ``"copy"``.
    """
    if link:
        try:
            os.link(src, dst)  # follows a symlinked src: the link is to the file itself
            return "hardlink"
        except OSError:  # another filesystem (EXDEV), or one without hard links
            pass
        try:
            os.symlink(src.resolve(), dst)
            return "symlink"
        except OSError:  # a filesystem without symbolic links
            pass
    shutil.copyfile(src, dst)
    return "copy"


def _write_case(case: CaseData, image_dir: Path, label_dir: Path | None, file_ending: str, num_channels: int,
                allowed: set[int], natural_2d: bool, link: bool = False) -> None:
    """Write (or copy, or link: :func:`place_file`) one case's images into ``image_dir`` and its label into
    ``label_dir``, validating the channel count, the 2D-ness, the label values and the image/label shapes."""
    cid = case.case_id
    image_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(case.image, np.ndarray):
        img = case.image
        if img.ndim != 4:
            raise SemisamError(f"case '{cid}': image must be (C, Z, Y, X), got shape {img.shape}")
        if img.shape[0] != num_channels:
            raise SemisamError(f"case '{cid}': {img.shape[0]} image channels but dataset.json declares {num_channels}")
        if natural_2d and img.shape[1] != 1:
            raise SemisamError(f"case '{cid}': {file_ending} holds 2D images only (Z == 1), got Z = {img.shape[1]}")
        _check_image_values(img, f"case '{cid}'")
        for c in range(num_channels):
            write_array(img[c], image_dir / f"{cid}_{c:04d}{file_ending}", case.geometry, seg=False)
        spatial = tuple(img.shape[1:])
        reader = None
    else:
        files = tuple(Path(f) for f in case.image)
        if len(files) != num_channels:
            raise SemisamError(f"case '{cid}': {len(files)} image files but dataset.json declares {num_channels} channels")
        for f in files:
            if not f.is_file() or not f.name.endswith(file_ending):
                raise SemisamError(f"case '{cid}': image file {f} is missing or does not end in {file_ending}")
        reader = _reader_for(file_ending, files[0])
        try:
            with _quiet():
                arr, _ = reader.read_images([str(f) for f in files])
        except Exception as e:  # nnU-Net raises bare RuntimeErrors on channel mismatches
            raise SemisamError(f"case '{cid}': cannot read its images ({type(e).__name__}: {e})") from None
        _check_image_values(arr, f"case '{cid}'")
        spatial = tuple(arr.shape[1:])
        for c, f in enumerate(files):
            place_file(f, image_dir / f"{cid}_{c:04d}{file_ending}", link)
    if case.label is None:
        return
    assert label_dir is not None
    label_dir.mkdir(parents=True, exist_ok=True)
    target = label_dir / f"{cid}{file_ending}"
    if isinstance(case.label, np.ndarray):
        _check_label(case.label, spatial, allowed, f"case '{cid}'")
        write_array(case.label, target, case.geometry, seg=True)
    else:
        src = Path(case.label)
        if not src.is_file():
            raise SemisamError(f"case '{cid}': label file {src} does not exist")
        reader = reader or _reader_for(file_ending, src)
        with _quiet():
            seg, _ = reader.read_seg(str(src))
        _check_label(seg[0], spatial, allowed, f"case '{cid}' ({src.name})")
        place_file(src, target, link)


def write_raw_dataset(out_dir: str | os.PathLike, *, name: str, cases: Sequence[CaseData],
                      test_cases: Sequence[CaseData] = (), labels: Mapping[str, int], file_ending: str,
                      channel_names: Mapping[str | int, str], split: Split, overwrite: bool = False,
                      verify: bool = False, description: str | None = None,
                      extra_json: Mapping[str, Any] | None = None, allow_ignore: bool = False,
                      link_files: bool = False) -> Path:
    """Write a complete raw dataset atomically: the one code path every data_prep source uses.

    Everything goes into a temporary sibling folder that is renamed to ``out_dir`` only when complete and
    valid; on any error nothing is left behind (an existing ``out_dir`` is kept unless the write succeeds).

    Args:
        out_dir: the dataset folder to create (conventionally ``DatasetNNN_Name``).
        name: dataset name recorded in dataset.json.
        cases: training cases; labels of ``split.labeled`` go to labelsTr, those of ``split.unlabeled``
            (when known) to labelsHidden.
        test_cases: held-out cases (imagesTs, labelsTs).
        labels: name -> value with background 0, consecutive; ``"ignore"`` (max + 1) is added.
        file_ending: e.g. ``".png"`` (2D, nnU-Net's NaturalImage2DIO) or ``".nii.gz"``.
        channel_names: channel index -> name (nnU-Net uses it to pick the normalisation, e.g. ``"CT"``).
        split: which training cases are labeled; its ids must match ``cases`` / ``test_cases`` exactly.
        overwrite: replace an existing ``out_dir``.
        verify: also run :func:`check_raw_dataset` (nnU-Net's verify_dataset_integrity) before the rename.
        description: free text for dataset.json.
        extra_json: more dataset.json keys.
        allow_ignore: labels may contain the ignore label (``max + 1``): nnU-Net's partial labels, e.g.
            pseudo-labels whose rejected pixels are ignored. Off for source datasets, where that value is
            an undeclared label.
        link_files: cases given as existing files are linked instead of copied (:func:`place_file`: a hard
            link where the filesystem allows, else a symbolic link to the absolute path, else a copy), for
            datasets that live no longer than their sources, such as a loop round's training set: nnU-Net
            reads a link like the file. nnU-Net never writes into a raw dataset, and semisam replaces files
            (atomic rename) rather than writing into them, so a hard-linked file keeps the content it had.

    Returns:
        ``out_dir``.

    Raises:
        SemisamError: bad labels, case ids, split, channel counts, label values not declared, image/label
            shape mismatch, ``out_dir`` exists without ``overwrite``, or the verification fails.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    out_dir = Path(out_dir)
    plain, ignore = parse_labels(labels)
    allowed = set(plain.values())
    if allow_ignore:  # partially labeled cases: semisam's pseudo-labels carry it on rejected pixels
        allowed.add(len(plain))
    natural_2d = file_ending.lower() in NATURAL_2D_ENDINGS
    if not file_ending.lower().endswith(NATURAL_2D_ENDINGS + SITK_ENDINGS):
        raise SemisamError(f"unsupported file ending {file_ending}; use one of {NATURAL_2D_ENDINGS + SITK_ENDINGS}")
    train_ids = [c.case_id for c in cases]
    test_ids = [c.case_id for c in test_cases]
    for cid in train_ids + test_ids:
        if not _CASE_ID.match(cid):
            raise SemisamError(f"case id '{cid}' must be letters, digits, '_', '-', '.' (starting with a letter or digit)")
    if len(set(train_ids + test_ids)) != len(train_ids) + len(test_ids):
        raise SemisamError("case ids must be unique across training and test cases")
    if set(split.training) != set(train_ids) or set(split.test) != set(test_ids):
        raise SemisamError("the split does not list exactly the given training and test cases")
    labeled = set(split.labeled)
    no_label = sorted(c.case_id for c in cases if c.case_id in labeled and c.label is None)
    if no_label:
        raise SemisamError(f"labeled case(s) {no_label[:5]} have no label")
    channel_names = {str(k): str(v) for k, v in channel_names.items()}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for case in cases:
            label_dir = tmp / ("labelsTr" if case.case_id in labeled else HIDDEN_DIR)
            _write_case(case, tmp / "imagesTr", label_dir, file_ending, len(channel_names), allowed, natural_2d,
                        link_files)
        for case in test_cases:
            _write_case(case, tmp / "imagesTs", tmp / "labelsTs", file_ending, len(channel_names), allowed, natural_2d,
                        link_files)
        (tmp / "labelsTr").mkdir(exist_ok=True)
        entries = {cid: {"images": [f"imagesTr/{cid}_{c:04d}{file_ending}" for c in range(len(channel_names))],
                         "label": f"labelsTr/{cid}{file_ending}"} for cid in split.labeled}
        extra = dict(extra_json or {})
        licence = extra.pop("license", extra.pop("licence", "see the source's licence"))
        named = {k: extra.pop(k) for k in ("reference", "release", "overwrite_image_reader_writer",
                                           "regions_class_order") if k in extra}
        extra.update(converted_by=extra.get("converted_by", "semisam data_prep"), dataset=entries)
        generate_dataset_json(str(tmp), dict(channel_names), {**plain, "ignore": len(plain)}, len(split.labeled),
                              file_ending, dataset_name=name, description=description, license=licence,
                              **named, **extra)
        save_split(split, tmp / SPLIT_FILE)
        if verify:
            check_raw_dataset(tmp)
    return out_dir


# --------------------------------------------------------------------------------------------- checking
@contextlib.contextmanager
def _capture_fd_output() -> Iterator[list[str]]:
    """Capture everything written to file descriptors 1 and 2 (also by child processes); yields a list that
    holds the captured lines after the block."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 1)
        os.dup2(buf.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            buf.seek(0)
            lines.extend(buf.read().decode(errors="replace").splitlines())


def _nnunet_verify(root: Path, num_processes: int) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        with _capture_fd_output() as lines:
            verify_dataset_integrity(str(root), num_processes=num_processes)
    except (AssertionError, RuntimeError, FileNotFoundError, KeyError, ValueError) as e:
        detail = next((l.strip() for l in lines if l.strip().lower().startswith("error")), "")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SemisamError(f"{root} fails nnU-Net's verify_dataset_integrity: {first} {detail}".strip()) from None


def check_raw_dataset(raw_dir: str | os.PathLike, num_processes: int = 1, nnunet: bool = True) -> RawDataset:
    """Check a dataset with nnU-Net's ``verify_dataset_integrity`` and semisam's own rules.

    semisam's rules: the split lists exactly the images of imagesTr (training) and imagesTs (test), with
    no case in two groups; dataset.json's ``"dataset"`` and ``numTraining`` name exactly the labeled cases;
    labelsTr holds labels of labeled cases only; labelsHidden holds labels of unlabeled cases only; the
    ignore label is declared; hidden and test labels hold only declared values and match their images' shape.

    Args:
        raw_dir: the dataset folder.
        num_processes: worker processes for nnU-Net's check (it always starts a process pool).
        nnunet: run nnU-Net's check (a few seconds, most of it starting a worker); False checks semisam's
            rules only.

    Returns:
        The opened dataset.

    Raises:
        SemisamError: the first violation, in one line.
    """
    ds = RawDataset.open(raw_dir)
    root = ds.root
    if ds.ignore_label is None:
        raise SemisamError(f"{root / 'dataset.json'} declares no 'ignore' label (semisam needs max label + 1)")
    train_images = ds._train_images()
    labeled = {c.case_id for c in ds.labeled_cases()}
    unlabeled = {c.case_id for c in ds.unlabeled_cases()}
    if ds.split is not None:
        if set(train_images) != labeled | unlabeled:
            extra = sorted(set(train_images) ^ (labeled | unlabeled))
            raise SemisamError(f"{SPLIT_FILE} and imagesTr disagree on training case(s) {extra[:5]}")
        test_images = set(_channel_files(root / "imagesTs", ds.file_ending))
        if set(ds.split.test) != test_images:
            extra = sorted(set(ds.split.test) ^ test_images)
            raise SemisamError(f"{SPLIT_FILE} and imagesTs disagree on test case(s) {extra[:5]}")
    listed = ds.dataset_json.get("dataset")
    if listed is not None and set(listed) != labeled:
        raise SemisamError(f"dataset.json 'dataset' does not list exactly the labeled cases of {SPLIT_FILE}")
    if ds.dataset_json.get("numTraining") != len(labeled):
        raise SemisamError(f"dataset.json numTraining is {ds.dataset_json.get('numTraining')}, "
                           f"but there are {len(labeled)} labeled cases")
    in_tr = _label_ids(root / "labelsTr", ds.file_ending)
    if in_tr - labeled:
        raise SemisamError(f"labelsTr holds label(s) of non-labeled case(s) {sorted(in_tr - labeled)[:5]}")
    hidden = _label_ids(root / HIDDEN_DIR, ds.file_ending)
    if hidden & labeled:
        raise SemisamError(f"{HIDDEN_DIR} holds label(s) of labeled case(s) {sorted(hidden & labeled)[:5]}")
    if hidden - unlabeled:
        raise SemisamError(f"{HIDDEN_DIR} holds label(s) of case(s) {sorted(hidden - unlabeled)[:5]} "
                           "that are not unlabeled training cases")
    if not labeled:
        raise SemisamError(f"{root} has no labeled training case")
    if nnunet:
        _nnunet_verify(root, num_processes)
    allowed = set(ds.labels.values())
    others = [(c.case_id, c.image_files, ds.hidden_label_file(c.case_id)) for c in ds.unlabeled_cases()]
    others += [(c.case_id, c.image_files, c.label_file) for c in ds.test_cases()]
    with _quiet():
        for cid, images, label in others:
            if label is None:
                continue
            img, _ = ds.read_image(images)
            seg, _ = ds.read_seg(label)
            _check_label(seg[0], img.shape[1:], allowed, f"case '{cid}' ({label.parent.name}/{label.name})")
    return ds


def check_case_files(dataset: RawDataset, *, labeled: Sequence[LabeledCase] = (),
                     unlabeled: Sequence[UnlabeledCase] = (), test: Sequence[LabeledCase] = (),
                     hidden: bool = True) -> int:
    """Read every case's files through nnU-Net's reader, as training, prediction and the teacher will, and
    refuse what would fail or mislead later, in one line that names the case and the file:

    - an image or label file that cannot be read (damaged, truncated, not the dataset's format), or channel
      files of one case that differ in shape or geometry;
    - NaN or Inf in an image (nnU-Net's normalisation and SAM's intensity mapping would spread them; note
      that SimpleITK reads NaN/Inf in NIfTI files as 0, so only ``.nrrd`` / ``.mha`` files show them);
    - a constant image (every voxel of every channel one value): an empty or broken file, nothing to learn,
      nothing for the teacher to segment;
    - a label whose shape or spacing differs from its image's, or that holds values dataset.json does not
      declare (the ignore label is allowed in ``labeled`` cases' labels, as nnU-Net allows partial labels;
      not in test or hidden labels).

    Every file is read once, up to :data:`CHECK_THREADS` cases at a time.

    Args:
        dataset: the opened dataset.
        labeled: training and validation cases (``labelsTr``).
        unlabeled: unlabeled cases; with ``hidden``, their hidden labels (read by evaluation during the
            rounds) are checked too.
        test: held-out cases (``labelsTs``).

    Returns:
        The number of files read. Nothing is written.

    Raises:
        SemisamError: the first fault.
    """
    allowed = set(dataset.labels.values())
    with_ignore = allowed | ({dataset.ignore_label} if dataset.ignore_label is not None else set())
    jobs: list[tuple[str, tuple[Path, ...], Path | None, set[int]]] = \
        [(c.case_id, tuple(c.image_files), c.label_file, with_ignore) for c in labeled]
    jobs += [(c.case_id, tuple(c.image_files), dataset.hidden_label_file(c.case_id) if hidden else None, allowed)
             for c in unlabeled]
    jobs += [(c.case_id, tuple(c.image_files), c.label_file, allowed) for c in test]
    reader = dataset.reader_writer

    def check(job: tuple[str, tuple[Path, ...], Path | None, set[int]]) -> int:
        cid, images, label, values = job
        shape, spacing = _check_image_files(dataset, reader, cid, images)
        if label is not None:
            _check_label_file(dataset, reader, cid, label, shape, spacing, values)
        return len(images) + (label is not None)

    # threads: the readers decode in C++ / zlib without the GIL; a few, as each holds one case in memory
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=max(1, min(CHECK_THREADS, cores)))
    try:
        with _capture_fd_output():  # ITK's warnings go to the C stderr; the one error line says what matters
            return sum(pool.map(check, jobs))  # in case order: the first fault raised is the first case's
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _shown(dataset: RawDataset, file: Path) -> str:
    """``imagesTr/x_0000.png`` for a file in the dataset, else the full path."""
    try:
        return str(Path(file).relative_to(dataset.root))
    except ValueError:
        return str(file)


def _unreadable(dataset: RawDataset, cid: str, what: str, file: Path, e: BaseException) -> SemisamError:
    reason = e.strerror if isinstance(e, OSError) and e.errno and e.strerror else _damaged(dataset.file_ending)
    return SemisamError(f"case '{cid}': cannot read {what}{_shown(dataset, file)} ({reason}); replace the file, "
                        "or remove the case from the dataset")


def _check_image_files(dataset: RawDataset, reader, cid: str, files: tuple[Path, ...]) -> tuple[tuple, Any]:
    """Read one case's channel files; return ``(spatial shape, spacing)``."""
    try:
        image, props = reader.read_images([str(f) for f in files])
    except Exception as e:  # noqa: BLE001 - readers raise anything from OSError to bare RuntimeErrors
        for f in files:  # which file? each alone, then the channels together
            try:
                reader.read_images([str(f)])
            except Exception as e1:  # noqa: BLE001
                raise _unreadable(dataset, cid, "", f, e1) from None
        raise SemisamError(f"case '{cid}': its channel files {[_shown(dataset, f) for f in files]} differ in shape "
                           f"or geometry ({_error_detail(e)}); write every channel on one voxel grid") from None
    where = f"case '{cid}' ({_shown(dataset, files[0])}{', ...' if len(files) > 1 else ''})"
    _check_image_values(image, where)
    flat = image.reshape(image.shape[0], -1)
    if flat.size and np.all(flat.min(axis=1) == flat.max(axis=1)):
        raise SemisamError(f"{where}: the image is constant (every voxel {float(flat[0, 0]):g}): an empty or broken "
                           "file with nothing to segment; replace it, or remove the case from the dataset")
    return tuple(image.shape[1:]), props.get("spacing")


def _check_label_file(dataset: RawDataset, reader, cid: str, label: Path, shape: tuple, spacing: Any,
                      allowed: set[int]) -> None:
    try:
        seg, props = reader.read_seg(str(label))
    except Exception as e:  # noqa: BLE001
        raise _unreadable(dataset, cid, "label ", label, e) from None
    where = f"case '{cid}' ({_shown(dataset, label)})"
    _check_label(seg[0], shape, allowed, where)
    seg_spacing = props.get("spacing")
    if spacing is not None and seg_spacing is not None and not np.allclose(seg_spacing, spacing):
        raise SemisamError(f"{where}: image spacing {_numbers(list(spacing))} and label spacing "
                           f"{_numbers(list(seg_spacing))} differ; write the label with its image's geometry "
                           "(resample it onto the image)")
