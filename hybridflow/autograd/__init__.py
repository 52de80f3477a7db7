"""Invertible machinery: the module contract, chains and the reconstructing rule."""

from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.function import ReconstructingFunction
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_wrt
from hybridflow.autograd.tiling import Halo, Tileable, TileSize, active_tile_size, tile_grid, tiled

__all__ = [
    "Chain",
    "Halo",
    "InvertibleModule",
    "Mode",
    "ReconstructingFunction",
    "Reconstruction",
    "TileSize",
    "Tileable",
    "active_tile_size",
    "tile_grid",
    "tiled",
    "vjp_wrt",
]
