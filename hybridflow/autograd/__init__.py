"""Invertible machinery: the module contract, chains and the reconstructing rule."""

from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.drift import DriftPolicy, DriftReport, max_drift
from hybridflow.autograd.function import Reconstructible, ReconstructingFunction, Slices
from hybridflow.autograd.modes import chains_in_mode
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_wrt
from hybridflow.autograd.replay import draws_random_numbers
from hybridflow.autograd.tiling import Halo, Tileable, TileSize, active_tile_size, tile_grid, tiled
from hybridflow.autograd.validation import set_validation, validation_enabled

__all__ = [
    "Chain",
    "DriftPolicy",
    "DriftReport",
    "Halo",
    "InvertibleModule",
    "Mode",
    "Reconstructible",
    "ReconstructingFunction",
    "Reconstruction",
    "Slices",
    "TileSize",
    "Tileable",
    "active_tile_size",
    "chains_in_mode",
    "draws_random_numbers",
    "max_drift",
    "set_validation",
    "tile_grid",
    "tiled",
    "validation_enabled",
    "vjp_wrt",
]
