"""Run by tests/runtime/test_openvino.py with the Python of the onnxruntime-openvino environment
(.venv/openvino): the model folder on onnxruntime's OpenVINO provider, in bf16 and in f32.

    python openvino_probe.py FOLDER INPUTS.npz OUT_DIR PROMPT SEED

Writes OUT_DIR/outputs.npz (each graph's output for INPUTS' feeds, keyed "precision/component", and the
generated picture, "precision/image"; bf16 only where the CPU has it) and OUT_DIR/report.json (versions,
the providers each graph's nodes ran on, the pipeline's sessions' providers, what "auto" picks, what is
refused or warned about).
Only numpy, onnxruntime and sdrun are imported: the environment has no torch.
"""

import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sdrun.errors import ProviderError
from sdrun.openvino import PRECISION_ENV, SplitGraphWarning, cpu_has_bf16
from sdrun.pipeline import Pipeline
from sdrun.providers import create_session, requested_providers

GRAPHS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


def graph_feeds(feeds: Mapping[str, np.ndarray], component: str) -> dict[str, np.ndarray]:
    """The feeds of one graph, out of feeds keyed "component/input"."""
    prefix = component + "/"
    return {key.removeprefix(prefix): feeds[key] for key in feeds if key.startswith(prefix)}


def node_providers(session: ort.InferenceSession) -> list[str]:
    """The providers that ran the nodes of the session's last run, from onnxruntime's profile."""
    events = json.loads(Path(session.end_profiling()).read_text())
    return sorted({event["args"]["provider"] for event in events if event.get("cat") == "Node"})


def run_graphs(
    folder: Path, feeds: Mapping[str, np.ndarray], manifest: dict, out: Path, precision: str
) -> dict:
    """Each graph on the OpenVINO provider, alone; its output into `outputs`, its node placement back."""
    request = requested_providers("openvino", manifest)
    placement, outputs = {}, {}
    for component in GRAPHS:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(out / f"profile-{component}-{precision}")
        session = create_session(folder / component / "model.onnx", request, options)
        output = session.get_outputs()[0].name
        (outputs[f"{precision}/{component}"],) = session.run([output], graph_feeds(feeds, component))
        placement[component] = node_providers(session)
    return {"placement": placement, "outputs": outputs}


def refusals(manifest: dict) -> dict:
    """What sdrun decides for manifests other than this folder's, without creating sessions."""
    found = {"auto": requested_providers("auto", manifest).providers[0]}
    onnxruntime_target = {**manifest, "target": "onnxruntime"}
    found["auto, onnxruntime target"] = requested_providers("auto", onnxruntime_target).providers[0]
    found["auto, no manifest"] = requested_providers("auto", {}).providers[0]
    try:
        requested_providers("openvino", {**manifest, "quantization": "int8"})
        found["int8"] = "accepted"
    except ProviderError as error:
        found["int8"] = str(error)
    fused = {**manifest, "target": "onnxruntime", "components": {"unet": {"fused_attentions": 3}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        requested_providers("openvino", fused)
    found["fused warnings"] = [str(w.message) for w in caught if issubclass(w.category, SplitGraphWarning)]
    return found


def main() -> None:
    folder, inputs, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    prompt, seed = sys.argv[4], int(sys.argv[5])
    manifest = json.loads((folder / "sdexport_manifest.json").read_text())
    with np.load(inputs) as stored:
        feeds = dict(stored)
    report = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "runs": {}}
    arrays = {}
    # bf16 only where the CPU computes it (OpenVINO would run f32 under that name elsewhere).
    for precision in ("bf16", "f32") if cpu_has_bf16() else ("f32",):
        os.environ[PRECISION_ENV] = precision
        graphs = run_graphs(folder, feeds, manifest, out, precision)
        arrays.update(graphs.pop("outputs"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline = Pipeline.load(folder, "openvino")
        result = pipeline.generate(prompt, seed=seed)
        arrays[f"{precision}/image"] = np.asarray(result.images[0])
        graphs["pipeline"] = {
            name: graph.session.get_providers() for name, graph in pipeline.sessions.open_graphs.items()
        }
        graphs["pipeline provider"] = pipeline.provider
        graphs["warnings"] = [str(warning.message) for warning in caught]
        report["runs"][precision] = graphs
    report["decisions"] = refusals(manifest)
    np.savez(out / "outputs.npz", **arrays)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
