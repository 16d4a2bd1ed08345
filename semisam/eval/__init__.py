"""Evaluation: Dice / HD95 per case and class (monai.metrics), JSON and markdown reports."""
from semisam.eval.metrics import (
    case_metrics,
    class_metrics,
    evaluate_arrays,
    evaluate_segmentations,
    labels_from_dataset_json,
    PooledDice,
    pooled_dice,
    summarize,
)
from semisam.eval.report import evaluate_folders, markdown_table, write_report

__all__ = ["case_metrics", "class_metrics", "evaluate_arrays", "evaluate_segmentations",
           "labels_from_dataset_json", "markdown_table", "PooledDice", "pooled_dice", "summarize", "write_report", "evaluate_folders"]
