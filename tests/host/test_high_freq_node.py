"""ParallaxHighFreqMap inside the host: registered by the extension, same result as the kernel."""

from __future__ import annotations

import asyncio

import pytest
import torch

from parallax.kernels.high_freq import high_freq_map
from parallax.nodes import ParallaxExtension
from parallax.nodes.errors import NodeInputError
from parallax.nodes.high_freq_map import HighFreqMap


def test_extension_registers_the_node_with_a_valid_schema():
    nodes = asyncio.run(ParallaxExtension().get_node_list())
    assert HighFreqMap in nodes
    schema = HighFreqMap.GET_SCHEMA()
    assert schema.node_id == "ParallaxHighFreqMap" and schema.display_name == "HighFreqMap"
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    mask_tip = next(i.tooltip for i in schema.inputs if i.id == "mask")
    assert "resized" in mask_tip and "all-black" in mask_tip
    info = HighFreqMap.GET_NODE_INFO_V1()
    assert info["category"] == "Parallax/image"


def test_defaults_are_the_official_recipe_at_native_size():
    schema = HighFreqMap.GET_SCHEMA()
    defaults = {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}
    assert defaults == {"working_size": "native", "erosion_size": 5, "erosion_iterations": 2, "threshold": 50.0,
                        "quantize": True}


@pytest.mark.parametrize(("working", "size"), [("native", None), ("256", 256)])
def test_execute_equals_the_kernel(working, size):
    image, mask = torch.rand(2, 40, 30, 3), (torch.rand(2, 40, 30) > 0.3).float()
    out = HighFreqMap.execute(image=image, mask=mask, working_size=working)
    assert torch.equal(out[0], high_freq_map(image, mask, working_size=size))
    options = HighFreqMap.execute(image=image, mask=mask, working_size=working, erosion_size=3, erosion_iterations=1,
                                  threshold=20.0, quantize=False)
    assert torch.equal(options[0], high_freq_map(image, mask, size, 3, 1, 20.0, False))


def test_single_mask_for_a_batch_and_a_2d_mask_are_accepted():
    image = torch.rand(3, 24, 24, 3)
    mask = (torch.rand(24, 24) > 0.2).float()
    out = HighFreqMap.execute(image=image, mask=mask)[0]
    assert out.shape == image.shape
    assert torch.equal(out, HighFreqMap.execute(image=image, mask=mask[None].expand(3, -1, -1))[0])


def test_all_zero_mask_is_black_not_an_error():
    out = HighFreqMap.execute(image=torch.rand(1, 16, 16, 3), mask=torch.zeros(1, 16, 16))[0]
    assert out.abs().max() == 0


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [
        ({"image": torch.rand(1, 8, 8, 4), "mask": torch.ones(1, 8, 8)}, "image"),
        ({"image": torch.rand(2, 8, 8, 3), "mask": torch.ones(3, 8, 8)}, "mask"),
        ({"image": torch.rand(1, 8, 8, 3), "mask": torch.ones(1, 1, 8, 8)}, "mask"),
        ({"image": torch.rand(1, 8, 8, 3), "mask": torch.ones(1, 8, 8), "working_size": "512"}, "working_size"),
    ],
)
def test_bad_inputs_name_the_node_and_the_input(kwargs, input_name):
    with pytest.raises(NodeInputError) as err:
        HighFreqMap.execute(**kwargs)
    assert err.value.input_name == input_name
    assert str(err.value).startswith("HighFreqMap: input '")
    assert "Fix:" in str(err.value)
