"""The model shipped inside the package: tiny-shapes (trained by `python -m sdexport.tiny.train`) and its
few-step student (an LCM-LoRA and a tiny decoder, distilled by `python -m sdexport.tiny.distill`).

The names of every file here, for the commands that write them, `sdexport build` (which builds both when
given no SOURCE), tests and scripts. pyproject's package-data ships them.
"""

from pathlib import Path

FOLDER = Path(__file__).parent
MODEL_NAME = "tiny-shapes"
# The teacher: an original-layout checkpoint, its config file beside it (the loader finds it by its
# stem), and the facts of its training run.
CHECKPOINT_FILE = f"{MODEL_NAME}.safetensors"
CONFIG_FILE = f"{MODEL_NAME}.yaml"
TRAINING_FACTS_FILE = f"{MODEL_NAME}.training.json"
# The student: the LoRA merged into the teacher, the TAESD decoder beside it, and the facts of both runs.
STUDENT_LORA_FILE = f"{MODEL_NAME}-lcm-lora.safetensors"
STUDENT_TINY_VAE_FILE = f"{MODEL_NAME}-taesd-decoder.safetensors"
STUDENT_TRAINING_FACTS_FILE = f"{MODEL_NAME}-student.training.json"

CHECKPOINT = FOLDER / CHECKPOINT_FILE
STUDENT_LORA = FOLDER / STUDENT_LORA_FILE
STUDENT_TINY_VAE = FOLDER / STUDENT_TINY_VAE_FILE
