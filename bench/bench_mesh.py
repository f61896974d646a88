"""Mesh texturing cost: geometry maps for a ~100k-triangle mesh (six views), the bake into a UV texture, and
what the maps add to a tg2mv run (the rendering against one tiny-UNet sampling step is not the point: the
rendering is once per prompt, so the ratio that matters is render time / a real run's time).

Run: .venv/bin/python bench/bench_mesh.py [--size 768] [--texture 2048] [--triangles 100000] [--threads 1]
(a script, not a test). Prints seconds and peak memory (CPU: tracemalloc-free RSS delta; CUDA: max allocated).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))

log = logging.getLogger("bench_mesh")


def _pack():
    """The pack's kernels as a package (no ComfyUI needed: kernels import nothing from it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parallax_bench", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["parallax_bench"] = module
    spec.loader.exec_module(module)
    import importlib

    return {name: importlib.import_module(f"parallax_bench.{name}")
            for name in ("mesh_raster", "mv_cameras", "texture_bake")}


def sphere(triangles: int) -> tuple[torch.Tensor, torch.Tensor]:
    import math

    import trimesh

    n = max(8, round(math.sqrt(triangles / 4)))  # uv_sphere(count=[n, n]) has about 4 n^2 triangles
    mesh = trimesh.creation.uv_sphere(radius=0.5, count=[n, n])
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int64)


def sphere_uvs(vertices: torch.Tensor) -> torch.Tensor:
    """Longitude/latitude UVs of points on a sphere around the origin (v up)."""
    x, y, z = vertices.double().unbind(-1)
    u = (torch.atan2(y, x) / (2 * torch.pi) + 0.5).clamp(0, 1)
    v = (torch.asin((z / vertices.double().norm(dim=-1)).clamp(-1, 1)) / torch.pi + 0.5).clamp(0, 1)
    return torch.stack([u, v], dim=-1).float()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CPU_SECONDS: list[float] = []  # process CPU time of the last ``timed`` call (a loaded machine inflates wall time)


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    CPU_SECONDS[:] = [time.process_time() - cpu]
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--texture", type=int, default=2048)
    parser.add_argument("--triangles", type=int, default=100_000, help="about this many (a UV sphere)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unwrap", action="store_true", help="also time xatlas (minutes at 100k triangles)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = _pack()
    mr, cams, tb = k["mesh_raster"], k["mv_cameras"], k["texture_bake"]
    vertices, faces = sphere(args.triangles)
    # a bumpy sphere so depth order matters
    vertices = vertices * (1 + 0.1 * torch.sin(12 * vertices[:, :1]) * torch.cos(9 * vertices[:, 1:2]))
    rig = cams.build_camera_set(rig="geometry", height=args.size, width=args.size)
    dev = args.device
    v, f, w2c = vertices.to(dev), faces.to(dev), rig.w2c.to(dev)
    print(f"mesh: {faces.shape[0]} triangles, {vertices.shape[0]} vertices; device {dev}, {args.threads} thread(s)")

    rss0 = rss_mib()
    render = lambda: mr.geometry_control(v, f, mr.rasterize(v, f, w2c, args.size, args.size))  # noqa: E731
    render()  # warm-up
    best = best_cpu = float("inf")
    for _ in range(3):
        _, seconds = timed(render, dev)
        best, best_cpu = min(best, seconds), min(best_cpu, CPU_SECONDS[0])
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else rss_mib() - rss0
    print(f"geometry maps {args.size}^2 x 6: {best:.2f} s wall, {best_cpu:.2f} s CPU (best of 3), peak {'alloc' if dev == 'cuda' else 'RSS +'}"
          f" {peak:.0f} MiB")

    if args.unwrap:
        (_, uv_faces, uvs), unwrap_s = timed(lambda: tb.unwrap_uvs(vertices, faces), "cpu")
        print(f"xatlas unwrap (child process): {unwrap_s:.2f} s wall ({uvs.shape[0]} UV vertices)")
    else:  # the sphere's own longitude/latitude UVs: the bake's cost does not depend on who made the UVs
        uvs, uv_faces = sphere_uvs(vertices), faces
    views = torch.rand(6, args.size, args.size, 3, generator=torch.Generator().manual_seed(0)).to(dev)
    rss1 = rss_mib()
    baked, bake_s = timed(lambda: tb.bake(v, f, uvs.to(dev), uv_faces.to(dev), views, w2c,
                                          texture_size=args.texture), dev)
    bake_cpu = CPU_SECONDS[0]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else rss_mib() - rss1
    _, fill_s = timed(lambda: tb.fill_unseen(baked.texture.cpu(), baked.seen.cpu(), baked.chart.cpu()), "cpu")
    fill_cpu = CPU_SECONDS[0]
    print(f"bake {args.texture}^2 from 6 x {args.size}^2: {bake_s:.2f} s + fill {fill_s:.2f} s wall, "
          f"{bake_cpu:.2f} + {fill_cpu:.2f} s CPU, peak "
          f"{'alloc' if dev == 'cuda' else 'RSS +'} {peak:.0f} MiB; seen {float(baked.seen.float().mean()):.1%} "
          f"of texels, chart {float(baked.chart.float().mean()):.1%}")
    print(f"targets (CPU seconds, one thread): maps <= 2 s -> {'met' if best_cpu <= 2 else 'missed'}; bake <= 10 s "
          f"-> {'met' if bake_cpu + fill_cpu <= 10 else 'missed'}")


if __name__ == "__main__":
    main()
