"""The library as apps embed it: top-level imports, py.typed, close() and `with`, the progress hook, and
the concurrency model (calls serialized by the pipeline's lock)."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import PROMPT

import sdrun
from sdrun import ModelFolderError, Pipeline, Progress, SdrunError, SettingsError
from sdrun.folder import UnverifiedFolderWarning
from sdrun.folder_layout import MANIFEST_FILE
from sdrun.graphs import Graph


def test_the_package_exports_its_api_and_ships_py_typed() -> None:
    assert set(sdrun.__all__) >= {"Pipeline", "SdrunError", "SettingsError", "ModelFolderError", "Progress"}
    assert all(hasattr(sdrun, name) for name in sdrun.__all__)
    assert (Path(sdrun.__file__).parent / "py.typed").is_file()


def test_with_block_closes_every_session_and_a_closed_pipeline_refuses(served_folder: Path) -> None:
    with Pipeline.load(served_folder, provider="cpu") as pipeline:
        pipeline.generate(PROMPT, seed=1, steps=2)
        assert pipeline.sessions.open_graphs
    assert not pipeline.sessions.open_graphs
    with pytest.raises(SdrunError, match="closed"):
        pipeline.generate(PROMPT, seed=1, steps=2)
    pipeline.close()  # idempotent


def test_progress_says_image_and_step_and_stops_the_run(reference: Pipeline) -> None:
    seen: list[Progress] = []
    steps_seen: list[tuple[int, int]] = []
    result = reference.generate(
        PROMPT,
        seed=3,
        steps=3,
        num_images=2,
        progress=seen.append,
        callback=lambda step, total, latents: steps_seen.append((step, total)),
    )
    assert [(p.image, p.step, p.steps, p.images) for p in seen] == [
        (image, step, 3, 2) for image in range(2) for step in (1, 2, 3)
    ]
    assert [p.done for p in seen] == [1, 2, 3, 4, 5, 6] and seen[-1].fraction == 1.0
    assert steps_seen == [(k, 6) for k in range(6)]  # the old callback is unchanged
    assert len(result.images) == 2 and not result.stopped

    stopped = reference.generate(PROMPT, seed=3, steps=3, num_images=2, progress=lambda p: p.step == 2)
    assert stopped.stopped and len(stopped.images) == 1


def _generate_in_threads(pipeline: Pipeline, seeds: list[int]) -> dict[int, np.ndarray]:
    images: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(seeds))

    def work(seed: int) -> None:
        try:
            start.wait()
            images[seed] = np.asarray(pipeline.generate(PROMPT, seed=seed, steps=6).images[0])
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return images


def test_threads_get_the_images_of_sequential_calls(reference: Pipeline) -> None:
    seeds = [11, 12, 13]
    alone = {seed: np.asarray(reference.generate(PROMPT, seed=seed, steps=6).images[0]) for seed in seeds}
    together = _generate_in_threads(reference, seeds)
    for seed in seeds:
        np.testing.assert_array_equal(together[seed], alone[seed])


def test_low_memory_threads_open_one_network_at_a_time(
    served_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline.load(served_folder, provider="cpu", low_memory=True)
    most_open = 0
    open_graph = pipeline.sessions._open_graph

    def counting_open(component: str) -> Graph:
        nonlocal most_open
        graph = open_graph(component)
        most_open = max(most_open, len(pipeline.sessions.open_graphs) + 1)
        return graph

    monkeypatch.setattr(pipeline.sessions, "_open_graph", counting_open)
    _generate_in_threads(pipeline, [21, 22, 23])
    assert most_open == 1


def test_integer_settings_take_numpy_integers_and_refuse_bools(reference: Pipeline) -> None:
    made = reference.generate(PROMPT, seed=np.uint32(4), steps=np.int64(2), num_images=np.int8(1))
    assert made.settings[0].seed == 4 and made.settings[0].steps == 2
    with pytest.raises(SettingsError, match="whole number"):
        reference.generate(PROMPT, seed=True, steps=2)


def test_library_errors_chain_their_cause(served_folder: Path, reference: Pipeline, tmp_path: Path) -> None:
    """One line for people, and the underlying exception for programs (`raise ... from error`)."""
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(SettingsError) as unreadable:
        reference.generate(PROMPT, init_image=not_an_image)
    assert isinstance(unreadable.value.__cause__, OSError)  # PIL's UnidentifiedImageError

    folder = tmp_path / "folder"
    shutil.copytree(served_folder, folder)
    (folder / MANIFEST_FILE).unlink()  # else the manifest's sizes refuse the file before it is parsed
    (folder / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 1000,')
    with pytest.raises(ModelFolderError) as damaged, pytest.warns(UnverifiedFolderWarning):
        Pipeline.load(folder, provider="cpu")
    assert isinstance(damaged.value.__cause__, ValueError)  # json's JSONDecodeError
