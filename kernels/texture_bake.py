"""Bake multi-view images (MV-Adapter's generated views) back into a mesh's UV texture.

Conventions:

- Cameras: as ``kernels/mesh_raster.py`` (OpenCV ``w2c`` [V, 4, 4], orthographic half extent or perspective
  intrinsics at the view size, pixel (row i, column j) centred at (j + 0.5, i + 0.5), row 0 = top).
- UVs: ``uvs`` [Nt, 2] with u to the right and **v up** (OBJ / trimesh / Blender; raw glTF stores v down,
  trimesh flips it on load). Texture row 0 is the top of the image, so texel (row, col) has its centre at
  ``u = (col + 0.5) / S``, ``v = 1 - (row + 0.5) / S``. ``uv_faces`` [F, 3] index ``uvs`` and pair with
  ``faces`` [F, 3] face by face (the same array when UVs are per vertex).
- Views: [V, H, W, 3] float in [0, 1] (ComfyUI IMAGE layout), one per camera.

Algorithm (``bake``): rasterise the mesh in UV space (``uv_rasterize``: per texel face id and barycentrics,
exact because the UV map is affine per triangle), so texel world positions and normals are barycentric blends
of the face's corners. Rasterise every view once for its z-buffer. For each texel and view, project the texel:

1. Visibility: the pixel under it (nearest centre) has a z-buffer depth within a tolerance of the texel's
   depth (``depth_tolerance`` x the mesh's bounding-box diagonal, plus the surface's depth change over 1.5
   pixels at its slant) and its face turns the same way to the camera as the texel's face (front or back;
   depths also agree across a crease, facing does not).
2. Colour: the renormalised bilinear blend of those of the four neighbouring pixels that pass the depth test
   and whose face normal is within ``max_normal_angle`` of the texel's (keeps colours from bleeding across
   sharp creases); where none does (very rough surfaces) the nearest pixel's colour.
3. Weight: ``cos^cos_exponent`` (cos between the normal and the direction to the camera: the camera's
   backward axis for orthographic views, the ray to the camera centre for perspective ones) times the kept
   bilinear mass (silhouette samples count less).

The texture is the weighted mean over views; texels no view sees get weight 0. ``fill_unseen`` then inpaints
unseen texels inside the UV charts (OpenCV Telea) and dilates the charts by a few texels so bilinear /
mipmapped lookups at seams do not reach the background.

Memory: texels are processed in chunks (``chunk`` texels x a handful of [chunk, 3] tensors per view, the
visibility test first so only visible texels reach the bilinear lookup); nothing of size texels x views x
triangles is formed. Rasterisation memory is that of ``mesh_raster.rasterize``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import mesh_raster as mr

log = logging.getLogger(__name__)

DEFAULT_COS_EXPONENT = 4.0
DEFAULT_DEPTH_TOLERANCE = 4e-3  # x the bounding-box diagonal
DEFAULT_MAX_NORMAL_ANGLE = 60.0
DEFAULT_PADDING = 8
DEFAULT_CHUNK = 1 << 20
_MAX_SLOPE = 8.0  # cap of tan(angle) in the slope part of the depth tolerance


@dataclass(frozen=True)
class Baked:
    """``texture`` [S, S, 3] float32 (weighted mean colour, 0 where unseen); ``weight`` [S, S] float32 (sum of
    the views' weights); ``chart`` [S, S] bool (texel centre inside some UV triangle)."""

    texture: torch.Tensor
    weight: torch.Tensor
    chart: torch.Tensor

    @property
    def seen(self) -> torch.Tensor:
        return self.weight > 0


def _check_uv(uvs: torch.Tensor, uv_faces: torch.Tensor, faces: torch.Tensor | None = None) -> None:
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"uvs must be [Nt, 2], got {tuple(uvs.shape)}")
    if uv_faces.ndim != 2 or uv_faces.shape[1] != 3 or uv_faces.dtype.is_floating_point:
        raise ValueError(f"uv_faces must be an integer [F, 3] tensor, got {tuple(uv_faces.shape)} {uv_faces.dtype}")
    if faces is not None and faces.shape[0] != uv_faces.shape[0]:
        raise ValueError(f"faces ({faces.shape[0]}) and uv_faces ({uv_faces.shape[0]}) must pair one to one")


def texel_uv(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[S, S, 2] float64 (u, v) of the texel centres: u = (col + 0.5) / S, v = 1 - (row + 0.5) / S."""
    c = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size
    return torch.stack([c[None, :].expand(size, size), (1.0 - c)[:, None].expand(size, size)], dim=-1)


def uv_rasterize(uvs: torch.Tensor, uv_faces: torch.Tensor, size: int,
                 max_fragments: int = mr.DEFAULT_MAX_FRAGMENTS) -> mr.Rasterized:
    """Rasterise the UV layout into a ``size`` x ``size`` texture: ``Rasterized`` with a single view [1, S, S].

    Uses ``mesh_raster.rasterize`` with an orthographic camera over the UV square: points (u - 0.5, 0.5 - v, 1)
    under the identity w2c and half extent 0.5 land at pixel (u S, (1 - v) S) (float64, exact for any UV given
    in float32), so texel centres are tested exactly where ``texel_uv`` puts them. Barycentrics refer to
    ``uv_faces[f]`` corners, hence also to ``faces[f]``. Overlapping UV triangles: the lower face index wins
    (all at equal depth); degenerate UV triangles cover nothing.
    """
    _check_uv(uvs, uv_faces)
    if size < 1:
        raise ValueError(f"texture size must be positive, got {size}")
    uv = uvs.detach().to(torch.float64)
    pts = torch.stack([uv[:, 0] - 0.5, 0.5 - uv[:, 1], torch.ones_like(uv[:, 0])], dim=-1)
    eye = torch.eye(4, dtype=torch.float64, device=uvs.device)[None]
    return mr.rasterize(pts, uv_faces, eye, size, size, projection="orthographic", ortho_half_extent=0.5,
                        near=0.5, far=1.5, max_fragments=max_fragments)


def _project(points: torch.Tensor, w2c: torch.Tensor, projection: str, height: int, width: int,
             half_extent: float, k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> pixel x [N], pixel y [N], camera depth z [N] (mesh_raster's conventions)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    if projection == "orthographic":
        return (cam[:, 0] + half_extent) * (width / (2 * half_extent)), \
            (cam[:, 1] + half_extent) * (height / (2 * half_extent)), z
    inv_z = 1.0 / z
    x, y = cam[:, 0] * inv_z, cam[:, 1] * inv_z
    return k[0, 0] * x + k[0, 1] * y + k[0, 2], k[1, 1] * y + k[1, 2], z


def bake(vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor,
         views: torch.Tensor, w2c: torch.Tensor, texture_size: int = 1024, projection: str = "orthographic",
         ortho_half_extent: float = 0.55, intrinsics: torch.Tensor | None = None,
         cos_exponent: float = DEFAULT_COS_EXPONENT, min_cos: float = 0.0, two_sided: bool = True,
         normals: torch.Tensor | None = None, depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
         max_normal_angle: float = DEFAULT_MAX_NORMAL_ANGLE,
         view_raster: mr.Rasterized | None = None, uv_raster: mr.Rasterized | None = None,
         near: float = 0.1, far: float = 100.0, chunk: int = DEFAULT_CHUNK) -> Baked:
    """Project ``views`` [V, H, W, 3] (cameras ``w2c`` [V, 4, 4], see the module docstring) onto the UV texture
    of the mesh (``vertices`` [Nv, 3], ``faces`` [F, 3], ``uvs`` [Nt, 2], ``uv_faces`` [F, 3]).

    - ``cos_exponent``: view weight = cos^exponent (0: plain mean of the views that see a texel; larger: the
      most frontal view dominates). ``min_cos``: views at a smaller cos get weight 0.
    - ``two_sided``: cos = |n . d| (winding-agnostic: a texel seen from behind, e.g. an open sheet's back or a
      mesh wound inside out, still takes colour; on a closed mesh the back half fails the facing/depth test
      anyway); False: max(0, n . d), so faces whose normal points away from a camera take nothing from it.
    - ``normals``: optional per-vertex normals [Nv, 3] (interpolated, normalised) for the weights; default the
      flat face normals.
    - ``depth_tolerance``: relative to the bounding-box diagonal (see the module docstring).
    - ``max_normal_angle``: degrees; a pixel whose face normal turns further from the texel's face normal
      does not show the texel's surface (keeps colours from crossing sharp creases, where depths agree).
    - ``view_raster`` / ``uv_raster``: reuse rasterisations already made (views at [V, H, W] of the same
      ``vertices``/``faces``; UV at [1, S, S] from ``uv_rasterize``).

    Memory: a [V, H * W, 7] float32 lookup table (99 MB for six 768^2 views) plus per texel chunk a few
    [chunk, 3] tensors; rasterisation as ``mesh_raster.rasterize``.
    """
    mr._check_mesh(vertices, faces)
    _check_uv(uvs, uv_faces, faces)
    if views.ndim != 4 or views.shape[-1] != 3:
        raise ValueError(f"views must be [V, H, W, 3], got {tuple(views.shape)}")
    if w2c.ndim == 2:
        w2c = w2c[None]
    num_views, height, width = views.shape[:3]
    if w2c.shape != (num_views, 4, 4):
        raise ValueError(f"w2c must be [{num_views}, 4, 4] for {num_views} views, got {tuple(w2c.shape)}")
    if projection not in mr.PROJECTIONS:
        raise ValueError(f"projection must be one of {mr.PROJECTIONS}, got {projection!r}")
    if cos_exponent < 0:
        raise ValueError(f"cos_exponent must be >= 0, got {cos_exponent}")
    device = vertices.device
    verts = vertices.detach().float()
    faces = faces.to(device=device, dtype=torch.int64)
    w2c = w2c.detach().to(device=device, dtype=torch.float32)
    ks = None
    if projection == "perspective":
        if intrinsics is None:
            raise ValueError("perspective views need intrinsics [V, 3, 3] at the view size")
        ks = intrinsics.reshape(-1, 3, 3).to(device=device, dtype=torch.float32).expand(num_views, 3, 3)

    if uv_raster is None:
        uv_raster = uv_rasterize(uvs.to(device), uv_faces.to(device), texture_size)
    if uv_raster.face_idx.shape != (1, texture_size, texture_size):
        raise ValueError(f"uv_raster must be [1, {texture_size}, {texture_size}], got "
                         f"{tuple(uv_raster.face_idx.shape)}")
    if view_raster is None:
        view_raster = mr.rasterize(verts, faces, w2c, height, width, projection=projection,
                                   ortho_half_extent=ortho_half_extent, intrinsics=ks, near=near, far=far)
    if view_raster.face_idx.shape != (num_views, height, width):
        raise ValueError(f"view_raster must be [{num_views}, {height}, {width}], got "
                         f"{tuple(view_raster.face_idx.shape)}")

    size = texture_size
    chart = uv_raster.mask[0]
    texel = chart.reshape(-1).nonzero().squeeze(1)
    tex_face = uv_raster.face_idx[0].reshape(-1)[texel]
    tex_bary = uv_raster.bary[0].reshape(-1, 3)[texel]
    flat = mr.face_normals(verts, faces)
    vnormals = normals.detach().to(device=device, dtype=torch.float32) if normals is not None else None
    diag = float((verts.amax(0) - verts.amin(0)).norm())
    base_tol = depth_tolerance * max(diag, 1e-12)
    # per view one [H * W, 7] lookup table (colour, depth, flat normal; NaN on background): one gather per
    # bilinear neighbour
    pix_face = view_raster.face_idx.to(device)
    zbuf = torch.where(pix_face >= 0, view_raster.depth.to(device), float("nan"))
    pix_n = flat.index_select(0, pix_face.reshape(-1).clamp(min=0)).view(num_views, height, width, 3)
    pix_n = torch.where((pix_face >= 0)[..., None], pix_n, float("nan"))
    tables = torch.cat([views.detach().to(device=device, dtype=torch.float32), zbuf[..., None], pix_n],
                       dim=-1).reshape(num_views, -1, 7)
    min_dot = math.cos(math.radians(min(max(float(max_normal_angle), 0.0), 180.0)))
    rot = w2c[:, :3, :3]
    forward = rot[:, 2, :]  # camera +z (OpenCV forward) in world coordinates
    centres = -(rot.transpose(1, 2) @ w2c[:, :3, 3:]).squeeze(-1)
    if projection == "orthographic":
        pixel_size = 2 * ortho_half_extent / min(height, width)
    else:
        focal = torch.minimum(ks[:, 0, 0].abs(), ks[:, 1, 1].abs())

    # which way each face turns to each camera: sign(n . (camera - point)) is constant over a planar face
    # (orthographic: n . -forward); a texel and the pixel under it must agree (near a crease the other face's
    # depth agrees too). Signed z-buffer: depth * that sign of the pixel's face (NaN on background).
    if projection == "orthographic":
        face_facing = torch.sign(-(forward @ flat.T))  # [V, F]
    else:
        v0 = verts.index_select(0, faces[:, 0])
        face_facing = torch.sign((flat * v0).sum(-1)[None] * -1 + centres @ flat.T)
    signed_z = zbuf.reshape(num_views, -1) * torch.gather(
        face_facing, 1, pix_face.reshape(num_views, -1).clamp(min=0))

    acc = torch.zeros(texel.numel(), 3, dtype=torch.float32, device=device)
    wsum = torch.zeros(texel.numel(), dtype=torch.float32, device=device)
    for start in range(0, texel.numel(), max(1, int(chunk))):
        sl = slice(start, min(start + chunk, texel.numel()))
        fid = tex_face[sl]
        corners = faces.index_select(0, fid)
        b = tex_bary[sl]
        pos = _blend(verts, corners, b)
        acc_c, wsum_c = acc[sl], wsum[sl]
        for v in range(num_views):
            # stage 1, every texel: the pixel under it (nearest centre) must turn the same way to the camera
            # and be at its depth within the largest tolerance the slope term allows
            px, py, z = _project(pos, w2c[v], projection, height, width, ortho_half_extent,
                                 None if ks is None else ks[v])
            footprint = pixel_size if projection == "orthographic" else z.abs() / focal[v]
            xn, yn = torch.floor(px), torch.floor(py)
            inside = (xn >= 0) & (xn < width) & (yn >= 0) & (yn < height) & (z >= near) & (z <= far)
            nearest = torch.where(inside, yn * width + xn, 0.0).long()
            zn = signed_z[v].index_select(0, nearest) * face_facing[v].index_select(0, fid)
            ok = inside & ((zn - z).abs() <= base_tol + 1.5 * _MAX_SLOPE * footprint)  # NaN, sign flip: False
            sel = ok.nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            # stage 2, the candidates: exact tolerance, weights, depth-tested bilinear lookup
            fs = fid.index_select(0, sel)
            p = pos.index_select(0, sel)
            geo_n = flat.index_select(0, fs)
            if projection == "orthographic":
                to_cam = -forward[v].expand_as(p)
                foot = torch.full((sel.numel(),), pixel_size, dtype=p.dtype, device=device)
            else:
                to_cam = F.normalize(centres[v] - p, dim=-1)
                foot = footprint.index_select(0, sel)
            if vnormals is None:
                nrm = geo_n
            else:
                nrm = F.normalize(_blend(vnormals, corners.index_select(0, sel), b.index_select(0, sel)), dim=-1)
            cos = (nrm * to_cam).sum(-1)
            cos = cos.abs() if two_sided else cos.clamp(min=0)
            geo_cos = (geo_n * to_cam).sum(-1).abs().clamp(min=1e-6)  # slant of the actual surface
            slope = (torch.sqrt((1 - geo_cos * geo_cos).clamp(min=0)) / geo_cos).clamp(max=_MAX_SLOPE)
            tol = base_tol + 1.5 * foot * slope
            zs = z.index_select(0, sel)
            keep = ((zn.index_select(0, sel) - zs).abs() <= tol) & (cos >= min_cos) & (cos > 0)
            if not bool(keep.all()):
                k = keep.nonzero().squeeze(1)
                sel, cos, tol, zs, geo_n = sel[k], cos[k], tol[k], zs[k], geo_n[k]
                if sel.numel() == 0:
                    continue
            weight = cos.pow(cos_exponent) if cos_exponent > 0 else torch.ones_like(cos)
            colour, mass = _sample(tables[v], px.index_select(0, sel), py.index_select(0, sel), zs, tol, geo_n,
                                   min_dot, two_sided, nearest.index_select(0, sel), height, width)
            weight = weight * mass
            acc_c.index_add_(0, sel, colour * weight[:, None])
            wsum_c.index_add_(0, sel, weight)

    texture = torch.zeros(size * size, 3, dtype=torch.float32, device=device)
    weight_map = torch.zeros(size * size, dtype=torch.float32, device=device)
    seen = wsum > 0
    texture[texel[seen]] = acc[seen] / wsum[seen, None]
    weight_map[texel] = wsum
    return Baked(texture.view(size, size, 3), weight_map.view(size, size), chart)


def _blend(attr: torch.Tensor, corners: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Barycentric blend [N, C] of ``attr`` [Nv, C] over ``corners`` [N, 3]."""
    out = attr.index_select(0, corners[:, 0]) * bary[:, 0:1]
    out.addcmul_(attr.index_select(0, corners[:, 1]), bary[:, 1:2])
    return out.addcmul_(attr.index_select(0, corners[:, 2]), bary[:, 2:3])


def _same_surface(got: torch.Tensor, z: torch.Tensor, tol: torch.Tensor, normal: torch.Tensor, min_dot: float,
                  two_sided: bool) -> torch.Tensor:
    """Which looked-up pixels (``got`` [N, 7] table rows) show the texel's surface: depth within ``tol`` of ``z``
    and face normal within the angle of ``normal`` (NaN background compares False)."""
    dot = (got[:, 4:7] * normal).sum(-1)
    if two_sided:
        dot = dot.abs()
    return ((got[:, 3] - z).abs() <= tol) & (dot >= min_dot - 1e-6)


def _sample(table: torch.Tensor, px: torch.Tensor, py: torch.Tensor, z: torch.Tensor, tol: torch.Tensor,
            normal: torch.Tensor, min_dot: float, two_sided: bool, nearest: torch.Tensor, height: int,
            width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear lookup in ``table`` [H * W, 7] over the neighbours that show the texel's surface
    (``_same_surface``): colour [N, 3] (renormalised) and the kept bilinear mass [N] in (0, 1]. Where none
    does, the ``nearest`` pixel (which passed the depth test) alone, with its bilinear weight."""
    x, y = px - 0.5, py - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    acc = torch.zeros(px.shape[0], 3, dtype=table.dtype, device=table.device)
    mass = torch.zeros_like(px)
    near_w = torch.zeros_like(px)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        idx = torch.where(inside, yi * width + xi, 0)
        got = table.index_select(0, idx)  # index_select: ~5x faster than []
        near_w = torch.where(inside & (idx == nearest), w, near_w)
        w = torch.where(inside & _same_surface(got, z, tol, normal, min_dot, two_sided), w, 0.0)
        acc.addcmul_(got[:, :3], w[:, None])
        mass += w
    colour = acc / mass.clamp(min=1e-12)[:, None]
    alone = (mass <= 0).nonzero().squeeze(1)
    if alone.numel():  # rough surfaces: every neighbour's normal turned away; the nearest pixel passed depth
        colour[alone] = table.index_select(0, nearest.index_select(0, alone))[:, :3]
        mass[alone] = near_w[alone]
    return colour, mass


# --- filling ---------------------------------------------------------------------------------------------

def _nearest_index(known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every texel, the flat index of the nearest ``known`` texel and the (approximate, 5x5-mask) distance."""
    import cv2

    dist, labels = cv2.distanceTransformWithLabels((~known).astype(np.uint8), cv2.DIST_L2, 5,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    flat_known = np.flatnonzero(known)
    lut[labels.reshape(-1)[flat_known]] = flat_known
    return lut[labels.reshape(-1)], dist.reshape(-1)


def fill_unseen(texture: torch.Tensor, seen: torch.Tensor, chart: torch.Tensor | None = None,
                padding: int = DEFAULT_PADDING, inpaint_radius: float = 3.0, inpaint: bool = True) -> torch.Tensor:
    """Fill a baked ``texture`` [S, S, 3] (colours in [0, 1]): texels in ``chart`` (default: all) that are not
    ``seen`` get OpenCV's Telea inpainting from the seen ones (quantised to 1/65535); then texels outside the
    chart within ``padding`` texels take their nearest chart texel's value (seam dilation); the rest is 0.
    Seen chart texels are returned unchanged. Returns a new float32 tensor on the input's device. Texels
    outside the chart are never used as sources (they are pre-filled with the nearest seen texel before
    inpainting, so Telea cannot pull in background). ``inpaint=False``: unseen chart texels keep that nearest
    seen value (no Telea; fast, blockier). With ``chart=None`` every unseen texel is a hole: prefer passing
    ``Baked.chart`` (Telea over a whole background is slow at 2048^2 and up)."""
    import cv2

    if texture.ndim != 3 or texture.shape[-1] != 3 or seen.shape != texture.shape[:2]:
        raise ValueError(f"texture must be [S, S, 3] and seen [S, S], got {tuple(texture.shape)}, "
                         f"{tuple(seen.shape)}")
    h, w = seen.shape
    chart_np = np.ones((h, w), dtype=bool) if chart is None else chart.detach().cpu().numpy().astype(bool)
    known = seen.detach().cpu().numpy().astype(bool) & chart_np
    tex = texture.detach().float().cpu().numpy().reshape(-1, 3)
    if not known.any():
        log.warning("fill_unseen: no seen texel to fill from; texture left unchanged")
        return texture.detach().float().clone()
    near_idx, _ = _nearest_index(known)
    out = tex[near_idx].reshape(h, w, 3).copy()  # every texel: nearest seen value
    holes = chart_np & ~known
    if inpaint and holes.any():
        # Telea on 16-bit channels: OpenCV's float32 path returns values far outside the known range (even
        # for a constant image), 8 bits would quantise; only the hole texels are taken from the result.
        mask = holes.astype(np.uint8)
        for c in range(3):
            chan = np.round(np.clip(out[..., c], 0.0, 1.0) * 65535.0).astype(np.uint16)
            painted = cv2.inpaint(chan, mask, float(inpaint_radius), cv2.INPAINT_TELEA)
            out[..., c][holes] = painted[holes].astype(np.float32) / 65535.0
    flat = out.reshape(-1, 3)
    near_idx, dist = _nearest_index(chart_np)
    result = np.zeros_like(flat)
    keep = dist <= padding
    result[keep] = flat[near_idx[keep]]
    return torch.from_numpy(result.reshape(h, w, 3)).to(texture.device)


# --- UV unwrapping ---------------------------------------------------------------------------------------

# Run in a child interpreter: xatlas segfaults on some meshes (jpcy/xatlas#151; e.g. a 82k-face icosphere
# here), which in-process would take the whole host down. Only numpy arrays cross (npz, no pickle).
_XATLAS_CHILD = """
import sys
import numpy as np
import xatlas
data = np.load(sys.argv[1], allow_pickle=False)
vmapping, faces, uvs = xatlas.parametrize(data["positions"], data["faces"])
np.savez(sys.argv[2], vmapping=vmapping, faces=faces, uvs=uvs)
"""


def unwrap_uvs(vertices: torch.Tensor, faces: torch.Tensor, isolate: bool = True,
               timeout: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate a UV atlas with xatlas: returns (``vmapping`` [Nn] int64: the input vertex of each new vertex,
    ``new_faces`` [F, 3] int64 into the new vertices, ``uvs`` [Nn, 2] float32 in [0, 1], v up). Face order is
    kept, so ``bake(vertices, faces, uvs, new_faces, ...)`` and
    ``bake(vertices[vmapping], new_faces, uvs, new_faces, ...)`` are equivalent.

    ``isolate`` (default) runs xatlas in a child Python process (``sys.executable``), so a crash inside xatlas
    becomes a RuntimeError instead of killing the caller; ``timeout`` (seconds) bounds it. xatlas is slow on
    large meshes (minutes at ~100k faces on one core)."""
    try:
        import xatlas
    except ImportError as err:  # pragma: no cover - dependency declared in pyproject
        raise RuntimeError("UV unwrapping needs the 'xatlas' package, a dependency of the pack: install the "
                           "pack's requirements") from err
    mr._check_mesh(vertices, faces)
    if faces.shape[0] == 0:
        raise ValueError("cannot unwrap a mesh without faces")
    pos = np.ascontiguousarray(vertices.detach().cpu().numpy().astype(np.float32))
    idx = np.ascontiguousarray(faces.detach().cpu().numpy().astype(np.uint32))
    if isolate:
        vmapping, new_faces, uvs = _xatlas_child(pos, idx, timeout)
    else:
        vmapping, new_faces, uvs = xatlas.parametrize(pos, idx)
    if new_faces.shape != idx.shape or uvs.shape != (vmapping.shape[0], 2):
        raise RuntimeError(f"xatlas returned {tuple(new_faces.shape)} faces and {tuple(uvs.shape)} uvs for "
                           f"{idx.shape[0]} faces")
    device = vertices.device
    return (torch.from_numpy(vmapping.astype(np.int64)).to(device),
            torch.from_numpy(new_faces.astype(np.int64)).to(device),
            torch.from_numpy(np.ascontiguousarray(uvs, dtype=np.float32)).to(device))


def _xatlas_child(pos: np.ndarray, idx: np.ndarray, timeout: float | None) -> tuple[np.ndarray, ...]:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="parallax-xatlas-") as tmp:
        src, dst = Path(tmp) / "mesh.npz", Path(tmp) / "atlas.npz"
        np.savez(src, positions=pos, faces=idx)
        try:
            proc = subprocess.run([sys.executable, "-c", _XATLAS_CHILD, str(src), str(dst)], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"xatlas did not finish within {timeout:g} s for {idx.shape[0]} faces; simplify "
                               "the mesh or give it UVs") from None
        if proc.returncode != 0 or not dst.exists():
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
            raise RuntimeError(f"xatlas failed on this mesh ({how}{': ' + tail[0] if tail else ''}); it crashes on "
                               "some meshes - remesh or simplify it, or give it UVs")
        with np.load(dst, allow_pickle=False) as out:
            return out["vmapping"], out["faces"], out["uvs"]
