"""What an artifact takes and returns: names, shapes (with named dynamic axes), dtypes, meaning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a dynamic axis ("batch")
    dtype: str  # numpy dtype name
    description: str = ""
    value_range: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if self.value_range is None:
            del d["value_range"]
        else:
            d["value_range"] = list(self.value_range)
        if not self.extra:
            del d["extra"]
        return d


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def feeds(self, tensors: tuple[Any, ...]) -> dict[str, Any]:
        """Example tensors (in argument order) as the named numpy feeds a runtime takes."""
        return {spec.name: t.numpy() for spec, t in zip(self.inputs, tensors, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
