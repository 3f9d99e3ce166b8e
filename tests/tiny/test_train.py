"""The training command's output is an original-layout checkpoint that sdexport's loader reads back."""

from pathlib import Path

import numpy as np
import torch

from sdexport.checkpoints import load_model
from sdexport.embedded import CHECKPOINT_FILE, CONFIG_FILE, TRAINING_FACTS_FILE
from sdexport.tiny.shapes import Scene, draw
from sdexport.tiny.train import TrainSettings, foreground_weight, save, to_model_range, train


def test_a_few_steps_save_a_checkpoint_the_loader_reads(tmp_path: Path) -> None:
    settings = TrainSettings(images_per_caption=1, vae_steps=2, vae_batch=2, diffusion_steps=2,
                             diffusion_batch=2, eval_seeds=0)
    model, facts = train(settings, log=lambda line: None)
    save(model, facts, tmp_path)

    loaded = load_model(tmp_path / CHECKPOINT_FILE)
    assert loaded.kind == "original" and loaded.source_dtype == "float16"
    assert loaded.model.config == model.config
    assert loaded.model.config.vae.scaling_factor == facts["scaling_factor"] != 1.0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value.half().float())
    assert (tmp_path / TRAINING_FACTS_FILE).is_file() and (tmp_path / CONFIG_FILE).is_file()


def test_foreground_weight_marks_the_shape_and_nothing_else() -> None:
    picture = draw(Scene("large", "white", "square", "black"), np.random.default_rng(0))
    weight = foreground_weight(to_model_range(picture[None]), 4.0)[0, 0].numpy()
    shape = np.abs(picture.astype(int) - picture[0, 0].astype(int)).max(axis=-1) > 20
    assert set(np.unique(weight)) == {1.0, 5.0}
    assert (weight[shape] == 5.0).mean() > 0.95 and (weight[~shape] == 1.0).mean() > 0.99
