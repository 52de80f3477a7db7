"""Every file hybridflow writes or reads: atomic writes, checksums, model files, checkpoints.

:mod:`~hybridflow.io.atomic` writes (temporary file, then ``os.replace``);
:mod:`~hybridflow.io.integrity` checksums plain data and is the one checked ``torch.load``
(``weights_only=True``); :mod:`~hybridflow.io.model_file` saves and loads whole models
(:func:`hybridflow.save`, :func:`hybridflow.load`); :mod:`~hybridflow.io.state_dict` loads
weights after checking them; :mod:`~hybridflow.io.checkpoint` holds training checkpoints;
:mod:`~hybridflow.io.figures` writes matplotlib figures.
"""

from hybridflow.io.atomic import atomic_torch_save, atomic_write, write_text
from hybridflow.io.checkpoint import (
    CHECKPOINT_VERSION,
    check_config_matches,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
)
from hybridflow.io.figures import pyplot, save_figure
from hybridflow.io.integrity import digest, first_line, read_torch_file, verify_digest
from hybridflow.io.model_file import FORMAT_VERSION, READABLE_VERSIONS, load, save
from hybridflow.io.state_dict import check_state_dict, load_state_dict

__all__ = [
    "CHECKPOINT_VERSION",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "atomic_torch_save",
    "atomic_write",
    "check_config_matches",
    "check_state_dict",
    "digest",
    "first_line",
    "load",
    "load_checkpoint",
    "load_run_checkpoint",
    "load_state_dict",
    "pyplot",
    "read_torch_file",
    "save",
    "save_checkpoint",
    "save_figure",
    "verify_digest",
    "write_text",
]
