"""One ONNX graph in an onnxruntime session, its inputs found by rank and fed in the dtypes it declares.

Exporters differ in names and types (optimum's UNet takes a float scalar timestep, diffusers' older
exports an int64 [1]; a graph may be float16), so nothing here assumes them: each input is cast to the
graph's own dtype and every float output comes back as float32.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state

from sdrun.errors import GraphOutputError, GraphRunError, ModelFolderError

# What InferenceSession.run raises when a graph cannot run on its inputs (Fail, InvalidArgument,
# RuntimeException, ...): each onnxruntime release has its own set of these classes, so take them all.
_ONNXRUNTIME_ERRORS = tuple(
    kind
    for kind in vars(onnxruntime_pybind11_state).values()
    if isinstance(kind, type) and issubclass(kind, Exception)
)
_MESSAGE_CHARACTERS = 200  # onnxruntime's messages run to kilobytes with shapes and node names

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass(frozen=True)
class GraphInput:
    name: str
    dtype: type
    shape: tuple[int | str | None, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


class Graph:
    """A loaded component graph (text_encoder, unet, vae_encoder or vae_decoder)."""

    def __init__(self, component: str, session: ort.InferenceSession) -> None:
        self.component = component
        self.session: ort.InferenceSession | None = session
        self.inputs = []
        for node in session.get_inputs():
            if node.type not in _ONNX_TO_NUMPY:
                raise ModelFolderError(
                    f"{component} input {node.name!r} has type {node.type}, which sdrun cannot feed; "
                    "export the model folder again"
                )
            self.inputs.append(GraphInput(node.name, _ONNX_TO_NUMPY[node.type], tuple(node.shape)))
        self.output_names = [node.name for node in session.get_outputs()]

    def input_of_rank(self, *ranks: int) -> GraphInput:
        """The one input whose rank is among `ranks` (e.g. the UNet's rank-4 sample)."""
        found = [node for node in self.inputs if node.rank in ranks]
        if len(found) != 1:
            names = ", ".join(f"{node.name} (rank {node.rank})" for node in self.inputs)
            raise ModelFolderError(
                f"{self.component} graph inputs [{names}] are not those of a Stable Diffusion 1.x "
                f"{self.component}: expected exactly one of rank {' or '.join(map(str, ranks))}"
            )
        return found[0]

    def check_inputs(self, expected: list[GraphInput]) -> None:
        """Refuse a graph with inputs beyond those sdrun feeds (say an SDXL UNet's text_embeds)."""
        extra = [node.name for node in self.inputs if node not in expected]
        if extra:
            raise ModelFolderError(
                f"{self.component} graph has inputs sdrun does not know: {', '.join(extra)}; "
                "sdrun runs Stable Diffusion 1.x folders"
            )

    def close(self) -> None:
        """Free the session now, even while something still holds this Graph (a caller's local variable
        would otherwise keep a released model's weights resident until it goes out of scope)."""
        self.session = None

    def run(
        self,
        feeds: dict[GraphInput, np.ndarray],
        output: str | None = None,
        shape: tuple[int | None, ...] | None = None,
    ) -> np.ndarray:
        """One output (by name, else the first), float outputs as float32, checked finite and, where
        `shape` is given, of that shape (None: any size on that axis): a graph from a stranger's folder
        may return anything, and a NaN would otherwise become a black picture."""
        if self.session is None:
            raise RuntimeError(f"the {self.component} session was released; open the graph again")
        arrays = {node.name: np.asarray(value, dtype=node.dtype, order="C") for node, value in feeds.items()}
        result = self._run_session(output or self.output_names[0], arrays)
        if shape is not None and (
            result.ndim != len(shape)
            or any(want not in (None, got) for want, got in zip(shape, result.shape, strict=True))
        ):
            expected = "x".join("?" if size is None else str(size) for size in shape)
            raise GraphOutputError(
                f"the {self.component} graph returned shape {list(result.shape)}, not {expected}; "
                "the model folder is not a working Stable Diffusion export"
            )
        if np.issubdtype(result.dtype, np.integer):
            return result
        if not np.issubdtype(result.dtype, np.floating):
            raise GraphOutputError(
                f"the {self.component} graph returned {result.dtype} values, not numbers; "
                "the model folder is not a working Stable Diffusion export"
            )
        result = result.astype(np.float32)
        if not np.isfinite(result).all():
            raise GraphOutputError(
                f"the {self.component} graph returned NaN or infinite values; nothing was written "
                "(the model's weights or its settings are broken: try another guidance scale or model folder)"
            )
        return result

    def _run_session(self, output: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """One output of the session, onnxruntime's failures as one line naming the graph and the fix."""
        assert self.session is not None
        try:
            (result,) = self.session.run([output], arrays)
        except MemoryError as error:
            raise GraphRunError(
                f"the {self.component} graph ran out of memory; choose a smaller size or fewer images, or "
                "add --low-memory"
            ) from error
        except _ONNXRUNTIME_ERRORS as error:
            message = " ".join(str(error).split())
            if len(message) > _MESSAGE_CHARACTERS:
                message = message[:_MESSAGE_CHARACTERS] + "..."
            fix = (
                "choose a smaller size or fewer images, or add --low-memory"
                if "alloc" in message.lower()
                else "export the model folder again (sdexport build), or use another one"
            )
            raise GraphRunError(
                f"onnxruntime could not run the {self.component} graph ({message}); {fix}"
            ) from error
        return np.asarray(result)
