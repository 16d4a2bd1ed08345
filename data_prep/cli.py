"""``python -m data_prep <source> --out <dir> [options]``: write an nnU-Net raw dataset for semisam.

Sources: ``synthetic``, ``nuclei``, ``nuclei3d``, ``radiomics``, ``mni152``, ``split <raw_dir>``; and
converters for public datasets you download yourself, read from ``--src DIR`` in their standard layout:
``busi``, ``kvasir``, ``isic2018``, ``la2018``, ``acdc``. Every source writes the whole dataset into a
temporary folder, checks it (nnU-Net's verify_dataset_integrity plus semisam's rules; skip with
``--no-verify``) and renames it to ``--out`` at the end. Exit status: 0 on success, 2 on bad input, with
``error: <one line>`` on stderr and nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from semisam.utils.errors import SemisamError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line, like every other semisam error."""

    def error(self, message: str):  # type: ignore[override]
        raise SemisamError(f"{message} (see: python -m {self.prog} --help)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="dataset folder to create, e.g. Dataset501_Nuclei")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip nnU-Net's verify_dataset_integrity (faster)")


def _split_args(p: argparse.ArgumentParser, labeled_default: int | None, ratio_default: float | None = None,
                what: str = "training cases") -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labeled", type=int, default=None,
                   help=f"number of labeled {what} (default {labeled_default})" if labeled_default
                   else f"number of labeled {what}")
    g.add_argument("--ratio", type=float, default=None,
                   help=f"fraction of labeled {what}, in (0, 1]" + (f" (default {ratio_default})" if ratio_default
                                                                    else ""))
    p.add_argument("--seed", type=int, default=0, help="seed of the labeled draw (default 0)")


def _labeled(args: argparse.Namespace, labeled: int | None = None, ratio: float | None = None
             ) -> tuple[int | None, float | None]:
    """``(labeled, ratio)`` from the command line, or the source's default when neither was given."""
    if args.labeled is None and args.ratio is None:
        return labeled, ratio
    return args.labeled, args.ratio


def _src(p: argparse.ArgumentParser, expected: str) -> None:
    p.add_argument("--src", required=True, type=Path, help=f"the downloaded release: {expected}")


def _holdout_args(p: argparse.ArgumentParser, default: float | None = 0.2, default_text: str | None = None) -> None:
    p.add_argument("--test-fraction", type=float, default=default,
                   help=f"fraction of the images held out as test cases, in [0, 1) "
                        f"(default {default_text or default}; a larger fraction keeps a smaller one's test cases)")
    p.add_argument("--test-seed", type=int, default=0, help="seed of the test draw (default 0)")


def _max_size(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument("--max-size", type=int, default=None,
                   help=f"shrink the longest side to at most this many pixels, e.g. 1024 (default: keep; {note})")


def _grid(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers z,y,x such as 2,3,3, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="data_prep", description=__doc__.split("\n\n")[0],
                     epilog="busi, kvasir, isic2018, la2018 and acdc convert public datasets that you download "
                            "yourself: give the folder of the download with --src DIR (see python -m data_prep "
                            "<source> --help for the layout each one expects).")
    sub = parser.add_subparsers(dest="source", required=True, parser_class=_Parser, metavar="<source>")

    p = sub.add_parser("synthetic", help="blobs on a smooth background, deterministic by seed (fast, for tests)")
    _common(p)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--n-classes", type=int, default=1, help="foreground classes (1 = binary)")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--labeled", type=int, default=2, help="number of labeled training cases (default 2)")
    p.add_argument("--size", type=int, default=64, help="side length in pixels/voxels (default 64)")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--contrast", type=float, default=1.0)
    p.add_argument("--shape-variability", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset-id", type=int, default=900)
    p.add_argument("--name", default="Synthetic")

    p = sub.add_parser("nuclei", help="DSB 2018 nuclei tiles from the stardist wheel (real 2D, binary)")
    _common(p)
    p.add_argument("--tile", type=int, default=64,
                   help="tile side in pixels (default 64: 64 tiles; 32 gives 256 tiles of 32x32)")
    _split_args(p, 4)
    p.add_argument("--n-test", type=int, default=16,
                   help="number of held-out test tiles (default 16), up to all tiles but one; more test tiles "
                        "make a benchmark's score steadier, e.g. --tile 32 --n-test 128")
    p.add_argument("--test-seed", type=int, default=0, help="seed of the test-tile draw (default 0)")

    p = sub.add_parser("nuclei3d", help="stardist's small 3D nuclei volume (synthetic, binary) cut into blocks")
    _common(p)
    p.add_argument("--grid", type=_grid, default=(2, 3, 3),
                   help="blocks along z,y,x of the 31x61x57 volume (default 2,3,3: 18 blocks of 15x20x19)")
    _split_args(p, 2)
    p.add_argument("--n-test", type=int, default=6, help="number of held-out test blocks (default 6)")
    p.add_argument("--test-seed", type=int, default=0, help="seed of the test-block draw (default 0)")

    from data_prep.radiomics import ALL_CASES, DEFAULT_TEST

    p = sub.add_parser("radiomics", help="the 5 real 3D cases of the pyradiomics 3.0.1 sdist (MRI/CT lesions)")
    _common(p)
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated (default {','.join(ALL_CASES)})")
    p.add_argument("--test", default=",".join(DEFAULT_TEST),
                   help=f"comma-separated test cases, may be empty (default {','.join(DEFAULT_TEST)})")
    _split_args(p, 1)

    p = sub.add_parser("mni152", help="MNI152 2009a T1 template slices from the nilearn wheel (real 2D MRI, GM/WM)")
    _common(p)
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                   help="slice axis: 0 sagittal, 1 coronal, 2 axial (default 2)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic resampling in mm, 1 to 8 (default 2)")
    _split_args(p, 4)
    p.add_argument("--test-fraction", type=float, default=0.35,
                   help="fraction of the kept slices held out as test slabs, in [0, 1) (default 0.35)")
    p.add_argument("--n-test-slabs", type=int, default=2,
                   help="number of contiguous test slabs, centred in equal parts of the kept range (default 2)")
    p.add_argument("--gap", type=int, default=2,
                   help="slices dropped on each side of a test slab, never used for training (default 2)")
    p.add_argument("--min-tissue", type=int, default=50,
                   help="keep slices with at least this many grey+white matter pixels at --spacing (default 50)")

    p = sub.add_parser("split", help="choose the labeled subset of a fully labeled nnU-Net raw dataset")
    p.add_argument("raw_dir", type=Path, help="source dataset folder (not modified)")
    _common(p)
    _split_args(p, None)

    from data_prep.busi import CLASSES, DEFAULT_CLASSES

    p = sub.add_parser("busi", help="BUSI breast ultrasound (2D, binary lesion) from --src")
    _src(p, "the folder holding Dataset_BUSI_with_GT/{benign,malignant,normal}/")
    _common(p)
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help=f"comma-separated class folders from {','.join(CLASSES)} (default {','.join(DEFAULT_CLASSES)}; "
                        "normal images have empty masks)")
    _split_args(p, None, 0.1)
    _holdout_args(p)

    p = sub.add_parser("kvasir", help="Kvasir-SEG colonoscopy polyps (2D RGB, binary) from --src")
    _src(p, "the folder holding Kvasir-SEG/images/*.jpg and Kvasir-SEG/masks/*.jpg")
    _common(p)
    _max_size(p, "the images are up to 1920 px wide")
    _split_args(p, None, 0.1)
    _holdout_args(p)

    p = sub.add_parser("isic2018", help="ISIC 2018 task 1 skin lesions (2D RGB, binary) from --src")
    _src(p, "the folder holding ISIC2018_Task1-2_Training_Input/ and ISIC2018_Task1_Training_GroundTruth/ "
            "(and optionally the Validation / Test input and ground-truth folders, then used as test cases)")
    _common(p)
    _max_size(p, "the images are several thousand pixels wide")
    _split_args(p, None, 0.1)
    _holdout_args(p, None, "the official Validation / Test folders when present, else 0.2; a value always holds "
                           "out that fraction of the training images")

    from data_prep.la2018 import LAYOUTS

    p = sub.add_parser("la2018", help="Left Atrium 2018 LGE-MRI (3D, binary), h5 or nrrd layout, from --src")
    _src(p, "the folder holding '2018LA_Seg_Training Set/<case>/mri_norm2.h5' (h5 layout; needs h5py) or "
            "'Training Set/<case>/lgemri.nrrd' + laendo.nrrd (original layout), and optionally train.list / test.list")
    _common(p)
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="auto (default): h5 when every case folder has mri_norm2.h5, else nrrd")
    _split_args(p, 8)
    p.add_argument("--n-test", type=int, default=20,
                   help="without train.list / test.list: the last N sorted cases are test cases (default 20)")

    p = sub.add_parser("acdc", help="ACDC cardiac cine-MRI, ED and ES frames (3D, RV / MYO / LV) from --src")
    _src(p, "the folder holding database/training/patientNNN/ and database/testing/patientNNN/ "
            "(Info.cfg, patientNNN_frameXX.nii.gz and _gt.nii.gz)")
    _common(p)
    _split_args(p, 10, what="training patients (both frames of a patient go together)")
    return parser


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def run(args: argparse.Namespace) -> Path:
    """Run the chosen source; returns the written dataset folder."""
    if args.source == "synthetic":
        from data_prep.synthetic import make_synthetic

        return make_synthetic(args.out, dim=args.dim, n_classes=args.n_classes, n_train=args.n_train,
                              n_test=args.n_test, n_labeled=args.labeled, size=args.size, noise=args.noise,
                              contrast=args.contrast, shape_variability=args.shape_variability, seed=args.seed,
                              dataset_id=args.dataset_id, name=args.name, overwrite=args.overwrite,
                              verify=args.verify)
    if args.source == "nuclei":
        from data_prep.nuclei import make_nuclei

        labeled = 4 if args.labeled is None and args.ratio is None else args.labeled
        return make_nuclei(args.out, tile=args.tile, labeled=labeled, ratio=args.ratio, n_test=args.n_test,
                           seed=args.seed, test_seed=args.test_seed, overwrite=args.overwrite, verify=args.verify)
    if args.source == "nuclei3d":
        from data_prep.nuclei3d import make_nuclei3d

        labeled, ratio = _labeled(args, labeled=2)
        return make_nuclei3d(args.out, grid=args.grid, labeled=labeled, ratio=ratio, n_test=args.n_test,
                             seed=args.seed, test_seed=args.test_seed, overwrite=args.overwrite, verify=args.verify)
    if args.source == "radiomics":
        from data_prep.radiomics import make_radiomics

        labeled = 1 if args.labeled is None and args.ratio is None else args.labeled
        return make_radiomics(args.out, cases=_names(args.cases), test=_names(args.test), labeled=labeled,
                              ratio=args.ratio, seed=args.seed, overwrite=args.overwrite, verify=args.verify)
    if args.source == "mni152":
        from data_prep.mni152 import make_mni152

        labeled = 4 if args.labeled is None and args.ratio is None else args.labeled
        return make_mni152(args.out, axis=args.axis, spacing=args.spacing, labeled=labeled, ratio=args.ratio,
                           seed=args.seed, test_fraction=args.test_fraction, n_test_slabs=args.n_test_slabs,
                           gap=args.gap, min_tissue=args.min_tissue, overwrite=args.overwrite, verify=args.verify)
    if args.source == "split":
        from data_prep.split import split_dataset

        if args.labeled is None and args.ratio is None:
            raise SemisamError("split needs --labeled N or --ratio r")
        return split_dataset(args.raw_dir, args.out, labeled=args.labeled, ratio=args.ratio, seed=args.seed,
                             overwrite=args.overwrite, verify=args.verify)
    public = dict(overwrite=args.overwrite, verify=args.verify, seed=args.seed)
    if args.source == "busi":
        from data_prep.busi import make_busi

        labeled, ratio = _labeled(args, ratio=0.1)
        return make_busi(args.src, args.out, classes=_names(args.classes), labeled=labeled, ratio=ratio,
                         test_fraction=args.test_fraction, test_seed=args.test_seed, **public)
    if args.source == "kvasir":
        from data_prep.kvasir import make_kvasir

        labeled, ratio = _labeled(args, ratio=0.1)
        return make_kvasir(args.src, args.out, labeled=labeled, ratio=ratio, test_fraction=args.test_fraction,
                           test_seed=args.test_seed, max_size=args.max_size, **public)
    if args.source == "isic2018":
        from data_prep.isic2018 import make_isic2018

        labeled, ratio = _labeled(args, ratio=0.1)
        return make_isic2018(args.src, args.out, labeled=labeled, ratio=ratio, test_fraction=args.test_fraction,
                             test_seed=args.test_seed, max_size=args.max_size, **public)
    if args.source == "la2018":
        from data_prep.la2018 import make_la2018

        labeled, ratio = _labeled(args, labeled=8)
        return make_la2018(args.src, args.out, layout=args.layout, n_test=args.n_test, labeled=labeled, ratio=ratio,
                           **public)
    if args.source == "acdc":
        from data_prep.acdc import make_acdc

        labeled, ratio = _labeled(args, labeled=10)
        return make_acdc(args.src, args.out, labeled=labeled, ratio=ratio, **public)
    raise AssertionError(args.source)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
        out = run(args)
    except SemisamError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    from semisam.data import RawDataset

    ds = RawDataset.open(out)
    print(f"wrote {out}: {len(ds.labeled_cases())} labeled, {len(ds.unlabeled_cases())} unlabeled, "
          f"{len(ds.test_cases())} test cases")
    return 0
