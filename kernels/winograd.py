"""The transforms of Winograd's minimal filtering F(m x m, 3 x 3), which every backend uses.

A 3x3 convolution at stride 1 gives each ``m x m`` block of its output from an ``a x a`` input tile
``d`` (``a = m + 2``), the tiles overlapping by 2 and taken at stride ``m``::

    y = A^T [(G g G^T) * (B^T d B)] A

with ``g`` the 3x3 kernel of one (input, output) channel pair and ``*`` the elementwise product.  Summed
over input channels, each of the ``a*a`` positions of a transformed tile is one GEMM, so a tile costs
``a*a`` multiplications per channel pair where the direct sum costs ``9 m^2``: 2.25x fewer for
F(2x2, 3x3), 4x fewer for F(4x4, 3x3).  The larger tile also moves fewer transformed values per output
(``a^2 / m^2``: 4 against 2.25), but its transforms hold larger coefficients, so its float32 results
carry about ten times F(2x2)'s rounding error.  The matrices are Lavin and Gray's (2016), with
interpolation points 0, 1, -1 (and 2, -2 for F(4x4)) and infinity.
"""

import numpy as np

#: Output tile sides ``m`` the backends compute.
WINOGRAD_TILES = (2, 4)

_B_T = {
    2: [[1, 0, -1, 0],
        [0, 1, 1, 0],
        [0, -1, 1, 0],
        [0, 1, 0, -1]],
    4: [[4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]],
}
_G = {
    2: [[1, 0, 0],
        [1 / 2, 1 / 2, 1 / 2],
        [1 / 2, -1 / 2, 1 / 2],
        [0, 0, 1]],
    4: [[1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1]],
}
_A_T = {
    2: [[1, 1, 1, 0],
        [0, 1, -1, -1]],
    4: [[1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1]],
}


def check_tile(tile):
    """Raise ``ValueError`` unless ``tile`` is one of :data:`WINOGRAD_TILES`."""
    if tile not in WINOGRAD_TILES:
        raise ValueError(f"Winograd tile must be one of {WINOGRAD_TILES} (F(m x m, 3 x 3)), got {tile!r}")


def winograd_matrices(tile, dtype=np.float64):
    """``(B^T (a, a), G (a, 3), A^T (m, a))`` of F(tile x tile, 3 x 3), ``a = tile + 2``, as ``dtype``."""
    check_tile(tile)
    return tuple(np.array(matrix[tile], dtype=dtype) for matrix in (_B_T, _G, _A_T))


def tile_of_positions(positions):
    """The tile side ``m`` whose transformed tiles have ``positions = (m + 2)^2`` values (16 or 36)."""
    for tile in WINOGRAD_TILES:
        if (tile + 2) ** 2 == positions:
            return tile
    raise ValueError(f"Winograd arrays have {[(tile + 2) ** 2 for tile in WINOGRAD_TILES]} positions "
                     f"along their first axis, got {positions}")
