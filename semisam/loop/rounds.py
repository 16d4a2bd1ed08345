"""The rounds of an experiment (see :mod:`semisam.loop.experiment` for the data flow)."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from semisam.config import RunConfig, to_dict, to_yaml
from semisam.data import RawDataset
from semisam.data.raw import CaseData, write_raw_dataset
from semisam.data.split import Split
from semisam.loop.evaluation import PseudoQuality, evaluate_students_cases
from semisam.loop.cases import Cases
from semisam.loop.preflight import NO_UNLABELED
from semisam.loop.state import RunState, round0_steps
from semisam.utils import distributed, progress
from semisam.utils.io import remove_tree, write_json_atomic


def say(message: str) -> None:
    """Progress for the user (:func:`semisam.utils.progress.say`), from rank 0 only under torchrun."""
    if distributed.world().main:
        progress.say(message)


class Experiment:
    """A run folder's rounds. Each public step is recorded in the manifest when complete."""

    def __init__(self, cfg: RunConfig, state: RunState, dataset: RawDataset, cases: Cases):
        self.cfg = cfg
        self.state = state
        self.run_dir = state.run_dir
        self.dataset = dataset
        self.cases = cases
        if not self.cases.test:
            say("the dataset has no test cases (imagesTs/labelsTs): rounds are reported without test Dice")
        self.labels = dict(self.dataset.labels)
        self.foreground = {k: v for k, v in self.labels.items() if v != 0}
        self.ignore_label = self.dataset.pseudo_ignore_label
        self._labeler = None
        self._tracker = None
        self.world = distributed.world()  # under torchrun: rank 0 runs the steps, every rank its teacher share

    # ------------------------------------------------------------------------------------------ helpers
    def round_dir(self, r: int) -> Path:
        return self.run_dir / f"round_{r:02d}"

    def student(self, r: int, work_dir: Path | None = None):
        """The nnU-Net student of round ``r`` (its work folder ``round_<r>/nnunet``, or ``work_dir``)."""
        from semisam.student.driver import NnUNetStudent

        return NnUNetStudent(work_dir or self.round_dir(r) / "nnunet", device=self.cfg.device,
                             n_proc_da=self.cfg.student.num_processes_da, num_gpus=self.cfg.student.num_gpus)

    @property
    def online(self) -> bool:
        """Whether round 0 trains online (``online.*``: unlabeled batches inside nnU-Net's trainer)."""
        from semisam.online.settings import OnlineSettings

        return OnlineSettings.from_config(self.cfg).enabled

    def finetunes(self, r: int) -> bool:
        """Whether round ``r`` ends with a fine-tune on the labeled cases only (``loop.final_finetune_epochs``)."""
        return r > 0 and self.cfg.loop.final_finetune_epochs > 0

    def round_model(self, r: int) -> Path:
        """The model folder of round ``r``'s student: what the round evaluates, predicts the unlabeled cases
        with and (``student.init=finetune``) the next round starts from — the labeled-only fine-tune's when
        the round has one, else the round's training's."""
        step = f"r{r}/finetune" if self.finetunes(r) else f"r{r}/train"
        return Path(self.state.result(step)["model"])

    def checkpoint(self, model: Path) -> Path:
        """The final checkpoint in a model folder, for the recipe's fold."""
        return model / f"fold_{self.cfg.student.fold}" / "checkpoint_final.pth"

    @property
    def tracker(self):
        if self._tracker is None:
            from semisam.tracking.wandb_sink import Tracker

            lg = self.cfg.logger
            self._tracker = Tracker.create(mode=lg.wandb, project=lg.project, run_dir=self.run_dir,
                                           config=to_dict(self.cfg), name=lg.name or self.cfg.experiment,
                                           tags=list(lg.tags), entity=lg.entity, group=lg.group, dir=lg.dir)
        return self._tracker

    @property
    def labeler(self):
        """The teacher pipeline, built once per process (SAM loaded once)."""
        if self._labeler is None:
            from semisam.pseudolabel.pipeline import build_pseudolabeler

            cache_dir = self.cfg.teacher.cache_dir or str(self.run_dir / "cache" / "embeddings")
            self._labeler = build_pseudolabeler(self.cfg, ignore_label=self.ignore_label, cache_dir=cache_dir,
                                                channel_names=self.dataset.dataset_json["channel_names"])
        return self._labeler

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        say(f"{self.dataset.name}: {len(self.cases.train)} labeled for training, {len(self.cases.val)} for "
            f"validation, {len(self.cases.unlabeled)} unlabeled, {len(self.cases.test)} test")
        max_rounds = cfg.loop.max_rounds
        if max_rounds > 0 and not self.cases.unlabeled:
            say(NO_UNLABELED)
            max_rounds = 0
        if cfg.loop.init_from:  # checked by run_experiment before anything was written
            for step, entry in round0_steps(Path(cfg.loop.init_from), cfg).items():
                state.adopt(step, entry["result"], entry.get("seconds"), cfg.loop.init_from)
        try:
            accepted: dict[str, str] = {}  # case id -> pseudo-label file of the latest round that accepted it
            stop_reason = f"reached loop.max_rounds={max_rounds}"
            for r in range(max_rounds + 1):
                if r > 0:
                    if r == 1 and cfg.loop.calibrate:
                        from semisam.loop.calibrate import apply_choice, calibrate

                        apply_choice(self.labeler, state.run("r1/calibrate", lambda: calibrate(self)),
                                     cfg.dataset.raw_dir)
                    teach = state.run(f"r{r}/teacher", lambda: self.teacher_round(r, accepted), collective=True)
                    new = [c for c in teach["accepted"] if c not in accepted]
                    accepted.update({c: teach["files"][c] for c in teach["accepted"]})
                    if not teach["accepted"]:
                        stop_reason, advice = nothing_accepted(r, teach)
                        say(f"{stop_reason}; keeping student {r - 1} ({advice})")
                        self.log_round(r, teach, trained=False)
                        break
                    if not new and cfg.loop.stop_when_no_new:
                        stop_reason = f"round {r}: no new case accepted (SamDSK's stopping criterion)"
                        say(stop_reason)
                        self.log_round(r, teach, trained=False)
                        break
                else:
                    teach = None
                state.run(f"r{r}/dataset", lambda: self.build_round_dataset(r, accepted))
                state.run(f"r{r}/preprocess", lambda: self.preprocess(r))
                state.run(f"r{r}/train", lambda: self.train(r))
                if self.finetunes(r):
                    state.run(f"r{r}/finetune", lambda: self.finetune(r))
                state.run(f"r{r}/evaluate", lambda: self.evaluate(r))
                if r < max_rounds:
                    state.run(f"r{r}/predict_unlabeled", lambda: self.predict_unlabeled(r))
                self.log_round(r, teach, trained=True)
            return distributed.lead(lambda: self.finish(stop_reason))
        except BaseException:
            if self._tracker is not None:
                self._tracker.finish(exit_code=1)
            raise

    # ------------------------------------------------------------------------------------------ steps
    def build_round_dataset(self, r: int, accepted: dict[str, str]) -> dict:
        """labeled (minus validation) ∪ accepted pseudo-labeled cases, each once, as an nnU-Net raw dataset.

        Its images and labels are links to the dataset's and the pseudo-label folders' files, not copies
        (hard links where the filesystem allows, else symbolic links, else copies: ``write_raw_dataset``'s
        ``link_files``).

        The result's ``labeled_share`` is the share of training samples the student draws from the labeled
        cases (``loop.labeled_weight``, through nnU-Net's sampler); None: nnU-Net's uniform sampling (no
        pseudo-labeled case, or ``labeled_weight`` 0)."""
        share = self.cfg.loop.labeled_weight if accepted and self.cfg.loop.labeled_weight > 0 else None
        cases = self.case_data(self.cases.train)
        by_id = {c.case_id: c for c in self.cases.unlabeled}
        cases += [CaseData(cid, image=tuple(by_id[cid].image_files), label=Path(f)) for cid, f in sorted(accepted.items())]
        unlabeled: tuple[str, ...] = ()
        if r == 0 and self.online:  # images only: the online trainer takes imagesTr/ cases without a label
            cases += [CaseData(c.case_id, image=tuple(c.image_files), label=None) for c in self.cases.unlabeled]
            unlabeled = tuple(c.case_id for c in self.cases.unlabeled)
        out = self.write_training_dataset(
            self.round_dir(r) / "dataset", cases, unlabeled,
            f"semisam round {r}: {len(self.cases.train)} labeled + {len(accepted)} pseudo-labeled")
        result = {"raw_dir": str(out), "n_labeled": len(self.cases.train), "n_pseudo": len(accepted),
                  "labeled_share": share}
        if unlabeled:
            result["n_unlabeled_images"] = len(unlabeled)
        return result

    @staticmethod
    def case_data(cases) -> list[CaseData]:
        """Labeled cases (images and label) as :func:`~semisam.data.raw.write_raw_dataset` takes them."""
        return [CaseData(c.case_id, image=tuple(c.image_files), label=c.label_file) for c in cases]

    def write_training_dataset(self, folder: Path, cases: list[CaseData], unlabeled: tuple[str, ...],
                               description: str) -> Path:
        """``cases`` as an nnU-Net raw dataset ``folder/DatasetNNN_Name`` (the run's dataset id and name; replaced
        if there), its files linked to the sources; the cases with a label are its labeled cases, ``unlabeled``
        its images without one."""
        from semisam.student.env import dataset_folder_name

        name = re.sub(r"^Dataset\d{3}_", "", self.dataset.name) or "Semisam"
        out = folder / dataset_folder_name(self.cfg.dataset.dataset_id, name)
        remove_tree(out)
        split = Split(labeled=tuple(c.case_id for c in cases if c.label is not None), unlabeled=unlabeled, test=(),
                      seed=self.cfg.seed, ratio=None)
        write_raw_dataset(out, name=self.dataset.name, cases=cases, labels=self.labels,
                          file_ending=self.dataset.file_ending,
                          channel_names=self.dataset.dataset_json["channel_names"], split=split,
                          description=description, allow_ignore=True, link_files=True)
        return out

    def preprocess(self, r: int) -> dict:
        student = self.student(r)
        raw_dir = Path(self.state.result(f"r{r}/dataset")["raw_dir"])
        remove_tree(student.work_dir)
        ds_id = student.add_raw_dataset(raw_dir, self.cfg.dataset.dataset_id)
        conf = self.cfg.student.configuration
        say(f"round {r}: nnU-Net planning and preprocessing ({conf})")
        if r == 0:
            plans = student.plan_and_preprocess(ds_id, configurations=(conf,),
                                                num_processes=self.cfg.student.num_processes)
        else:  # round 0's plans: every round's student has the same architecture and preprocessing
            plans = student.preprocess_with_plans(ds_id, self.state.result("r0/preprocess")["plans"],
                                                  configurations=(conf,), num_processes=self.cfg.student.num_processes)
        return {"plans": str(plans), "dataset_id": ds_id}

    def train(self, r: int) -> dict:
        """Train student ``r`` with the run's ``seed`` — the same seed in every round, on purpose: a round's
        student then differs from the previous one only by its training set (and, with ``student.init=finetune``,
        its starting weights), not by another draw of initial weights and augmentation (common random numbers
        across rounds). See docs/architecture.md, "Seeds and determinism".

        With ``student.init=finetune``, rounds r > 0 start from round r − 1's student (:meth:`round_model`)
        with their own schedule: ``student.finetune_lr``, ``student.finetune_epochs``. The labeled cases are
        drawn with the dataset step's ``labeled_share``; from round 1 on the pseudo-labeled cases get
        ``student.pseudo_augmentation`` and their loss counts ``loop.pseudo_loss_weight``."""
        s = self.cfg.student
        init, epochs, lr = None, s.epochs, s.initial_lr
        if r > 0 and s.init == "finetune":
            init = str(self.checkpoint(self.round_model(r - 1)))
            epochs, lr = s.finetune_epochs or s.epochs, s.finetune_lr
        share = self.state.result(f"r{r}/dataset").get("labeled_share")
        online = {}
        if r == 0 and self.online:
            o = self.cfg.online
            terms = [f"{o.consistency} consistency"] if o.consistency != "none" else []
            terms += ["SAM term"] if o.sam_weight.weight > 0 else []
            say(f"round 0: online training with {' and '.join(terms)} on "
                f"{len(self.cases.unlabeled)} unlabeled cases")
            online = dict(recipe=str(self.run_dir / "config.yaml"),
                          teacher_cache_dir=self.cfg.teacher.cache_dir or str(self.run_dir / "cache" / "embeddings"),
                          epoch_callback=self.tracker.log_training_epoch)
        # an interrupted training starts over: nnU-Net keeps its time-stamped log and the checkpoints of the
        # attempt beside the new ones otherwise
        remove_tree(self.student(r).paths.results)
        say(f"round {r}: training the student ({epochs} epochs × {s.iterations_per_epoch} iterations, lr {lr}"
            f"{', fine-tuned from round ' + str(r - 1) if init else ''}"
            f"{f', labeled cases drawn for {share:.0%} of the samples' if share else ''}, seed {self.cfg.seed})")
        model = self.student(r).train(self.state.result(f"r{r}/preprocess")["dataset_id"], s.configuration, s.fold,
                                      epochs=epochs, iterations_per_epoch=s.iterations_per_epoch,
                                      val_iterations_per_epoch=s.val_iterations_per_epoch,
                                      initial_lr=lr, batch_size=s.batch_size, init_checkpoint=init,
                                      seed=self.cfg.seed, labeled_cases=[c.case_id for c in self.cases.train],
                                      labeled_share=share, pseudo_augmentation=s.pseudo_augmentation if r > 0 else None,
                                      pseudo_loss_weight=self.cfg.loop.pseudo_loss_weight if r > 0 else None,
                                      **online)
        return {"model": str(model), "seed": self.cfg.seed}

    def finetune(self, r: int) -> dict:
        """Fine-tune student ``r`` on the labeled cases only (noisy-student practice): round 0's preprocessed
        dataset (its plans and files reused as they are, also from ``loop.init_from``'s run, never written),
        from round ``r``'s final checkpoint, for ``loop.final_finetune_epochs`` epochs at
        ``student.finetune_lr``; the model is written under ``round_<r>/finetune/``."""
        s = self.cfg.student
        epochs = self.cfg.loop.final_finetune_epochs
        r0 = self.state.result("r0/preprocess")
        work_dir = Path(r0["plans"]).parents[2]  # <work>/nnUNet_preprocessed/DatasetNNN_Name/<plans>.json
        init = self.checkpoint(Path(self.state.result(f"r{r}/train")["model"]))
        results = self.round_dir(r) / "finetune"
        remove_tree(results)  # an interrupted fine-tune starts over
        say(f"round {r}: fine-tuning the student on the {len(self.cases.train)} labeled cases only ({epochs} epochs "
            f"× {s.iterations_per_epoch} iterations, lr {s.finetune_lr}, seed {self.cfg.seed})")
        model = self.student(r, work_dir).train(r0["dataset_id"], s.configuration, s.fold, epochs=epochs,
                                                iterations_per_epoch=s.iterations_per_epoch,
                                                val_iterations_per_epoch=s.val_iterations_per_epoch,
                                                initial_lr=s.finetune_lr, batch_size=s.batch_size,
                                                init_checkpoint=init, results_dir=results, seed=self.cfg.seed)
        return {"model": str(model), "init": str(init), "epochs": epochs, "lr": s.finetune_lr}

    def predict(self, r: int, cases, out: Path, probabilities: bool) -> list[Path]:
        # overwrite: a step runs only when the manifest does not record it, so a folder already at ``out`` is
        # from an attempt killed after the folder was complete but before the step was recorded
        return self.student(r).predict(self.round_model(r), [list(c.image_files) for c in cases], out,
                                       save_probabilities=probabilities, fold=self.cfg.student.fold, overwrite=True)

    def evaluate(self, r: int) -> dict:
        """Test (and validation) Dice/HD95 of student ``r`` (the model of :meth:`round_model`)."""
        result: dict[str, Any] = {"model": str(self.round_model(r))}
        for what, cases in (("test", self.cases.test), ("val", self.cases.val)):
            if not cases:
                continue
            say(f"round {r}: predicting {len(cases)} {what} cases")
            out = self.round_dir(r) / f"pred_{what}"
            self.predict(r, cases, out, probabilities=False)
            result[what] = evaluate_students_cases(self.dataset, cases, out, self.foreground,
                                                   self.round_dir(r) / f"metrics_{what}", f"round {r} — {what}")
        return result

    def predict_unlabeled(self, r: int) -> dict:
        say(f"round {r}: predicting {len(self.cases.unlabeled)} unlabeled cases (probabilities for the teacher)")
        out = self.round_dir(r) / "pred_unlabeled"
        self.predict(r, self.cases.unlabeled, out, probabilities=True)
        return {"dir": str(out), "model": str(self.round_model(r))}

    def teacher_round(self, r: int, accepted_before: dict[str, str]) -> dict | None:
        """Pseudo-label every unlabeled case from student ``r − 1``'s probabilities.

        The round streams: one case at a time is read, pseudo-labelled, written (when accepted) and only then
        scored against its hidden label (:class:`~semisam.loop.evaluation.PseudoQuality`, running sums only);
        the first ``loop.gallery_cases`` cases are the only label maps kept until the round ends, so memory
        does not grow with the number of cases.

        Under torchrun every rank runs this on its share of the cases (:func:`semisam.utils.distributed.shard`)
        and writes their pseudo-labels; rank 0 adapts the teacher first (the others load its adaptation),
        gathers the ranks' per-case stats, quality sums, cache counters and gallery cases, merges them in the
        dataset's case order (the result equals one process's) and returns the round's result; the other ranks
        return None.
        """
        t0 = time.time()
        labeler = self.labeler
        probs_dir = Path(self.state.result(f"r{r - 1}/predict_unlabeled")["dir"])
        out = self.round_dir(r) / "pseudo"

        def prepare() -> dict | None:
            remove_tree(out)  # an interrupted round starts over: no pseudo-label of a case this attempt may reject
            out.mkdir(parents=True)
            return self.adapt_teacher(r, accepted_before)

        # rank 0 alone empties pseudo/ and adapts, before any rank writes a pseudo-label (the others wait for it)
        adapt_stats = distributed.lead(prepare)
        cases = list(enumerate(self.cases.unlabeled))

        def share() -> tuple[list, list, PseudoQuality, dict]:
            if not self.world.main:
                self.adapt_teacher(r, accepted_before)  # loads rank 0's adaptation (the same data and settings)
            return self.teach_cases(r, distributed.shard(cases), probs_dir, out)

        parts = distributed.collect(share)
        if parts is None:
            return None
        rows = distributed.ordered([p[0] for p in parts], len(cases))
        gallery = [g for _, g in sorted((g for p in parts for g in p[1]), key=lambda ig: ig[0])]
        quality = parts[0][2]
        for p in parts[1:]:
            quality.merge(p[2])
        from semisam.teacher.cache import merge_cache_stats

        cache = merge_cache_stats([p[3] for p in parts], labeler.cache_stats())
        per_case = {cid: stats for cid, stats, _ in rows}
        accepted = [cid for cid, _, f in rows if f is not None]
        files = {cid: f for cid, _, f in rows if f is not None}
        write_json_atomic(out / "stats.json", per_case)
        gallery_png = None
        if gallery:
            from semisam.tracking.gallery import overlay_gallery

            gallery_png = str(overlay_gallery(gallery, self.ignore_label, self.round_dir(r) / "gallery.png",
                                              max_cases=self.cfg.loop.gallery_cases, title=f"round {r}"))
        n = len(self.cases.unlabeled)
        calibration = self.state.result_or("r1/calibrate")
        return {
            "accepted": accepted, "files": files, "n_candidates": n,
            "accept_rate": len(accepted) / n if n else 0.0,
            "n_added": len([c for c in accepted if c not in accepted_before]),
            "skipped": {c: s.get("skip_reason") for c, s in per_case.items() if s.get("skip_reason")},
            "pseudo_quality": quality.result(), "gallery": gallery_png, "adapt": adapt_stats,
            "cache": cache, "teacher_s": round(time.time() - t0, 2),
            **({"rule": calibration["chosen"]} if calibration else {}),
        }

    def teach_cases(self, r: int, cases: list, probs_dir: Path, out: Path) -> tuple[list, list, PseudoQuality, dict]:
        """Pseudo-label ``cases`` (``(index, case)`` pairs: this rank's share) and write the accepted ones.

        Returns ``(rows, gallery, quality, cache)``: ``(index, (case id, stats, file or None))`` per case, the
        ``(index, gallery entry)`` of cases among the first ``loop.gallery_cases``, the quality sums, and this
        process's cache counters.
        """
        from semisam.data.probabilities import load_probabilities

        labeler = self.labeler
        rows, gallery = [], []
        quality = PseudoQuality(self.dataset, self.foreground, self.ignore_label)
        for i, case in tqdm(cases, desc=f"round {r} teacher", unit="case", file=sys.stderr):
            image, props = self.dataset.read_image(case.image_files)
            probs, _ = load_probabilities(probs_dir / f"{case.case_id}.npz")
            res = labeler(image, probs, case.case_id)
            f = None
            if res.accepted:
                f = out / f"{case.case_id}{self.dataset.file_ending}"
                self.dataset.write_seg(res.pseudo, props, f)
            rows.append((i, (case.case_id, res.stats, None if f is None else str(f))))
            if i < self.cfg.loop.gallery_cases:
                gallery.append((i, {"case_id": case.case_id, "image": labeler.view.select(image),  # what SAM saw
                                    "rgb": len(labeler.view.channels) == 3, "student": res.student,
                                    "teacher": res.teacher, "pseudo": res.pseudo}))
            # Analysis only, after this case's pseudo-label is made and written: the hidden label is read for
            # scoring into running sums, and nothing read from it feeds back (teacher, filters, later cases).
            quality.add(case.case_id, res.pseudo, res.student, res.teacher, res.accepted)
            del image, props, probs, res  # the next case is read with none of this one's arrays alive
        return rows, gallery, quality, labeler.cache_stats()

    def adapt_teacher(self, r: int, accepted: dict[str, str]) -> dict | None:
        """Adapt the teacher on the training labeled cases (never validation cases, never a hidden label).

        With ``teacher.adapt.each_round`` it adapts again every round, on the labeled cases plus the
        pseudo-labels accepted so far (rejected pixels carry no loss); otherwise once per run.
        """
        tcfg = self.cfg.teacher
        if not self.labeler.adaptable or not tcfg.adapt.enabled or tcfg.adapt.steps == 0:
            return None
        tag = f"r{r}" if tcfg.adapt.each_round else "r1"
        path = self.run_dir / "teacher" / f"adapted_{tag}.pt"
        pairs = self.dataset.image_label_pairs(self.cases.train)
        pseudo = dict(sorted(accepted.items())) if tcfg.adapt.each_round else {}
        by_id = {c.case_id: c for c in self.cases.unlabeled}
        for cid, f in pseudo.items():
            image, _ = self.dataset.read_image(by_id[cid].image_files)
            pairs.append((image, self.dataset.read_seg(f)[0][0]))
        say(f"round {r}: adapting the teacher on {len(self.cases.train)} labeled + {len(pseudo)} pseudo-labeled cases "
            f"({tcfg.adapt.steps} steps, reused if {path.name} holds the same adaptation)")
        stats = self.labeler.adapt(pairs, sorted(self.foreground.values()), path)
        if stats.get("reused"):
            say(f"round {r}: reused the adapted teacher {path}")
        return stats

    # ------------------------------------------------------------------------------------------ reports
    def log_round(self, r: int, teach: dict | None, trained: bool) -> None:
        key = f"r{r}/logged"
        if self.state.done(key):
            return
        if not self.world.main:  # rank 0 reports; the others keep their copy of the manifest in step
            self.state.run(key, lambda: True)
            return
        record: dict[str, Any] = {"round": r}
        timings = {}
        if trained:
            ds = self.state.result(f"r{r}/dataset")
            ev = self.state.result(f"r{r}/evaluate")
            record.update(n_labeled=ds["n_labeled"], n_pseudo=ds["n_pseudo"])
            for what in ("test", "val"):
                if what in ev:
                    m = ev[what]
                    record[what] = {"dice_mean": m["mean_dice"], "hd95_mean": m["mean_hd95"],
                                    "pooled_dice": m["pooled_dice"],
                                    "dice_per_class": {k: v["mean_dice"] for k, v in m["classes"].items()},
                                    "hd95_per_class": {k: v["mean_hd95"] for k, v in m["classes"].items()}}
            timings["train_s"] = self.state.seconds(f"r{r}/train")
            if self.finetunes(r):
                timings["finetune_s"] = self.state.seconds(f"r{r}/finetune")
            timings["preprocess_s"] = self.state.seconds(f"r{r}/preprocess")
            timings["predict_s"] = self.state.seconds(f"r{r}/evaluate")
            from semisam.tracking.wandb_sink import load_nnunet_logging

            ckpt = self.checkpoint(Path(self.state.result(f"r{r}/train")["model"]))
            if ckpt.is_file():
                self.tracker.log_training_curve(r, load_nnunet_logging(ckpt))
        if teach is not None:
            record.update(n_candidates=teach["n_candidates"], n_added=teach["n_added"],
                          accept_rate=teach["accept_rate"], pseudo_quality=teach["pseudo_quality"],
                          cache=teach["cache"], n_skipped=len(teach["skipped"]))
            timings["teacher_s"] = teach["teacher_s"]
            if teach.get("adapt"):
                record["adapt"] = {k: v for k, v in teach["adapt"].items() if isinstance(v, (int, float))}
        record["timings"] = timings
        record["trained"] = trained
        self.tracker.log_round(r, record)
        if teach is not None and teach.get("gallery"):
            self.tracker.log_images(r, {"gallery": teach["gallery"]})
        self.state.run(key, lambda: True)

    def finish(self, stop_reason: str) -> dict[str, Any]:
        """Select the round to keep first (never by test Dice: see :func:`select_round`), then report it in
        ``report.md``, ``summary.json``, ``metrics.json`` (top-level ``selected``), the W&B summary
        (``selected/...``) and the printed table. The keys are documented in ``semisam.tracking.report``."""
        from semisam.tracking.plots import plot_rounds
        from semisam.tracking.report import selected_entry, write_report

        all_records = self.tracker.records
        records = [rec for rec in all_records if rec.get("trained", True)]
        by_val = self.cfg.loop.select_by_val
        selected = select_round(records, by_val)
        has_val = any((rec.get("val") or {}).get("dice_mean") is not None for rec in records)
        selection = "val" if by_val and has_val else "last"  # select_round falls back to the last round
        entry = selected_entry(records, selected, selection)
        plots = plot_rounds(all_records, self.run_dir / "plots")
        calibration = self.state.result_or("r1/calibrate")
        sections = None
        if calibration is not None:
            from semisam.loop.calibrate import report_section, summary_keys

            sections = report_section(calibration)
        report = write_report(self.run_dir, all_records, to_yaml(self.cfg), plots,
                              title=f"semisam — {self.cfg.experiment}", selected=selected, selection=selection,
                              sections=sections)
        summary = {"stop_reason": stop_reason, "final_round": records[-1]["round"] if records else None,
                   "selected_round": selected, "selection": selection, "report": str(report), "selected": entry}
        self.tracker.log_selected(entry)
        self.tracker.summary({k: v for k, v in summary.items() if k != "selected"}
                             | (summary_keys(calibration) if calibration is not None else {}))
        self.tracker.finish()
        write_json_atomic(self.run_dir / "summary.json", summary)
        print(dice_table(all_records, selected, selection))
        say(f"stopped: {stop_reason}. Report: {report}")
        return summary


def nothing_accepted(r: int, teach: dict) -> tuple[str, str]:
    """``(stop reason, what to do)`` for round ``r`` when its teacher round accepted no case.

    Cases the teacher never saw are skipped and counted by reason (``teach["skipped"]``: ``no_foreground``,
    the student found no object to make a prompt from; ``constant_image``); when every case was skipped, the
    filters are not the cause and the advice says so.
    """
    skipped = list(teach.get("skipped", {}).values())
    if skipped and len(skipped) == teach.get("n_candidates"):
        counts = ", ".join(f"{reason}: {skipped.count(reason)}" for reason in sorted(set(skipped)))
        advice = (f"student {r - 1} found no object to prompt SAM with: train it longer (student.epochs) or lower "
                  "prompts.threshold" if "no_foreground" in skipped else "check the unlabeled images")
        return f"round {r}: no unlabeled case reached the teacher ({counts} skipped)", advice
    return f"round {r}: the filters rejected every unlabeled case", "loosen filters.* to accept more"


def select_round(records: list[dict], by_val: bool) -> int | None:
    """The round whose student is kept: best validation Dice when asked (never test), else the last."""
    if not records:
        return None
    if by_val:
        scored = [(rec["val"]["dice_mean"], rec["round"]) for rec in records
                  if rec.get("val") and rec["val"].get("dice_mean") is not None]
        if scored:
            return max(scored)[1]
        say("loop.select_by_val: no validation cases (dataset.num_val=0); keeping the last round")
    return records[-1]["round"]


def dice_table(records: list[dict], selected: int | None, selection: str = "last") -> str:
    """The table printed at the end: supervised-only (round 0) vs each round; the selected round marked ←
    and stated below the table (``selection``: ``"last"`` or ``"val"``, how it was selected)."""
    from semisam.tracking.report import selection_line

    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = ["", "| round | training set | test Dice (mean) | test Dice (pooled) | test HD95 | accepted | pseudo-label Dice (kept px) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rec in records:
        test = rec.get("test") or {}
        pq = rec.get("pseudo_quality") or {}
        what = "labeled only (supervised)" if rec["round"] == 0 else f"{rec.get('n_labeled', '?')} + {rec.get('n_pseudo', '?')} pseudo"
        if not rec.get("trained", True):
            what = "not trained (stopped)"
        acc = "–" if rec.get("accept_rate") is None else f"{rec.get('n_added', 0)} new, {100 * rec['accept_rate']:.0f}%"
        mark = " ←" if rec["round"] == selected else ""
        lines.append(f"| {rec['round']}{mark} | {what} | {f(test.get('dice_mean'))} | {f(test.get('pooled_dice'))} | "
                     f"{f(test.get('hd95_mean'))} | {acc} | {f(pq.get('accepted_dice'))} |")
    lines += ["", "← " + selection_line(records, selected, selection)]
    return "\n".join(lines) + "\n"
