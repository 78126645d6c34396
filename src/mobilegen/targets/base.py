"""What a target is: the `Target` protocol every runtime module implements, the `ExportRequest`
it receives, and the `Artifact` it returns. A runtime module keeps its SDK imports inside its
functions, so a missing SDK fails only the target that needs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mobilegen.sampling.runner import Runner

if TYPE_CHECKING:
    from mobilegen.passes.precision import PrecisionSpec
    from mobilegen.signature import ModelIO
    from mobilegen.targets.profile import TargetProfile


@dataclass
class Artifact:
    file: str  # path relative to the output folder
    format: str  # "onnx", "ort", ...
    target: str  # profile name
    runtime: str
    precision: str
    companions: list[str] = field(default_factory=list)  # files that must ship beside `file`
    runnable: bool = True  # False where the host cannot run it (the reason goes in details)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportRequest:
    """One lowering: the captured program (in the profile's layout) to files in `workdir`."""

    program: Any  # torch.export.ExportedProgram
    io: ModelIO  # input/output names, shapes, dtypes
    example: tuple[Any, ...]  # the example inputs the program was captured with
    profile: TargetProfile
    workdir: Path  # the target's folder inside the staging output
    stem: str  # file stem: the component's name ("denoiser", "unet", "decoder")
    param_bytes: int  # fp32 weight bytes (picks external data / large-model paths)
    # feeds from the model's own sampling trajectories, stratified over t (static int8 only)
    calibration: tuple[dict[str, np.ndarray], ...] = ()
    # the batch the sampler calls the model with (2 x images under classifier-free guidance);
    # None for a model without a sampler. Fixed-shape NPU graphs are compiled for it (qnn.py)
    sample_batch: int | None = None
    # nothing reads the program after this export (a child process's last use of its capture, no
    # precision pass after it): a converter that copies the weights may free the program's own
    # copy once it has made its own (targets/tflite.py)
    consume_program: bool = False


class Target(Protocol):
    """A runtime module (targets/onnx.py, tflite.py, coreml.py) seen as a value."""

    FORMATS: tuple[str, ...]  # what `export` writes (file formats)

    def export(self, req: ExportRequest) -> list[Artifact]: ...

    def supports(self, spec: PrecisionSpec) -> str | None:
        """None, or why this target cannot produce that precision (the row says so)."""

    def export_precision(self, req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]: ...

    def load(self, path: Path, threads: int) -> Runner: ...


def base_is_already(stem: str, tag: str, profile: Any, base_file: str, what: str) -> Artifact:
    """The row for a precision pass the profile's base artifact already has (fp16 on an fp16
    profile): no second copy, and the pipeline's convention for rows without a file."""
    return Artifact(f"{stem}.{tag}", "none", profile.name, profile.runtime, tag, runnable=False,
                    details={"skipped": f"the base {base_file} already {what} (profile "
                                        "precision); no second copy"})


def program_weights(program: Any) -> list[Any]:
    """The tensors of a captured program's state dict and constants."""
    import torch

    return [t for t in (*program.state_dict.values(), *program.constants.values())
            if isinstance(t, torch.Tensor)]


def release_weights(weights: list[Any], keep: frozenset[int] | set[int] = frozenset()) -> None:
    """Free weights nobody reads again (ExportRequest.consume_program): each storage resized to
    nothing where torch owns it, else (a capture read back by torch.export.load) the tensor
    object emptied. `keep`: storage data pointers still in use."""
    import torch

    with torch.no_grad():
        for w in weights:
            storage = w.untyped_storage()
            if storage.data_ptr() in keep or storage.nbytes() == 0:
                continue
            if storage.resizable():
                storage.resize_(0)
            else:
                w.data = torch.empty(0, dtype=w.dtype)
