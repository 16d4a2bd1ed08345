"""Typed recipe schemas: one dataclass per config group, :class:`RunConfig` on top.

The dataclasses are registered in Hydra's ConfigStore (:func:`register_schemas`) as the base of
``recipes/config.yaml``, so every YAML file and every command-line override is merged onto a typed node:
an unknown key or a value of the wrong type fails at composition. Ranges and enumerated choices are
declared beside each field (``metadata``) and checked by :func:`semisam.config.validate.validate`.

Field helpers:
    ``choice(default, *options)``   an enumerated string
    ``bounded(default, lo, hi)``    a number in ``[lo, hi]`` (either side may be ``None``)
    ``positive(default)``           a number ``> 0``
    ``prob(default)``               a probability / threshold in ``[0, 1]``

Configs stop at the builders: code below them receives plain scalars and tensors, never these objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional

from omegaconf import MISSING

TEACHER_NAMES = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam_vit_t", "tiny_random", "none")
FUSION_MODES = ("sam", "student", "agree", "union", "choose", "weighted")


def choice(default: Any, *options: str) -> Any:
    """A string field that must be one of ``options``."""
    return field(default=default, metadata={"choices": tuple(options)})


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A numeric field that must lie in the closed interval ``[lo, hi]``."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def positive(default: Any) -> Any:
    """A numeric field that must be strictly greater than 0."""
    return field(default=default, metadata={"gt": 0})


def prob(default: Any) -> Any:
    """A probability or threshold: a number in ``[0, 1]``."""
    return bounded(default, 0.0, 1.0)


def settings_of(schema: type, nested: Mapping[str, type] | None = None) -> Callable[[type], type]:
    """Class decorator: a frozen dataclass with exactly ``schema``'s fields and defaults, for the code below the
    builders (plain values, never a config object). A field added to the schema appears in its settings.

    The decorated class adds behaviour only (methods, ``__post_init__`` checks); ``nested`` maps a field name to
    the settings class of a nested schema node (its default is that class's default instance). The class gets
    ``of(node)``: the settings from a config node or any object with the schema's attributes.
    """

    def decorate(cls: type) -> type:
        annotations = {}
        for f in dataclasses.fields(schema):
            sub = (nested or {}).get(f.name)
            if sub is not None:
                annotations[f.name] = sub.__name__
                setattr(cls, f.name, field(default_factory=sub))
            elif f.default_factory is not dataclasses.MISSING:
                annotations[f.name] = f.type
                setattr(cls, f.name, field(default_factory=f.default_factory))
            else:
                annotations[f.name] = f.type
                setattr(cls, f.name, f.default)
        cls.__annotations__ = annotations

        def of(klass, node: Any):
            values = {}
            for f in dataclasses.fields(klass):
                v = getattr(node, f.name)
                sub = (nested or {}).get(f.name)
                values[f.name] = sub.of(v) if sub is not None and not isinstance(v, sub) else v
            return klass(**values)

        cls.of = classmethod(of)
        return dataclass(frozen=True)(cls)

    return decorate


@dataclass
class DatasetConfig:
    """Which nnU-Net raw dataset to learn from.

    ``raw_dir`` is any nnU-Net raw dataset folder (``DatasetNNN_Name/`` with ``imagesTr/``,
    ``labelsTr/``, ``dataset.json``; semisam's ``semisam_split.json`` names labeled and unlabeled cases).
    """

    raw_dir: str = MISSING  # required; dataset=nuclei sets the demo set, dataset.raw_dir=<dir> any other
    dataset_id: int = bounded(501, 1, 999)  # nnU-Net id used in semisam's work folders
    num_val: int = bounded(0, 0)  # labeled cases reserved for validation, never trained on


@dataclass
class StudentConfig:
    """The nnU-Net student: configuration, training budget and preprocessing workers."""

    configuration: str = "2d"
    fold: str = "all"  # "all" or a fold index
    epochs: int = bounded(30, 1)
    iterations_per_epoch: int = bounded(30, 1)
    val_iterations_per_epoch: int = bounded(10, 1)
    initial_lr: float = positive(0.01)
    batch_size: Optional[int] = bounded(None, 1)  # None: nnU-Net's planned batch size
    init: str = choice("scratch", "scratch", "finetune")  # each round from scratch or from the last student
    # init=finetune, rounds r > 0 (and loop.final_finetune_epochs): poly schedule restarted at this lr
    finetune_lr: float = positive(1e-3)
    finetune_epochs: Optional[int] = bounded(None, 1)  # init=finetune, rounds r > 0; None: epochs
    # rounds r > 0: augmentation of the pseudo-labeled cases; da5 = nnU-Net's stronger nnUNetTrainerDA5
    # pipeline (the labeled cases keep nnU-Net's default)
    pseudo_augmentation: str = choice("default", "default", "da5")
    num_processes: int = bounded(1, 1)  # preprocessing workers
    num_processes_da: int = bounded(2, 0)  # data-augmentation workers (0: in the main process)
    num_gpus: int = bounded(1, 1)  # > 1: nnU-Net's DDP training on this many GPUs of one node (CUDA only)


@dataclass
class IntensityConfig:
    """How a teacher's input image is scaled to [0, 1] before SAM's own preprocessing."""

    mode: str = choice("percentile", "percentile", "minmax", "window")
    lower: float = bounded(0.5, 0.0, 100.0)  # percentile mode: lower percentile
    upper: float = bounded(99.5, 0.0, 100.0)  # percentile mode: upper percentile
    window_center: Optional[float] = None  # window mode (CT level)
    window_width: Optional[float] = None  # window mode (CT width), > 0


@dataclass
class AdaptConfig:
    """Adapting the teacher's mask decoder on the labeled cases (prompts from their labels)."""

    enabled: bool = True
    steps: int = bounded(200, 0)
    lr: float = positive(1e-4)
    batch_size: int = bounded(8, 1)
    train_prompt_encoder: bool = True
    augment: bool = True
    box_jitter: int = bounded(3, 0)  # pixels of random box jitter during adaptation
    each_round: bool = False  # re-adapt every round (else once per run)


@dataclass
class TeacherConfig:
    """The SAM teacher: which model, its weights, input scaling, caching and adaptation."""

    name: str = choice("litemedsam", *TEACHER_NAMES)
    checkpoint: Optional[str] = None  # None: the embedded weights (litemedsam); required for the others
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    # the image channels SAM sees: [i] one as grey, [r, g, b] three as RGB; null: RGB when dataset.json names its
    # three channels R, G, B (data_prep's ISIC 2018 and Kvasir-SEG), else the first channel
    channels: Optional[List[int]] = None
    cache_dir: Optional[str] = None  # None: <run_dir>/cache/embeddings
    cache_memory_items: int = bounded(64, 0)
    # precision of cached embeddings: float16 halves memory and disk, the decoder's output stays within the
    # tolerance measured in semisam.teacher.cache; float32 is exact (the behaviour before the key existed)
    cache_dtype: str = choice("float16", "float16", "float32")
    cache_max_gb: Optional[float] = bounded(None, 0.0)  # cap on the cache folder in GB, LRU eviction; None: no cap
    decode_batch: int = bounded(64, 1)  # prompts per mask-decoder call
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def enabled(self) -> bool:
        """False for ``teacher=none``: no SAM is built, and pseudo-labels can only be the student's own."""
        return self.name != "none"


@dataclass
class PromptsConfig:
    """Student probabilities → SAM prompts (per class, per connected component)."""

    threshold: float = prob(0.5)  # student probability → foreground
    box: bool = True
    box_margin: int = bounded(2, 0)  # pixels added around each box
    box_jitter: int = bounded(0, 0)
    positive_points: int = bounded(0, 0)
    negative_points: int = bounded(0, 0)
    mask_prompt: bool = False  # also pass the student's low-res logits
    min_size: int = bounded(10, 0)  # components smaller than this (pixels) get no prompt
    split_instances: bool = False  # split touching objects (distance-transform watershed)
    split_min_distance: int = bounded(3, 1)
    # a component the split cuts into more pieces than this stays whole (tissue ribbons, not touching objects;
    # each piece is a prompt); 0: no limit
    split_max_pieces: int = bounded(0, 0)
    slice_axis: int = bounded(0, 0, 2)  # 3D: the (Z, Y, X) axis sliced for 2D SAM
    overlap: str = choice("argmax", "argmax")  # multi-class rule: argmax over classes (see semisam.prompts)
    # box_margin (and the perturbation jitter) in image pixels, or in pixels of the teacher's input frame
    # (LiteMedSAM was trained on boxes enlarged by 0-5 px at 256²): the same margin on any image size
    box_margin_space: str = choice("image", "image", "teacher")
    # > 0: also prompt components of p >= this (below threshold) that hold no student object: objects the
    # student nearly missed, which SAM may confirm (fusion union/choose add them); 0: off
    candidate_threshold: float = prob(0.0)
    # where the teacher's masks come from: the student's objects (boxes/points), or SAM's automatic
    # "everything" masks matched one-to-one (Hungarian on IoU) to the student's objects (SamDSK's mode)
    source: str = choice("student", "student", "everything")
    everything_points_per_side: int = bounded(16, 1)
    everything_min_iou: float = prob(0.5)  # SAM's predicted IoU of an automatic mask
    everything_min_stability: float = prob(0.8)
    match_iou: float = prob(0.3)  # an object and a SAM segment match if their IoU is at least this
    # a second teacher pass per object: its box + points inside its first mask and on its neighbours
    second_pass: bool = False
    second_pass_positive: int = bounded(1, 0)
    second_pass_negative: int = bounded(1, 0)
    second_pass_mask: bool = False  # also feed the first pass's low-res logits back (SAM's refinement)


@dataclass
class FiltersConfig:
    """Fusion of teacher and student, and the accept/ignore filters (thresholds in [0, 1])."""

    fusion: str = choice("agree", *FUSION_MODES)
    fusion_weight: float = prob(0.5)  # weighted fusion: weight of the teacher
    min_confidence: float = prob(0.5)  # weighted fusion: fused probability below this → ignore
    iou_thresh: float = prob(0.0)  # SAM's predicted IoU
    stability_thresh: float = prob(0.0)
    stability_offset: float = positive(1.0)  # logit offset of the stability score
    agreement_thresh: float = prob(0.0)  # Dice between teacher and student per object
    uncertainty_thresh: float = prob(1.0)  # prompt-perturbation disagreement, accept below
    perturbations: int = bounded(0, 0)  # perturbed prompts per object (0: uncertainty off)
    boundary_band: int = bounded(0, 0)  # background within this many pixels of pseudo foreground → ignore
    case_min_accept: float = prob(0.5)  # a case is accepted if this fraction of its foreground is kept
    # with perturbations > 0: the teacher's mask is the majority of the original and the perturbed prompts'
    # masks (a jittered-box ensemble) instead of the original prompt's mask alone
    ensemble_mask: bool = False
    # > 0: background pixels where the student's foreground probability is >= this become ignore (and count
    # as possible missed foreground in case acceptance); must lie below prompts.threshold
    gray_zone: float = prob(0.0)
    # fusion choose: a rejected object keeps the student's mask if the student's mean probability over it is
    # >= this (1.0: never, the object is ignored)
    student_confident: float = prob(1.0)


@dataclass
class LoopConfig:
    """Rounds of pseudo-labelling (SamDSK) and when to stop."""

    max_rounds: int = bounded(0, 0)  # 0: supervised baseline only
    # Share of training samples drawn from the labeled cases once pseudo-labeled ones join (nnU-Net's sampler
    # draws each labeled case more often; each case is in the round's dataset once); 0 keeps nnU-Net's uniform
    # sampling over all cases.
    labeled_weight: float = bounded(0.5, 0.0, 0.95)
    # Weight of a pseudo-labeled sample's loss against a labeled one's (rounds r > 0): each batch's loss is
    # (sum of labeled samples' losses + w * sum of pseudo-labeled ones) / batch size. 1: nnU-Net's loss unchanged
    pseudo_loss_weight: float = bounded(1.0, 0.0, 1.0)
    # > 0: after round r > 0 trains, fine-tune its student on the labeled cases only for this many epochs
    # (student.finetune_lr); the round's evaluation and predictions use the fine-tuned student. 0: off
    final_finetune_epochs: int = bounded(0, 0)
    # Candidate pseudo-label rules (words of `semisam probe --rules`: an experiment name and overrides, of which
    # prompts and filters are used); non-empty: before round 1, leave-one-out students on the labeled cases choose
    # the rule whose pseudo-labels score best against the held-out labels (semisam.loop.calibrate)
    calibrate: List[str] = field(default_factory=list)
    stop_when_no_new: bool = True  # stop when a round accepts no new case
    select_by_val: bool = False  # keep the round whose student is best on the validation cases
    gallery_cases: int = bounded(4, 0)  # cases shown in the per-round image gallery
    # A finished run folder whose round 0 (the supervised student: dataset, preprocessing, training, test
    # evaluation) this run reuses instead of training it again. Its dataset, student and seed must be this
    # run's; `semisam compare` uses it so that every method of one labeled draw and seed starts from one student.
    init_from: Optional[str] = None


@dataclass
class WeightSchedule:
    """A loss weight λ(t) over training, t = the fraction of training done (epoch + iteration, over all epochs).

    λ is 0 before ``start``, rises with the sigmoid ramp exp(-5 (1 - x)²) over the next ``ramp_up``, holds
    ``weight``, and falls to 0 with a cosine over the last ``ramp_down`` of training. ``ramp_up`` = ``ramp_down``
    = 0: a constant weight from ``start``. ``start + ramp_up + ramp_down`` must not exceed 1.
    """

    weight: float = bounded(0.0, 0.0)  # 0: the term is off
    start: float = prob(0.0)
    ramp_up: float = prob(0.0)
    ramp_down: float = prob(0.0)


@dataclass
class OnlineConfig:
    """Online semi-supervised training inside nnU-Net's trainer (``nnUNetTrainerSemiSAM``): each iteration
    adds an unlabeled batch with a consistency term and/or a SAM term beside nnU-Net's supervised loss.

    ``consistency=none`` and ``sam.weight=0``: nnU-Net's supervised training, unchanged (rounds use this).
    """

    # mean_teacher: MSE between the student's and the EMA teacher's softmax (teacher input with Gaussian noise);
    # weak_strong: the teacher's confident pixels on nnU-Net's augmented (weak) view supervise a strongly
    # augmented view of the same patch (intensity jitter, blur, noise, CutMix) with CE + Dice
    consistency: str = choice("none", "none", "mean_teacher", "weak_strong")
    consistency_weight: WeightSchedule = field(default_factory=WeightSchedule)
    # CE + Dice toward SAM's pseudo-labels of the unlabeled cases (prompted from sam_prompter's predictions,
    # through the recipe's prompts and filters; ignore where the filters reject); 0: off
    sam_weight: WeightSchedule = field(default_factory=WeightSchedule)
    sam_refresh_every: int = bounded(1, 1)  # epochs between refreshes of SAM's pseudo-labels
    # refresh: SAM pseudo-labels every unlabeled case every sam_refresh_every epochs (a store the loader crops);
    # iteration: SAM labels each unlabeled 2D patch of every iteration, prompted from sam_prompter's prediction
    # of that very patch (the reference code's way; no cache: every patch is new). 2D configurations only
    sam_mode: str = choice("refresh", "refresh", "iteration")
    # weight each SAM pseudo-label pixel in the SAM term's CE + Dice by SAM's confidence there, 2|p - 0.5| of its
    # mask probability (stored in 5 levels: 0, 0.25, ..., 1); false: every kept pixel counts fully
    sam_confidence: bool = False
    # whose predictions prompt SAM for the SAM term: the EMA teacher's, or the student network's own (at short
    # budgets the EMA teacher lags the student, and its outlines become SAM's prompts)
    sam_prompter: str = choice("ema", "ema", "student")
    ema_decay: float = bounded(0.99, 0.0, 0.99999)
    teacher_noise: float = bounded(0.1, 0.0)  # mean_teacher: std of the noise on the teacher's input
    confidence: float = prob(0.95)  # weak_strong: teacher confidence from which a pixel supervises
    weak_teacher: str = choice("ema", "ema", "student")  # weak_strong: who labels the weak view
    # weak_strong: true multiplies the term by the fraction of unlabeled pixels that are confident, as FixMatch and
    # UniMatch average their loss over all unlabeled pixels (few confident pixels: a small term); false: CE + Dice
    # averaged over the confident pixels alone, whatever their number
    scale_by_coverage: bool = False
    # weak_strong's strong view (on the patch after nnU-Net's spatial transforms, so geometry stays aligned)
    strong_brightness: float = bounded(0.3, 0.0)  # additive shift, in units of the normalised intensity
    strong_contrast: float = prob(0.3)  # multiplicative factor in [1 - c, 1 + c] around the patch mean
    strong_blur: float = prob(0.5)  # probability of a Gaussian blur (sigma 0.5-1.5 px)
    strong_noise: float = bounded(0.1, 0.0)  # std of additive Gaussian noise (upper bound, drawn per sample)
    cutmix: float = prob(0.5)  # probability that a sample gets a box of another sample (and its targets)
    # weak_strong: > 0 adds UniMatch's feature-perturbation branch: the weak view through the encoder, its
    # features dropped channel-wise with this probability, then the decoder, supervised by the same confident
    # pixels (the consistency term is then the mean of the strong-view and the feature-perturbed losses); 0: off
    feature_perturbation: float = prob(0.0)
    unlabeled_batch_size: Optional[int] = bounded(None, 1)  # None: the labeled batch size

    @property
    def trains(self) -> bool:
        """Whether the recipe trains online (a consistency kind or a SAM term): such a student is a method of its
        own, with no pseudo-label rounds. The trainer's ``OnlineSettings.enabled`` is this same rule."""
        return trains_online(self)


def trains_online(online: Any) -> bool:
    """Whether ``online`` (the recipe's :class:`OnlineConfig` or the trainer's settings built from it) trains on
    unlabeled batches: a consistency kind with a weight, or a SAM term with a weight."""
    return (online.consistency != "none" and online.consistency_weight.weight > 0) or online.sam_weight.weight > 0


@dataclass
class LoggerConfig:
    """Weights & Biases (offline by default) and local logs."""

    wandb: str = choice("offline", "offline", "online", "disabled")
    project: str = "semisam"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None  # W&B run group (semisam compare: one group per comparison)
    name: Optional[str] = None  # W&B display name; None: the experiment's name
    dir: Optional[str] = None  # None: <run_dir>


@dataclass
class RunConfig:
    """A whole run: the recipe composed from ``recipes/config.yaml`` and its groups."""

    experiment: str = "supervised"  # set to the chosen experiment recipe's name by compose()
    seed: int = bounded(0, 0)
    run_dir: str = "runs/${experiment}"
    restart: bool = False  # start over instead of resuming the run in run_dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# config group name → schema; the experiment group has no node of its own (its files are @package _global_)
GROUPS: dict[str, type] = {
    "dataset": DatasetConfig,
    "student": StudentConfig,
    "teacher": TeacherConfig,
    "prompts": PromptsConfig,
    "filters": FiltersConfig,
    "loop": LoopConfig,
    "online": OnlineConfig,
    "logger": LoggerConfig,
}

BASE_CONFIG_NAME = "semisam_base"


def register_schemas() -> None:
    """Store :class:`RunConfig` in Hydra's ConfigStore as ``semisam_base`` (idempotent).

    ``recipes/config.yaml`` lists it first in its defaults, so everything merged after it (group files,
    experiment files, overrides) lands on typed nodes and is checked against these dataclasses.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=BASE_CONFIG_NAME, node=RunConfig)

