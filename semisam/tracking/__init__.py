"""Monitoring and reporting for the semi-supervised loop.

- :class:`Tracker` (``wandb_sink``): ``metrics.json`` (source of truth) + one W&B run per experiment
  (offline by default, online on request, or disabled).
- :func:`plot_rounds` (``plots``): PNG plots of the round records.
- :func:`overlay_gallery` (``gallery``): image / student / SAM / fused overlays, a row per case.
- :func:`write_report` (``report``): ``report.md`` with a row per round and the selected round; its docstring
  defines the round record, the selected round's entry and ``summary.json``.

Typical use by the loop, per round ``r``::

    tracker.log_training_curve(r, trainer.logger.my_fantastic_logging)
    tracker.log_images(r, {"gallery": overlay_gallery(items, ignore_label, rdir / "gallery.png")})
    tracker.log_round(r, record)

and at the end, with the round the loop selected (last, or best validation Dice; never by test Dice)::

    plots = plot_rounds(tracker.records, run_dir / "plots")
    write_report(run_dir, tracker.records, config_yaml, plots, selected=r_sel, selection="last")
    tracker.log_selected(selected_entry(trained_records, r_sel, "last"))   # metrics.json + W&B summary
"""
from semisam.tracking.gallery import overlay_gallery
from semisam.tracking.plots import plot_rounds
from semisam.tracking.report import write_report
from semisam.tracking.wandb_sink import LocalSink, Tracker, load_nnunet_logging, nnunet_curves

__all__ = [
    "LocalSink",
    "Tracker",
    "load_nnunet_logging",
    "nnunet_curves",
    "overlay_gallery",
    "plot_rounds",
    "write_report",
]
