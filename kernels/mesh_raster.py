"""A pure-torch z-buffer rasteriser for triangle meshes, for MV-Adapter's geometry maps (position, normal).

Conventions (the same as ``kernels/mv_cameras.py``):

- ``w2c``: [V, 4, 4] world-to-camera matrices in **OpenCV** axes (x right, y down, z forward), e.g.
  ``CameraSet.w2c`` or ``opencv_world_to_camera(c2w)``. Depth is the camera-space z (distance along the
  viewing direction, positive in front of the camera).
- Image: row 0 is the top of the image (camera up), column 0 its left; pixel (row i, column j) is sampled at
  its centre ``(x, y) = (j + 0.5, i + 0.5)`` in pixel units. This is what upstream gets from nvdiffrast
  with its y-flipped projection matrix (``proj[1, 1] = -2 / (top - bottom)``): output rows top to bottom.
- Orthographic: camera x in ``[-h, h]`` maps to ``[0, W]`` and camera y in ``[-h, h]`` to ``[0, H]``
  (``h = ortho_half_extent``, 0.55 upstream; like upstream, one extent for both axes, so non-square images
  get non-square pixels).
- Perspective: pixel = ``K @ (x / z, y / z, 1)`` with ``K`` [V, 3, 3] OpenCV intrinsics at the output size
  (``CameraSet.intrinsics`` when built at that size). A triangle with any vertex at ``z <= near`` is dropped
  whole (no near-plane clipping); barycentrics are perspective-correct.
- Depth range: fragments with depth outside ``[near, far]`` are discarded (upstream: near 0.1, far 100).
- Both windings are rasterised (no culling): each pixel shows the nearest surface. Equal depths go to the
  lower face index. Degenerate (zero screen area) and non-finite triangles are skipped.
- Coverage: a pixel centre on an edge counts as inside (both neighbours of a shared edge cover it; the
  depth test picks one), so coverage can differ from another rasteriser only on exact edge ties.

Outputs (``Rasterized``): ``face_idx`` [V, H, W] int64 (-1 = background), ``bary`` [V, H, W, 3] float32
(world-space barycentrics of the visible point with respect to ``faces[f, 0..2]``; 0 on background),
``depth`` [V, H, W] float32 (0 on background). ``interpolate`` turns them into attribute maps, e.g. world
positions (``interpolate(vertices, ...)``), smooth normals (``interpolate(vertex_normals(...), ...)`` then
normalise), flat normals (``face_attribute(face_normals(...), ...)``).

Memory: no [pixels x triangles] tensor. Triangles are processed in chunks whose screen bounding boxes
(clipped to the image) hold at most ``max_fragments`` candidate pixels in total (a single triangle's box
is at most the image); each chunk tests only the pixels in its triangles' boxes and merges its fragments
into the z-buffer with ``scatter_reduce(amin)`` over a packed (depth, face) int64 key. Coverage and depth
order are decided in float32 (vertex-relative, so errors stay near 1e-7 px); the winners' barycentrics and
depth are then recomputed in float64. Works on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROJECTIONS = ("orthographic", "perspective")
DEFAULT_MAX_FRAGMENTS = 1 << 21
_EMPTY = torch.iinfo(torch.int64).max
_WINDOW = 32  # boxes up to 32 x 32 px go through the broadcast path
_DEGENERATE_DET = 1e-12  # |2 x screen area| in px^2 below which a triangle counts as degenerate


@dataclass(frozen=True)
class Rasterized:
    face_idx: torch.Tensor  # [V, H, W] int64, -1 = background
    bary: torch.Tensor  # [V, H, W, 3] float32
    depth: torch.Tensor  # [V, H, W] float32, 0 on background

    @property
    def mask(self) -> torch.Tensor:
        return self.face_idx >= 0


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point:
        raise ValueError("faces must be an integer tensor")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ValueError(f"face indices must be in [0, {vertices.shape[0]}), got [{int(faces.min())}, "
                         f"{int(faces.max())}]")
    if faces.shape[0] >= 1 << 31:
        raise ValueError("at most 2**31 - 1 faces")


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [-2**31, 2**31) with the same order (for packing into a sort key)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    # negative floats: reverse their order; all: shift so the result is monotonic in x
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _screen(cam: torch.Tensor, projection: str, height: int, width: int, half_extent: float,
            k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space points [N, 3] (float64) -> pixel coordinates [N, 2] and the affine depth key [N]
    (z for orthographic, 1 / z for perspective)."""
    if projection == "orthographic":
        sx = (cam[:, 0] + half_extent) * (width / (2.0 * half_extent))
        sy = (cam[:, 1] + half_extent) * (height / (2.0 * half_extent))
        return torch.stack([sx, sy], dim=-1), cam[:, 2]
    z = cam[:, 2]
    inv_z = 1.0 / z
    sx = k[0, 0] * cam[:, 0] * inv_z + k[0, 1] * cam[:, 1] * inv_z + k[0, 2]
    sy = k[1, 1] * cam[:, 1] * inv_z + k[1, 2]
    return torch.stack([sx, sy], dim=-1), inv_z


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, w2c: torch.Tensor, height: int, width: int,
              projection: str = "orthographic", ortho_half_extent: float = 0.55,
              intrinsics: torch.Tensor | None = None, near: float = 0.1, far: float = 100.0,
              max_fragments: int = DEFAULT_MAX_FRAGMENTS) -> Rasterized:
    """Rasterise ``faces`` of ``vertices`` for each camera in ``w2c`` (see the module docstring)."""
    _check_mesh(vertices, faces)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if w2c.ndim == 2:
        w2c = w2c[None]
    if w2c.shape[1:] != (4, 4):
        raise ValueError(f"w2c must be [V, 4, 4], got {tuple(w2c.shape)}")
    views = w2c.shape[0]
    if projection == "orthographic":
        if not ortho_half_extent > 0:
            raise ValueError(f"ortho_half_extent must be positive, got {ortho_half_extent}")
    else:
        if intrinsics is None:
            raise ValueError("perspective rasterisation needs intrinsics [V, 3, 3] at the output size")
        intrinsics = intrinsics.reshape(-1, 3, 3).to(device=vertices.device, dtype=torch.float64)
        if intrinsics.shape[0] == 1:
            intrinsics = intrinsics.expand(views, 3, 3)
        if intrinsics.shape[0] != views:
            raise ValueError(f"{intrinsics.shape[0]} intrinsics for {views} cameras")
        near = max(float(near), 1e-9)

    device = vertices.device
    pixels = height * width
    budget = max(int(max_fragments), pixels)
    face_idx = torch.full((views, height, width), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((views, height, width, 3), dtype=torch.float32, device=device)
    depth = torch.zeros((views, height, width), dtype=torch.float32, device=device)
    if faces.shape[0] == 0:
        return Rasterized(face_idx, bary, depth)

    faces = faces.to(device=device, dtype=torch.int64)
    verts64 = vertices.detach().to(torch.float64)
    w2c64 = w2c.detach().to(device=device, dtype=torch.float64)
    for v in range(views):
        cam = verts64 @ w2c64[v, :3, :3].T + w2c64[v, :3, 3]
        k = intrinsics[v] if projection == "perspective" else None
        screen, key = _screen(cam, projection, height, width, ortho_half_extent, k)
        buffer = _rasterize_view(screen, key, cam[:, 2], faces, height, width, projection, near, far, budget)
        hit = buffer != _EMPTY
        if not bool(hit.any()):
            continue
        pix = hit.nonzero().squeeze(1)
        fid = buffer[pix] & 0xFFFFFFFF
        b, d = _resolve(screen, key, faces[fid], pix, width, projection)
        face_idx[v].view(-1)[pix] = fid
        bary[v].view(-1, 3)[pix] = b.float()
        depth[v].view(-1)[pix] = d.float()
    return Rasterized(face_idx, bary, depth)


def _rasterize_view(screen: torch.Tensor, key: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, height: int,
                    width: int, projection: str, near: float, far: float, budget: int) -> torch.Tensor:
    """One view's z-buffer: [H * W] int64 packed (depth bits << 32 | face), ``_EMPTY`` where nothing."""
    device = screen.device
    tri = screen[faces]  # [F, 3, 2]
    tri_key = key[faces]  # [F, 3]
    tri_z = z[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo, hi = tri.amin(dim=1), tri.amax(dim=1)
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0)
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(min=0)
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(max=height - 1)
    ok = torch.isfinite(tri).all(dim=2).all(dim=1) & torch.isfinite(tri_key).all(dim=1)
    ok &= det.abs() > _DEGENERATE_DET
    ok &= (x1 >= x0) & (y1 >= y0)
    ok &= (tri_z.amax(dim=1) >= near) & (tri_z.amin(dim=1) <= far)
    if projection == "perspective":
        ok &= tri_z.amin(dim=1) > near
    ids = ok.nonzero().squeeze(1)
    buffer = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    if ids.numel() == 0:
        return buffer

    tri, tri_key, det, e1, e2 = tri[ids], tri_key[ids], det[ids], e1[ids], e2[ids]
    bx = x0[ids].long()
    by = y0[ids].long()
    bw = x1[ids].long() - bx + 1
    counts = bw * (y1[ids].long() - by + 1)
    inv = 1.0 / det
    # b1 = a1 dx + c1 dy, b2 = a2 dx + c2 dy with (dx, dy) = pixel centre - vertex 0; key = k0 + b1 dk1 + b2 dk2
    params = torch.stack([tri[:, 0, 0], tri[:, 0, 1], e2[:, 1] * inv, -e2[:, 0] * inv, -e1[:, 1] * inv,
                          e1[:, 0] * inv, tri_key[:, 0], tri_key[:, 1] - tri_key[:, 0],
                          tri_key[:, 2] - tri_key[:, 0]], dim=1)
    # vertex 0 is subtracted from integer pixel positions in float64 per triangle (bx - x_0 + 0.5), so the
    # float32 per-fragment arithmetic only sees small numbers
    params[:, 0] = bx.to(torch.float64) + 0.5 - params[:, 0]
    params[:, 1] = by.to(torch.float64) + 0.5 - params[:, 1]
    params = params.float()
    ints = torch.stack([bx, by, bw, ids], dim=1)

    # Small boxes: bucket by (power-of-two width, height) and test each bucket's fixed window by broadcasting
    # (no per-fragment gathers); windows reaching past the box are harmless (the inside test rejects them)
    # except past the image edge, which is masked. Large boxes: the general per-fragment path.
    bh = counts // bw
    cw = _pow2(bw)
    ch = _pow2(bh)
    small = (cw <= _WINDOW) & (ch <= _WINDOW)
    classes = (cw * (4 * _WINDOW) + ch)[small]
    small_ids = small.nonzero().squeeze(1)
    if small_ids.numel():
        order = torch.argsort(classes)
        classes, small_ids = classes[order], small_ids[order]
        values, sizes = torch.unique_consecutive(classes, return_counts=True)
        start = 0
        for value, size in zip(values.tolist(), sizes.tolist()):
            win_w, win_h = value // (4 * _WINDOW), value % (4 * _WINDOW)
            step = max(1, budget // (win_w * win_h))
            for s0 in range(start, start + size, step):
                sel = small_ids[s0:min(s0 + step, start + size)]
                _window(params.index_select(0, sel), ints.index_select(0, sel), win_w, win_h, height, width,
                        projection, near, far, buffer)
            start += size
    large = (~small).nonzero().squeeze(1)
    if large.numel():
        params, ints, counts = params[large], ints[large], counts[large]
        ends = counts.cumsum(0)
        start = 0
        while start < large.numel():
            base = int(ends[start - 1]) if start else 0
            stop = int(torch.searchsorted(ends, base + budget, right=True))
            stop = max(stop, start + 1)
            _chunk(params[start:stop], ints[start:stop], counts[start:stop], width, projection, near, far, buffer)
            start = stop
    return buffer


def _pow2(n: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= n (n >= 1), elementwise."""
    return torch.pow(2, torch.ceil(torch.log2(n.double())).long())


def _coverage(p: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, projection: str, near: float,
              far: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pixel offsets (fx, fy) from a triangle's anchor fall inside it and in range, and their depth.

    ``p`` holds each triangle's screen-space barycentric plane (columns 2-5) and depth plane (6-8).
    """
    b1 = p[:, 2] * fx + p[:, 3] * fy
    b2 = p[:, 4] * fx + p[:, 5] * fy
    k = p[:, 6] + b1 * p[:, 7] + b2 * p[:, 8]
    inside = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
    if projection == "orthographic":
        d = k
    else:
        inside &= k > 0
        d = 1.0 / k
    return inside & (d >= near) & (d <= far), d


def _window(params: torch.Tensor, ints: torch.Tensor, win_w: int, win_h: int, height: int, width: int,
            projection: str, near: float, far: float, buffer: torch.Tensor) -> None:
    """Fragments of triangles whose boxes fit a win_h x win_w window anchored at the box corner."""
    device = params.device
    dx = torch.arange(win_w, device=device, dtype=torch.float32)
    dy = torch.arange(win_h, device=device, dtype=torch.float32)[:, None]
    p = params[:, :, None, None]
    inside, d = _coverage(p, dx + p[:, 0], dy + p[:, 1], projection, near, far)  # [T, win_h, win_w]
    ix = ints[:, 0, None, None] + torch.arange(win_w, device=device)
    iy = ints[:, 1, None, None] + torch.arange(win_h, device=device)[:, None]
    inside &= (ix < width) & (iy < height)
    pix = torch.masked_select(iy * width + ix, inside)
    if pix.numel() == 0:
        return
    face = torch.masked_select(ints[:, 3, None, None], inside)
    packed = (_ordered_bits(torch.masked_select(d, inside)) << 32) | face
    buffer.scatter_reduce_(0, pix, packed, reduce="amin", include_self=True)


def _chunk(params: torch.Tensor, ints: torch.Tensor, counts: torch.Tensor, width: int, projection: str,
           near: float, far: float, buffer: torch.Tensor) -> None:
    device = params.device
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts, output_size=total)
    first = counts.cumsum(0) - counts
    local = torch.arange(total, device=device) - first.index_select(0, owner)
    info = ints.index_select(0, owner)
    dy = torch.div(local, info[:, 2], rounding_mode="floor")
    dx = local - dy * info[:, 2]
    p = params.index_select(0, owner)
    inside, d = _coverage(p, dx.float() + p[:, 0], dy.float() + p[:, 1], projection, near, far)
    sel = inside.nonzero().squeeze(1)
    if sel.numel() == 0:
        return
    info = info.index_select(0, sel)
    pix = (info[:, 1] + dy.index_select(0, sel)) * width + info[:, 0] + dx.index_select(0, sel)
    packed = (_ordered_bits(d.index_select(0, sel)) << 32) | info[:, 3]
    buffer.scatter_reduce_(0, pix, packed, reduce="amin", include_self=True)


def _resolve(screen: torch.Tensor, key: torch.Tensor, corners: torch.Tensor, pix: torch.Tensor, width: int,
             projection: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 world-space barycentrics [N, 3] and depth [N] of the winning faces at pixels ``pix``."""
    px = torch.stack([(pix % width).to(torch.float64) + 0.5, (pix // width).to(torch.float64) + 0.5], dim=-1)
    tri = screen[corners]  # [N, 3, 2]
    e1, e2, r = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], px - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    b1 = (r[:, 0] * e2[:, 1] - r[:, 1] * e2[:, 0]) / det
    b2 = (e1[:, 0] * r[:, 1] - e1[:, 1] * r[:, 0]) / det
    b = torch.stack([1.0 - b1 - b2, b1, b2], dim=-1)
    k = key[corners]
    if projection == "orthographic":
        return b, (b * k).sum(-1)
    w = b * k  # screen barycentrics / z: perspective correction
    s = w.sum(-1, keepdim=True)
    return w / s, 1.0 / s.squeeze(-1)


# --- attributes ------------------------------------------------------------------------------------------

def interpolate(attr: torch.Tensor, faces: torch.Tensor, rast: Rasterized, background: float = 0.0) -> torch.Tensor:
    """Vertex attributes [Nv, C] -> [V, H, W, C] maps (barycentric blend of the visible face's corners)."""
    if attr.ndim == 1:
        attr = attr[:, None]
    faces = faces.to(device=attr.device, dtype=torch.int64)
    shape = (*rast.face_idx.shape, attr.shape[1])
    corners = faces.index_select(0, rast.face_idx.reshape(-1).clamp(min=0))  # [P, 3]
    bary = rast.bary.reshape(-1, 3).to(attr.dtype)
    out = attr.index_select(0, corners[:, 0]) * bary[:, 0:1]
    out.addcmul_(attr.index_select(0, corners[:, 1]), bary[:, 1:2])
    out.addcmul_(attr.index_select(0, corners[:, 2]), bary[:, 2:3])
    out = out.view(shape)
    return out.masked_fill_(~rast.mask[..., None], float(background))


def face_attribute(attr: torch.Tensor, rast: Rasterized, background: float = 0.0) -> torch.Tensor:
    """Per-face attributes [F, C] (e.g. ``face_normals``) -> [V, H, W, C] maps (flat shading)."""
    if attr.ndim == 1:
        attr = attr[:, None]
    mask = rast.mask
    out = torch.full((*rast.face_idx.shape, attr.shape[1]), float(background), dtype=attr.dtype, device=attr.device)
    out[mask] = attr[rast.face_idx[mask]]
    return out


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """[F, 3] normals (v1 - v0) x (v2 - v0): counter-clockwise faces point outwards; unit length when
    ``normalize`` (0 for degenerate faces), else twice the face area in length."""
    tri = vertices[faces.long()]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return F.normalize(n, dim=-1) if normalize else n


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, weighting: str = "area") -> torch.Tensor:
    """[Nv, 3] unit vertex normals: the sum of the adjacent faces' normals weighted by face area ("area",
    upstream's own ``_compute_vertex_normal``) or by the corner angle ("angle", trimesh's default for meshes
    loaded without normals). Vertices with no usable face get (0, 0, 1), as upstream."""
    faces = faces.long()
    tri = vertices[faces]  # [F, 3, 3]
    area_n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    if weighting == "area":
        contrib = area_n[:, None, :].expand(-1, 3, -1)
    elif weighting == "angle":
        unit = F.normalize(area_n, dim=-1)
        a = F.normalize(tri.roll(-1, dims=1) - tri, dim=-1)  # corner i -> i+1
        b = F.normalize(tri.roll(1, dims=1) - tri, dim=-1)  # corner i -> i-1
        angle = torch.acos((a * b).sum(-1).clamp(-1.0, 1.0))  # [F, 3]
        contrib = unit[:, None, :] * angle[..., None]
    else:
        raise ValueError(f"weighting must be 'area' or 'angle', got {weighting!r}")
    out = torch.zeros_like(vertices)
    out.index_add_(0, faces.reshape(-1), contrib.reshape(-1, 3))
    length = out.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    return torch.where(length > 1e-20, out / length.clamp(min=1e-30), fallback)


def geometry_control(vertices: torch.Tensor, faces: torch.Tensor, rast: Rasterized,
                     normals: torch.Tensor | str | None = None) -> torch.Tensor:
    """MV-Adapter's geometry control [V, 6, H, W] in [0, 1]: cat(clamp(pos + 0.5), clamp(normal / 2 + 0.5))
    with world positions and normalised interpolated vertex ``normals`` (default: area-weighted
    ``vertex_normals``; "flat": each triangle's own normal); background position and normal 0, i.e. gray 0.5."""
    if isinstance(normals, str):
        if normals != "flat":
            raise ValueError(f"normals must be a [N, 3] tensor, None or 'flat', got {normals!r}")
        pos = interpolate(vertices.float(), faces, rast)
        nrm = face_attribute(face_normals(vertices.float(), faces), rast)
    else:
        if normals is None:
            normals = vertex_normals(vertices.float(), faces)
        both = interpolate(torch.cat([vertices.float(), normals.float()], dim=1), faces, rast)
        pos, nrm = both[..., :3], F.normalize(both[..., 3:], dim=-1)
    out = torch.cat([(pos + 0.5).clamp_(0, 1), nrm.mul_(0.5).add_(0.5).clamp_(0, 1)], dim=-1)
    return out.permute(0, 3, 1, 2).contiguous()
