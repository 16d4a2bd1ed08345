"""Evaluation reports: ``metrics.json`` (everything) and ``metrics.md`` (a per-class table), written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from semisam.utils.io import atomic_write_path, write_json_atomic


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(metrics: dict, title: str | None = None) -> str:
    """A markdown table of a metrics dict from :mod:`semisam.eval.metrics`: one row per class and a
    mean-over-classes row with mean Dice and mean HD95 (each with cases where defined / all), pooled Dice,
    cases. Undefined values (``None``) are shown as "–"."""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| class | label | cases | mean Dice | Dice defined | mean HD95 | HD95 defined | pooled Dice |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in metrics["classes"].items():
        n_dice = c.get("n_dice", c["n_cases"])
        lines.append(f"| {name} | {c['label']} | {c['n_cases']} | {_fmt(c['mean_dice'], 4)} | {n_dice}/{c['n_cases']} | "
                     f"{_fmt(c['mean_hd95'], 2)} | {c['n_hd95']}/{c['n_cases']} | {_fmt(c['pooled_dice'], 4)} |")
    if len(metrics["classes"]) > 1:
        lines.append(f"| **mean over classes** | | {metrics['n_cases']} | {_fmt(metrics['mean_dice'], 4)} | | "
                     f"{_fmt(metrics['mean_hd95'], 2)} | | {_fmt(metrics['pooled_dice'], 4)} |")
    if metrics.get("ignore_label") is not None:
        lines += ["", f"Pixels labelled {metrics['ignore_label']} (ignore) in the ground truth are excluded."]
    lines += ["", "A case where prediction and truth are both empty for a class has no Dice and no HD95 and is left "
              "out of that class's means; HD95 is also undefined (left out) when exactly one is empty. HD95 in the "
              "images' physical units. The mean over classes averages the classes with a defined mean."]
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, out_dir: str | os.PathLike, title: str | None = None,
                 stem: str = "metrics") -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.md`` atomically.

    Returns:
        ``(json_path, markdown_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(out_dir / f"{stem}.json", metrics)
    md_path = out_dir / f"{stem}.md"
    with atomic_write_path(md_path) as tmp:
        tmp.write_text(markdown_table(metrics, title))
    return json_path, md_path


def evaluate_folders(pred_dir: Path, gt_dir: Path, dataset_json: Path, out_dir: Path) -> dict:
    """``semisam evaluate``: every ``<case><ext>`` of ``gt_dir`` against the same name in ``pred_dir``.

    Writes ``metrics.json`` and ``metrics.md`` into ``out_dir`` and prints the table.

    Raises:
        SemisamError: a folder or dataset.json is missing, no ground truth files, a prediction is missing.
    """
    import json

    from semisam.eval.metrics import evaluate_segmentations, labels_from_dataset_json
    from semisam.utils.errors import SemisamError

    for p, what in ((pred_dir, "--pred"), (gt_dir, "--gt")):
        if not Path(p).is_dir():
            raise SemisamError(f"{what} folder {p} does not exist")
    if not Path(dataset_json).is_file():
        raise SemisamError(f"--dataset-json {dataset_json} does not exist")
    dj = json.loads(Path(dataset_json).read_text())
    labels, ignore = labels_from_dataset_json(dj)
    ending = dj["file_ending"]
    gts = sorted(Path(gt_dir).glob(f"*{ending}"))
    if not gts:
        raise SemisamError(f"no ground truth files ending in {ending} in {gt_dir}")
    pairs = [(g.name[: -len(ending)], Path(pred_dir) / g.name, g) for g in gts]
    metrics = evaluate_segmentations(pairs, labels, ignore, file_ending=ending)
    _, md = write_report(metrics, out_dir, title=f"{pred_dir} vs {gt_dir}")
    print(md.read_text(), end="")
    return metrics
