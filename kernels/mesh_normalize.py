"""MV-Adapter's mesh normalisation for its geometry maps (``load_mesh`` in upstream
``mvadapter/utils/mesh_utils/mesh.py``), as pure functions on [N, 3] tensors.

Upstream's geometry scripts (``scripts/inference_{tg2mv,ig2mv}_{sd,sdxl}.py``) call
``load_mesh(path, rescale=True)``, i.e.:

1. no centring (``move_to_center=False``; when enabled upstream subtracts the vertex **mean**, not the
   bounding-box centre);
2. ``v = v / max|v| * 0.5`` (max over all coordinates of all vertices, after the optional centring);
3. axis conversion to the Z-up world with ``shape_init_mesh_up="+y"``, ``shape_init_mesh_front="+x"``:
   ``z = up``, ``x = front``, ``y = z x x``, new coordinates = ``(front . v, (up x front) . v, up . v)``.
   For the defaults that is ``(x, y, z) -> (x, -z, y)``. Normals rotate the same way.
4. ``front_x_to_y=False`` (the texture pipeline defaults it to True): ``(x, y) -> (y, -x)`` afterwards.

The signed permutation of step 3 leaves max|v| unchanged, so steps 2 and 3 commute. ``center`` adds the
bounding-box centring the Parallax spec asks for as an option ("bbox"); "none" is upstream's behaviour.
"""

from __future__ import annotations

import torch

DIRECTIONS = ("+x", "+y", "+z", "-x", "-y", "-z")
DEFAULT_UP = "+y"
DEFAULT_FRONT = "+x"
DEFAULT_SCALE = 0.5
CENTERS = ("none", "bbox", "mean")


def direction(name: str) -> torch.Tensor:
    """'+x' -> (1, 0, 0), '-z' -> (0, 0, -1), ... (float64)."""
    if name not in DIRECTIONS:
        raise ValueError(f"axis must be one of {DIRECTIONS}, got {name!r}")
    vec = torch.zeros(3, dtype=torch.float64)
    vec["xyz".index(name[1])] = 1.0 if name[0] == "+" else -1.0
    return vec


def axis_conversion(up: str = DEFAULT_UP, front: str = DEFAULT_FRONT, front_x_to_y: bool = False) -> torch.Tensor:
    """[3, 3] float64 matrix M with ``v_world = M @ v_mesh``: the mesh's ``up`` becomes +Z and its ``front``
    +X (then -Y when ``front_x_to_y``)."""
    u, f = direction(up), direction(front)
    if up[1] == front[1]:
        raise ValueError(f"up {up!r} and front {front!r} must be different axes")
    m = torch.stack([f, torch.linalg.cross(u, f), u])  # rows: the mesh vectors that become x, y, z
    if front_x_to_y:
        m = torch.stack([m[1], -m[0], m[2]])
    return m


def center_offset(vertices: torch.Tensor, center: str = "none") -> torch.Tensor:
    """The point subtracted before scaling: 0 ("none", upstream's geometry scripts), the bounding-box
    centre ("bbox") or the vertex mean ("mean", upstream's ``move_to_center``)."""
    if center == "none":
        return torch.zeros(3, dtype=vertices.dtype, device=vertices.device)
    if center == "bbox":
        return (vertices.amin(dim=0) + vertices.amax(dim=0)) / 2
    if center == "mean":
        return vertices.mean(dim=0)
    raise ValueError(f"center must be one of {CENTERS}, got {center!r}")


def rescale(vertices: torch.Tensor, scale: float = DEFAULT_SCALE, center: str = "none") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(v - offset) / max|v - offset| * scale; returns (vertices, offset, factor) with
    ``v_new = (v - offset) * factor``."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] == 0:
        raise ValueError(f"vertices must be a non-empty [N, 3] tensor, got {tuple(vertices.shape)}")
    offset = center_offset(vertices, center)
    moved = vertices - offset
    extent = float(moved.abs().max())
    if not extent > 0 or not torch.isfinite(moved).all():
        raise ValueError("cannot rescale a mesh whose vertices are all at the centre or not finite")
    factor = scale / extent
    return moved * factor, offset, factor


def normalize_mesh(vertices: torch.Tensor, normals: torch.Tensor | None = None, up: str = DEFAULT_UP,
                   front: str = DEFAULT_FRONT, scale: float = DEFAULT_SCALE, center: str = "none",
                   front_x_to_y: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Upstream's geometry-script normalisation (defaults) of ``vertices`` [N, 3] and optional ``normals``
    [N, 3]: centre (option), rescale to max|v| = ``scale``, convert axes to the Z-up world."""
    moved, _, _ = rescale(vertices, scale, center)
    m = axis_conversion(up, front, front_x_to_y).to(device=vertices.device, dtype=vertices.dtype)
    out = moved @ m.T
    if normals is not None:
        normals = normals @ m.T
    return out, normals
