"""The command line's flags, each declared once, and how a command takes the option groups from them.

A flag that sets a field of an option group (:mod:`debias.core.options`, :class:`debias.fixing.options.
SearchOptions`) is declared here under the field's name (:data:`FLAGS`); :func:`takes` adds a group's flags to a
command and hands the command the built groups, so ``--min-confidence`` is one declaration for audit and fix, and
the value a command passes to the Python verb is the group the verb takes.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from debias.cli.app import CLASSIFIER, GATE, GENERATION, MEMORY, MODEL, OUTPUT, PANELS, PROMPTS, SEARCH
from debias.core.profiles import builtin_names
from debias.results.gate import GATE_EXIT_CODE, SCOPES, STATISTICS

# Options that mean the same on every verb that has them, declared once: (type, typer.Option) pairs.
Model = Annotated[str, typer.Option(
    "--model", rich_help_panel=MODEL,
    help=f"Hub id, local diffusers folder, or a built-in model ({', '.join(builtin_names())}).")]
Device = Annotated[Optional[str], typer.Option(
    "--device", rich_help_panel=MODEL,
    help="Torch device, e.g. cuda, cuda:1 or cpu (default: this process's GPU when there is one, else cpu).")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", rich_help_panel=MODEL,
    help="Weights' dtype: float32, float16 or bfloat16 (default: float16 on a GPU for real models, float32 "
         "otherwise; edits are judged and saved in this dtype, see docs/real-models.md on precision).")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", rich_help_panel=MODEL, help="Allow pickle (.bin) weights; only for models you trust.")]
Professions = Annotated[Optional[Path], typer.Option(
    "--professions", rich_help_panel=PROMPTS,
    help="Profession list (default: the model profile's, e.g. TIMED's 35 for real models); format in "
         "professions/README.md.")]
Target = Annotated[float, typer.Option(
    "--target", rich_help_panel=PROMPTS, help="Target female share (a list line's target=… overrides it).")]
Tolerance = Annotated[float, typer.Option(
    "--tolerance", rich_help_panel=PROMPTS,
    help="The band: a profession is within it when |share - target| <= this.")]
Templates = Annotated[list[str], typer.Option(
    "--templates", rich_help_panel=PROMPTS,
    help="Held-out test prompt template with {} for the profession (repeatable), or one template file (default: "
         "the model profile's test templates).")]
AttributeOptions = Annotated[list[str], typer.Option(
    "--attribute", rich_help_panel=PROMPTS,
    help="Also read this attribute from the same images (repeatable): a built-in name (skin, age; gender is always "
         "audited) or an attribute file (format in debias/core/attributes.py). A profession list may give "
         "per-profession targets: 'a CEO | skin=0.5,0.3,0.2'.")]
IntersectOptions = Annotated[list[str], typer.Option(
    "--intersect", rich_help_panel=PROMPTS,
    help="Cross two audited attributes per profession, e.g. gender,skin (repeatable): joint shares with "
         "simultaneous 95% intervals; cells too thin to read are flagged.")]
FixAttributeOptions = Annotated[list[str], typer.Option(
    "--attribute", rich_help_panel=PROMPTS,
    help="Fix this attribute instead of gender (repeatable; gender too when named): a built-in name (gender, skin, "
         "age) or an attribute file. k - 1 strengths per profession towards the list's targets ('a CEO | "
         "skin=0.5,0.3,0.2') or uniform; gender is always measured. Two are fixed crossed (one destination per "
         "pair of classes); at most two per run.")]
SavePipeline = Annotated[Optional[Path], typer.Option(
    "--save-pipeline", rich_help_panel=OUTPUT,
    help="Also write the edited model as a diffusers folder, with a model card (README.md) ready for a hub.")]
Seed = Annotated[int, typer.Option(
    "--seed", rich_help_panel=GENERATION,
    help="Seed of image 0; image i uses seed + i (the same seeds before and after a fix).")]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", rich_help_panel=GENERATION, help="Sampling steps (default: the model profile's).")]
Guidance = Annotated[Optional[float], typer.Option(
    "--guidance", rich_help_panel=GENERATION, help="Classifier-free guidance (default: the model profile's).")]
Height = Annotated[Optional[int], typer.Option(
    "--height", rich_help_panel=GENERATION,
    help="Image height in pixels, a multiple of the VAE's factor (default: the profile's, or the model's native "
         "size).")]
Width = Annotated[Optional[int], typer.Option(
    "--width", rich_help_panel=GENERATION,
    help="Image width in pixels (default: the profile's, or the model's native size).")]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", rich_help_panel=GENERATION,
    help="Images per pipeline call (default: the profile's, or 8 at 512² on a GPU scaled by image area, halved "
         "automatically on out-of-memory; 4 on a CPU).")]
Classifiers = Annotated[list[str], typer.Option(
    "--classifier", rich_help_panel=CLASSIFIER,
    help="CLIP: open_clip:ARCH/PRETRAINED, a transformers hub id or folder, or a built-in model's name (default: "
         "the model profile's; open_clip:ViT-L-14/openai for real models). Repeatable: the first is the primary "
         "(the audit's shares); the others read the same images and are compared with it (a fix's before and "
         "after audits).")]
LabelsFemale = Annotated[list[str], typer.Option(
    "--labels-female", rich_help_panel=CLASSIFIER,
    help="Label prompt(s) for female (repeatable; default 'a photo of a woman').")]
LabelsMale = Annotated[list[str], typer.Option(
    "--labels-male", rich_help_panel=CLASSIFIER,
    help="Label prompt(s) for male (repeatable; default 'a photo of a man').")]
LabelsNone = Annotated[list[str], typer.Option(
    "--labels-none", rich_help_panel=CLASSIFIER,
    help="'No person' prompt(s) (repeatable; off by default); images closer to these than to a person are "
         "unclear.")]
MinConfidence = Annotated[Optional[float], typer.Option(
    "--min-confidence", rich_help_panel=CLASSIFIER,
    help="Abstain (unclear) when max(p_female, 1-p_female) is below this (default 0.6, or what a saved fixed "
         "model records).")]
CpuOffload = Annotated[str, typer.Option(
    "--cpu-offload", rich_help_panel=MEMORY,
    help="none, model (one component at a time on the GPU, a little slower) or sequential (one layer at a time: "
         "least GPU memory, much slower).")]
VaeTiling = Annotated[bool, typer.Option(
    "--vae-tiling", rich_help_panel=MEMORY,
    help="Decode in tiles (large images; changes pixels above the VAE's tile size, recorded).")]
VaeSlicing = Annotated[bool, typer.Option(
    "--vae-slicing", rich_help_panel=MEMORY, help="Decode one image of a batch at a time.")]
AttentionSlicing = Annotated[bool, typer.Option(
    "--attention-slicing", rich_help_panel=MEMORY,
    help="Compute attention a few heads at a time (UNets only; rarely needed with PyTorch 2).")]
AdaptBatch = Annotated[bool, typer.Option(
    "--adapt-batch", rich_help_panel=MEMORY,
    help="Grow the batch to what the GPU's free memory holds (measured on the first batch).")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", rich_help_panel=MEMORY, help="Torch threads (default: DEBIAS_NUM_THREADS, or cores / processes).")]


# the gate's choices, as enums so that --help lists them and a typo is a usage error
GateScope = Enum("GateScope", {name: name for name in SCOPES}, type=str)
GateStatistic = Enum("GateStatistic", {name: name for name in STATISTICS}, type=str)


FailAbove = Annotated[Optional[float], typer.Option(
    "--fail-above", metavar="D", rich_help_panel=GATE, show_default=False,
    help=f"Release gate: after writing every output, exit with status {GATE_EXIT_CODE} when Δ is above this (e.g. "
         "0.1; a fix is judged on its after audit). Errors exit with 2.")]
Gate = Annotated[GateScope, typer.Option(
    "--gate", rich_help_panel=GATE,
    help="What --fail-above judges: the mean Δ over professions, or each profession's Δ (fails when any is above).")]
GateStatisticOption = Annotated[GateStatistic, typer.Option(
    "--gate-statistic", rich_help_panel=GATE,
    help="The number compared with --fail-above. upper (the 95% interval's upper bound): passes only when the data "
         "show Δ <= D, so measuring fewer images never helps a model pass; lower: fails only when the data show "
         "Δ > D (never on noise alone, but a small audit passes anything); point: the estimate. See docs/ci.md.")]

# A fix's search options (debias.fixing.options.SearchOptions).
TestImages = Annotated[int, typer.Option(
    "--test-images", rich_help_panel=GENERATION,
    help="Images per profession on the held-out test prompts, before and after.")]
TuningTemplates = Annotated[list[str], typer.Option(
    "--tuning-templates", rich_help_panel=PROMPTS,
    help="Validation template with {} that λ_p is tuned on (repeatable), or one template file; never a test "
         "template (default: the model profile's validation templates; TIMED's is 'A photo of {}').")]
Preserve = Annotated[list[str], typer.Option(
    "--preserve", rich_help_panel=PROMPTS,
    help="Prompt to keep unchanged (repeatable), or a file with one per line; professions left unedited are "
         "always preserved.")]
Budget = Annotated[Optional[int], typer.Option(
    "--budget", rich_help_panel=SEARCH,
    help="Images per profession on the tuning side: the tuning audit and every round (never exceeded; default "
         "320 per class beyond the first: gender 320, skin 640).")]
CheckImages = Annotated[int, typer.Option(
    "--check-images", rich_help_panel=SEARCH, help="Images per profession per joint round on the tuning prompts.")]
JointRounds = Annotated[int, typer.Option(
    "--joint-rounds", rich_help_panel=SEARCH,
    help="Rounds that tune every strength together under the joint edit, pooling all images.")]
AnchorStrength = Annotated[Optional[float], typer.Option(
    "--anchor-strength", rich_help_panel=SEARCH,
    help="Weight of the anchors (the bare augmentation templates and the empty prompt, kept fixed so the edit "
         "moves only what the profession adds); 0 turns them off. Default: the model family's (100; 10 for "
         "SD3/FLUX.1).")]
MaxDrift = Annotated[float, typer.Option(
    "--max-drift", rich_help_panel=SEARCH,
    help="Strongest edit allowed: unrelated prompts' conditioning may move by at most this (relative norm); 0 "
         "turns the limit off.")]
SidePrompts = Annotated[list[str], typer.Option(
    "--side-prompts", rich_help_panel=SEARCH,
    help="Unrelated prompt for the side-effect check (repeatable; default: the model profile's).")]
SideSeeds = Annotated[int, typer.Option(
    "--side-seeds", rich_help_panel=SEARCH, help="Seeds per unrelated prompt for the side-effect check.")]


FLAGS: dict[str, Any] = {
    # RuntimeOptions
    "device": Device, "dtype": Dtype, "threads": Threads, "allow_pickle": AllowPickle,
    # PromptOptions
    "professions": Professions, "templates": Templates, "target": Target, "tolerance": Tolerance,
    # GenerationOptions
    "seed": Seed, "steps": Steps, "guidance": Guidance, "height": Height, "width": Width, "batch_size": BatchSize,
    # ClassifierOptions
    "classifier": Classifiers, "labels_female": LabelsFemale, "labels_male": LabelsMale, "labels_none": LabelsNone,
    "min_confidence": MinConfidence,
    # MemoryOptions
    "cpu_offload": CpuOffload, "vae_tiling": VaeTiling, "vae_slicing": VaeSlicing,
    "attention_slicing": AttentionSlicing, "adapt_batch": AdaptBatch,
    # SearchOptions
    "test_images": TestImages, "tuning_templates": TuningTemplates, "preserve": Preserve, "budget": Budget,
    "check_images": CheckImages, "joint_rounds": JointRounds, "anchor_strength": AnchorStrength,
    "max_drift": MaxDrift, "side_prompts": SidePrompts, "side_seeds": SideSeeds,
}
"""Each option group field's flag, by the field's name (a field without one, such as ``preserve_strength``, is
Python-only)."""


def _preserve(values: list[str]) -> list[str] | str | None:
    """``--preserve``: prompts, or the one file that lists them."""
    if len(values) == 1 and Path(values[0]).is_file():
        return values[0]
    return values or None


# what a flag's value becomes in its group where that is not the value itself
CONVERT: dict[str, Callable[[Any], Any]] = {
    "max_drift": lambda value: value or None,  # 0 turns the limit off
    "preserve": _preserve,
}


def _field_value(name: str, value: Any) -> Any:
    if name in CONVERT:
        return CONVERT[name](value)
    return (value or None) if isinstance(value, list) else value  # a repeatable flag left empty: the default


def _panel(parameter: inspect.Parameter) -> int:
    info = parameter.default
    if typing.get_origin(parameter.annotation) is Annotated:
        info = typing.get_args(parameter.annotation)[1]
    panel = getattr(info, "rich_help_panel", None)
    return PANELS.index(panel) if panel in PANELS else -1


def takes(groups: dict[str, type]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the flags of ``groups`` (keyword -> option group class) and call it with the groups built.

    The command declares its own options as usual and ends with ``**groups``; the flags of every group field in
    :data:`FLAGS` are added after its own, all ordered by their --help group (:data:`debias.cli.app.PANELS`)."""
    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        flags = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=FLAGS[f.name],
                                   default=_flag_default(f))
                 for cls in groups.values() for f in dataclasses.fields(cls) if f.name in FLAGS]
        parameters = sorted([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + flags, key=_panel)

        def run(**values: Any) -> None:
            built = {key: cls(**{f.name: _field_value(f.name, values.pop(f.name))
                                 for f in dataclasses.fields(cls) if f.name in FLAGS})
                     for key, cls in groups.items()}
            command(**values, **built)

        run.__name__, run.__doc__ = command.__name__, command.__doc__
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return run
    return wrap


def _flag_default(field: dataclasses.Field) -> Any:
    """A flag's default is its field's; a repeatable flag's is the empty list (the field's None)."""
    if typing.get_origin(typing.get_args(FLAGS[field.name])[0]) is list:
        return []
    return field.default
