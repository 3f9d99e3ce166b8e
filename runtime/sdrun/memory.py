"""How a pipeline spends memory: which sessions stay open, and how onnxruntime allocates.

The default policy keeps all three sessions open (each generation after the first starts at once) and
runs onnxruntime without its memory arena (freed buffers go back to the system: see `memory_arena`);
the fast policy is the same with the arena.
The low-memory policy trades time for peak resident memory:
- each session is created when its stage starts and released when it ends (the text encoder before the
  sampling loop, the UNet for the loop, the VAE decoder after it), so at most one model's weights are
  resident at a time;
- the conditional and unconditional UNet passes run one after the other (half the activations);
- nodes run in priority order, which computes a weight-only int8 graph's dequantized weights just before
  the node that reads them instead of all at once;
- the VAE decodes in tiles (sdrun.tiled_vae);
- only onnxruntime's basic graph optimizations: no NCHWc layout, so that weights in an external data
  file (`model.onnx.data`), which onnxruntime memory-maps, are read in place instead of copied, and no
  fusions that would upset the priority order;
- glibc is asked to return the freed heap to the system after each release (a released session leaves
  many mid-sized buffers in the heap, still resident: 90 MB of the SD 1.5 int8 text encoder's), and to
  give every allocation from 256 KiB up its own mapping, unmapped when freed (glibc otherwise raises
  that threshold as buffers are freed and serves later ones from a heap that stays resident). The
  latter is process-wide: it is set when a pipeline with this policy loads.
The measured effect of each is in BENCHMARKS.md.
"""

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import onnxruntime as ort

from sdrun.graphs import Graph

_OPTIMIZATION_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


@dataclass(frozen=True)
class MemoryPolicy:
    """Each field one of the tools above, so that each can be measured on its own."""

    keep_sessions: bool = True
    sequential_guidance: bool = False
    # onnxruntime's CPU memory arena (and memory-pattern planning) keeps every buffer it ever allocated:
    # with it, the SD 1.5 UNet's activations stay pooled while the VAE decodes, and a default 512x512
    # generation peaked at 7.1 GB instead of 5.35 GB. Without it each large buffer is mapped afresh on
    # every call: the UNet step at 512 took 5.3-5.9 s against 4.1-4.3 s with it (BENCHMARKS.md). Off by
    # default, for the peak.
    memory_arena: bool = False
    # None: the pipeline decides by the image's size (sdrun.pipeline.AUTO_TILE_PIXELS).
    tiled_vae: bool | None = None
    # onnxruntime's graph optimization level: "all" adds the NCHWc convolution layout, which copies every
    # convolution weight at session creation (so external weights no longer stay in their memory-mapped
    # file); "extended" adds fusions whose new nodes the priority order runs after the weight
    # dequantizations, so that an int8-weight UNet's float weights all exist at once (3.4 GB against
    # 1.45 GB for "basic", SD 1.5 at 512x512).
    optimization_level: str = "all"
    priority_order: bool = False
    # malloc_trim after a session is released (glibc only).
    trim_heap: bool = False
    # glibc's M_MMAP_THRESHOLD in bytes, fixed for the process (None: glibc's adaptive default).
    mmap_threshold: int | None = None

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = self.memory_arena
        options.enable_mem_pattern = self.memory_arena
        if self.priority_order:
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[self.optimization_level]
        return options


DEFAULT_POLICY = MemoryPolicy()
# The default with onnxruntime's arena, for machines with memory to spare: SD 1.5 fp32 at 512x512, UNet
# step 4.00 s against 4.27 s, peak 8.3 GB against 5.4 GB (BENCHMARKS.md).
FAST_POLICY = MemoryPolicy(memory_arena=True)
LOW_MEMORY_POLICY = MemoryPolicy(
    keep_sessions=False,
    sequential_guidance=True,
    tiled_vae=True,
    optimization_level="basic",
    priority_order=True,
    trim_heap=True,
    mmap_threshold=256 * 1024,
)


class Sessions:
    """A pipeline's graphs by component, each opened by `open_graph` on first use; when `keep` is False,
    released again when its use ends."""

    def __init__(self, open_graph: Callable[[str], Graph], keep: bool, trim_heap: bool = False) -> None:
        self._open_graph = open_graph
        self.keep = keep
        self.trim_heap = trim_heap
        self._open: dict[str, Graph] = {}
        self._users: dict[str, int] = {}  # uses in progress, by component
        self.open_seconds: dict[str, float] = {}  # how long each graph's latest opening took

    def preload(self, *components: str) -> None:
        """Open these graphs now, so that folder and provider errors and the cold start come at load."""
        for component in components:
            self.get(component)

    def get(self, component: str) -> Graph:
        """The open graph of `component`, opened if need be; it stays open until a `use` of it ends (or
        for good when sessions are kept)."""
        if component not in self._open:
            started = time.perf_counter()
            self._open[component] = self._open_graph(component)
            self.open_seconds[component] = time.perf_counter() - started
        return self._open[component]

    @contextmanager
    def use(self, component: str) -> Iterator[Graph]:
        """The graph of `component` for one stage; released when the outermost use of it ends, unless
        sessions are kept."""
        self._users[component] = self._users.get(component, 0) + 1
        try:
            yield self.get(component)
        finally:
            self._users[component] -= 1
            if not self.keep and not self._users[component]:
                self.release(component)

    def release(self, component: str) -> None:
        graph = self._open.pop(component, None)
        if graph is not None:
            graph.close()
            gc.collect()
            if self.trim_heap:
                release_freed_memory()

    @property
    def open_graphs(self) -> dict[str, Graph]:
        return dict(self._open)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, found on first use (find_library may start a subprocess), or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def set_mmap_threshold(size: int) -> None:
    """glibc: allocations of at least `size` bytes get their own mapping (a no-op where there is no glibc)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, size)


def release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the system (a no-op where there is no glibc)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
