"""A content hash for .ort files that is stable across conversions.

onnxruntime's converter writes some tables (the kernel type-string resolver) in hash-map order, so
two conversions of the same .onnx can differ in bytes while holding the same model. This hash covers
what the runtime executes: IR version, opsets, the nodes (in index order, with attributes) and the
initializers (sorted by name, with their raw data); it leaves out only that derived table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _attribute(a) -> tuple:
    floats = a.FloatsAsNumpy().tobytes() if a.FloatsLength() else b""
    ints = a.IntsAsNumpy().tobytes() if a.IntsLength() else b""
    strings = [a.Strings(i) for i in range(a.StringsLength())]
    return (a.Name(), a.Type(), a.F(), a.I(), a.S(), floats, ints, strings)


def ort_content_sha256(path: Path) -> str:
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buf = Path(path).read_bytes()
    model = InferenceSession.InferenceSession.GetRootAs(buf, 0).Model()
    graph = model.Graph()
    h = hashlib.sha256()
    opsets = sorted((model.OpsetImport(i).Domain(), model.OpsetImport(i).Version())
                    for i in range(model.OpsetImportLength()))
    h.update(repr((model.IrVersion(), opsets)).encode())
    nodes = sorted((graph.Nodes(i) for i in range(graph.NodesLength())), key=lambda n: n.Index())
    for n in nodes:
        attrs = sorted(_attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
        h.update(repr((n.Index(), n.Name(), n.OpType(), n.Domain(), n.SinceVersion(),
                       [n.Inputs(j) for j in range(n.InputsLength())],
                       [n.Outputs(j) for j in range(n.OutputsLength())], attrs)).encode())
    tensors = []
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        raw = t.RawDataAsNumpy().tobytes() if t.RawDataLength() else b""
        dims = t.DimsAsNumpy().tobytes() if t.DimsLength() else b""
        tensors.append((t.Name(), t.DataType(), dims, raw))
    for name, dtype, dims, raw in sorted(tensors):
        h.update(name + repr(dtype).encode() + dims + hashlib.sha256(raw).digest())
    return h.hexdigest()
