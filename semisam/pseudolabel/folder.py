"""``semisam pseudolabel``: the teacher pipeline over a folder of any trained nnU-Net's probabilities."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from semisam.data import RawDataset, parse_labels
from semisam.data.probabilities import load_probabilities
from semisam.filters import PseudoLabelStats
from semisam.pseudolabel.pipeline import build_pseudolabeler
from semisam.utils import distributed
from semisam.utils.errors import SemisamError
from semisam.utils.io import write_json_atomic


def pseudolabel_folder(images_dir: Path, probs_dir: Path, out_dir: Path, dataset_json: Path, cfg,
                       adapt_on: Path | None = None) -> Path:
    """``semisam pseudolabel``: pseudo-labels for every ``<case>.npz`` in ``probs_dir``.

    ``images_dir`` holds ``<case>_0000<ext>`` (nnU-Net naming), ``probs_dir`` what
    ``nnUNetv2_predict --save_probabilities`` wrote (``<case>.npz`` + ``<case>.pkl``). Accepted cases get
    ``<out_dir>/<case><ext>`` (ignore label where rejected); ``stats.json`` lists every case. Files are
    written atomically; a rerun skips cases whose label already exists. Under torchrun the cases are sharded
    over the ranks and rank 0 writes ``stats.json`` (the same as one process's).
    """
    from semisam.teacher.cache import merge_cache_stats

    for p, what in ((images_dir, "--images"), (probs_dir, "--probs")):
        if not p.is_dir():
            raise SemisamError(f"{what} folder {p} does not exist")
    if not dataset_json.is_file():
        raise SemisamError(f"--dataset-json {dataset_json} does not exist")
    dj = json.loads(dataset_json.read_text())
    plain, ignore = parse_labels(dj.get("labels", {}))
    ignore = ignore if ignore is not None else max(plain.values()) + 1
    ending = dj.get("file_ending")
    if not ending:
        raise SemisamError(f"{dataset_json} has no file_ending")
    npz = sorted(probs_dir.glob("*.npz"))
    if not npz:
        raise SemisamError(f"no <case>.npz probability files in {probs_dir}; predict with --save_probabilities")
    channel_names = dj.get("channel_names", {"0": ""})
    n_ch = len(channel_names)
    examples = sorted(images_dir.glob(f"*_0000{ending}"))
    if not examples:
        raise SemisamError(f"no images named <case>_0000{ending} in {images_dir}")
    io = RawDataset(images_dir, dj, None, example_file=examples[0])  # reader/writer only: no labels here
    labeler = build_pseudolabeler(cfg, ignore_label=ignore, channel_names=channel_names,
                                  cache_dir=cfg.teacher.cache_dir)

    def adapt() -> None:
        if adapt_on is not None and labeler.adaptable and cfg.teacher.adapt.enabled:
            ds = RawDataset.open(adapt_on)
            labeler.adapt(ds.image_label_pairs(ds.labeled_cases()), sorted(v for v in plain.values() if v), out_dir / "adapted_teacher.pt")

    # under torchrun rank 0 adapts first and the others load its adaptation; each rank labels its share of
    # the cases and rank 0 merges their stats in case order (semisam.utils.distributed)
    distributed.lead(adapt)
    out_dir.mkdir(parents=True, exist_ok=True)

    def share() -> tuple[list, dict]:
        if not distributed.world().main:
            adapt()
        rows, before = [], len(labeler.stats)
        for i, f in tqdm(distributed.shard(list(enumerate(npz))), desc="pseudo-labels", unit="case", file=sys.stderr):
            case = f.name[: -len(".npz")]
            target = out_dir / f"{case}{ending}"
            files = [images_dir / f"{case}_{c:04d}{ending}" for c in range(n_ch)]
            missing = [str(x) for x in files if not x.is_file()]
            if missing:
                raise SemisamError(f"case {case}: image {missing[0]} does not exist")
            image, props = io.read_image(files)
            probs, _ = load_probabilities(f)
            res = labeler(image, probs, case)
            rows.append((i, case, res.stats))
            if res.accepted and not target.exists():
                io.write_seg(res.pseudo, props, target)
        case_stats = labeler.stats.get_buffer()[before:]  # one record per case labelled here, in order
        return [(i, (case, st, cs)) for (i, case, st), cs in zip(rows, case_stats)], labeler.cache_stats()

    parts = distributed.collect(share)
    if parts is None:
        return out_dir
    rows = distributed.ordered([p[0] for p in parts], len(npz))
    stats = {case: case_stats for case, case_stats, _ in rows}
    summary = PseudoLabelStats()
    summary.extend([c for *_, c in rows])
    cache = merge_cache_stats([p[1] for p in parts], labeler.cache_stats())
    write_json_atomic(out_dir / "stats.json", {"cases": stats, "summary": summary.aggregate(), "cache": cache})
    n_acc = sum(1 for s in stats.values() if s.get("accepted"))
    print(f"semisam pseudolabel: {n_acc}/{len(stats)} cases accepted → {out_dir}", file=sys.stderr)
    return out_dir
