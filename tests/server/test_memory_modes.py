"""The example graphs on a server whose models load partially, as under --lowvram / --novram.

A CPU-only ComfyUI never loads partially (the flags are refused next to --cpu, and a CPU load device
always gets a full load), so these servers start with ``PARALLAX_TEST_SIMULATE_VRAM=low|no``: the
fixture-only test pack then gives every load the budget a small device would give it and ComfyUI's
own partial loading runs (weights cast at call time, LoRA patches applied per call by lowvram weight
functions, modules left on the offload device). The images must equal those of the session's normally
loaded server, and the server log must show that the UNets really were loaded partially.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import examples
from host_server import HostServer
from parallax_testing import vram_simulation

GRAPHS = ("mvadapter_t2mv_sdxl", "mvadapter_i2mv_sdxl", "mvadapter_t2mv_lora_controlnet_sdxl", "saliency_fusion")
WITH_LORA = {"mvadapter_t2mv_lora_controlnet_sdxl", "saliency_fusion"}
UNETS = {"saliency_fusion": "BaseModel"}  # the model_base class of each graph's UNet (others: SDXL)
_BASELINE: dict[str, dict[str, list[np.ndarray]]] = {}


def run_graph(server: HostServer, name: str) -> dict[str, list[np.ndarray]]:
    """Every image the graph returns (saved and previewed), by node id, in order."""
    _, result = examples.run_tiny(server, name, examples.cheaper)
    images: dict[str, list[np.ndarray]] = {}
    for node_id, image in result.images:
        images.setdefault(node_id, []).append(np.asarray(Image.open(io.BytesIO(server.view(image)))))
    return images


def baseline(host_server: HostServer, name: str) -> dict[str, list[np.ndarray]]:
    if name not in _BASELINE:
        _BASELINE[name] = run_graph(host_server, name)
    return _BASELINE[name]


@pytest.fixture(scope="module", params=vram_simulation.MODES)
def memory_server(request, host_server, tmp_path_factory):
    """A second server started with the simulation (after the session server, which must not get it)."""
    mode = request.param
    server = HostServer(workdir=tmp_path_factory.mktemp(f"host_{mode}vram"), with_testing_nodes=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(vram_simulation.ENV, mode)
        server.start()
    try:
        yield mode, server
    finally:
        server.stop()


def log_since(server: HostServer, offset: int) -> str:
    return Path(server.log_path).read_text(errors="replace")[offset:]


def test_the_simulation_is_installed_and_the_session_server_is_untouched(memory_server, host_server):
    mode, server = memory_server
    log = log_since(server, 0)
    assert f"{vram_simulation.LOG_PREFIX} {mode} VRAM: installed" in log
    assert vram_simulation.LOG_PREFIX not in log_since(host_server, 0)


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_equals_the_normally_loaded_server(memory_server, host_server, name):
    mode, server = memory_server
    expected = baseline(host_server, name)
    offset = len(Path(server.log_path).read_text(errors="replace"))
    got = run_graph(server, name)
    log = log_since(server, offset)

    # Partial loading really happened: ComfyUI's own report, and the UNet's state after each load.
    assert "loaded partially;" in log, log[-3000:]
    unet = UNETS.get(name, "SDXL")
    states = re.findall(rf"{vram_simulation.LOG_PREFIX} {mode} VRAM: {unet} (\w+) loaded .*lowvram patches: (\d+)\)", log)
    assert states and all(state == "partially" for state, _ in states), states
    if name in WITH_LORA:  # the LoRA reaches the offloaded layers through lowvram weight functions
        assert max(int(count) for _, count in states) > 0, states

    assert got.keys() == expected.keys()
    for node_id, images in expected.items():
        assert len(got[node_id]) == len(images), node_id
        for index, (a, b) in enumerate(zip(got[node_id], images)):
            assert a.shape == b.shape, (node_id, index)
            diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max()
            # Measured 0 everywhere: the same fp32 arithmetic in both modes (casts to the same dtype and device).
            assert diff == 0, f"{name} node {node_id} image {index}: max difference {diff}"


def test_no_model_is_split_between_devices(memory_server):
    """After the graphs above: every load either made its model lowvram (layers cast per call), loaded it
    completely, or left it whole on the offload device. A model split between the two devices without
    per-call casting computes with mixed devices on a GPU."""
    mode, server = memory_server
    if f"{vram_simulation.LOG_PREFIX} {mode} VRAM: SDXL" not in log_since(server, 0):  # selected on its own
        run_graph(server, "mvadapter_i2mv_sdxl")
    loads = re.findall(rf"{vram_simulation.LOG_PREFIX} {mode} VRAM: (\w+) (\w+) loaded", log_since(server, 0))
    assert loads
    split = sorted({name for name, state in loads if state == "split"})
    assert not split, f"split between load and offload device: {split}"
