"""The inference sessions the runtimes run graphs in: ONNX Runtime's and OpenVINO's CPU sessions, with cirlab's
thread count. Below ``runtime`` (which picks and exports) and ``quantize`` (which checks an int8 graph against its
fp32 export), so both open the same sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def session_threads() -> int:
    """The threads a session computes on: torch's count (it follows CIRLAB_THREADS / OMP_NUM_THREADS)."""
    return max(1, torch.get_num_threads())


class OrtSession:
    """An ONNX Runtime CPU session; ``run`` is safe from several threads."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # idle pool threads sleep rather than spin: on a shared machine (a server between queries, two jobs on
        # two cores) spinning threads take the cores the other work needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})


class OpenVinoSession:
    """An OpenVINO CPU model compiled in fp32 (its default on some CPUs is bf16, which would break parity; bf16
    only where asked, ``precision``); each call takes its own infer request, so threads do not share one."""

    def __init__(self, path: Path, precision: str = "fp32") -> None:
        import openvino as ov

        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        self.model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": session_threads(),
                                                                 "INFERENCE_PRECISION_HINT": hint})
        self.inputs = {i.get_any_name() for i in self.model.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = self.model.create_infer_request()
        result = request.infer({k: v for k, v in feeds.items() if k in self.inputs})
        return [np.array(result[o]) for o in self.model.outputs]


class OpenVinoSplitSession:
    """An OpenVINO CPU model in two parts: the graph up to the output of the last node whose name holds ``until``
    (the early layers, where bf16 rounding costs the most) compiled in fp32, the rest in ``precision``. Cut with
    ONNX's own extractor; the first part's one output is the second's one input."""

    def __init__(self, path: Path, until: str, precision: str = "bf16") -> None:
        import tempfile

        import onnx
        from onnx.utils import Extractor

        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # the extractor reads the cut's shape
        inside = [n for n in model.graph.node if until in n.name]
        if not inside:
            raise ValueError(f"no node of {path} is named with {until!r}")
        cut = inside[-1].output[0]
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        extractor = Extractor(model)
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(extractor.extract_model(inputs, [cut]), f"{tmp}/early.onnx")
            onnx.save(extractor.extract_model([cut], outputs), f"{tmp}/rest.onnx")
            self.early = OpenVinoSession(Path(tmp) / "early.onnx", "fp32")
            self.rest = OpenVinoSession(Path(tmp) / "rest.onnx", precision)
        self.inputs = self.early.inputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (middle,) = self.early.run(feeds)
        return self.rest.run({next(iter(self.rest.inputs)): middle})
