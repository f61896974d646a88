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
    info = HighFreqMap.GET_NODE_INFO_V1()
    assert info["category"] == "Parallax/image"


def test_execute_equals_the_kernel():
    image, mask = torch.rand(2, 40, 30, 3), (torch.rand(2, 40, 30) > 0.3).float()
    out = HighFreqMap.execute(image=image, mask=mask)
    assert torch.equal(out[0], high_freq_map(image, mask))


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [
        ({"image": torch.rand(1, 8, 8, 4), "mask": torch.ones(1, 8, 8)}, "image"),
        ({"image": torch.rand(2, 8, 8, 3), "mask": torch.ones(3, 8, 8)}, "mask"),
        ({"image": torch.rand(1, 8, 8, 3), "mask": torch.ones(1, 8, 8), "working_size": "512"}, "working_size"),
    ],
)
def test_bad_inputs_name_the_node_and_the_input(kwargs, input_name):
    with pytest.raises(NodeInputError) as err:
        HighFreqMap.execute(**kwargs)
    assert err.value.input_name == input_name
    assert str(err.value).startswith("HighFreqMap: input '")
    assert "Fix:" in str(err.value)
