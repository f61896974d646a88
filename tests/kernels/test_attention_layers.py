"""UNet transformer layers: levels, execution order, roles, grids and layer specs against the spec's §2 tables.

Every expected table below is written out by hand from the spec (attention_edit.md §2) and the UNet
layout (stem conv, ``num_res_blocks`` blocks per level plus a downsampler except at the deepest level,
middle at the deepest level, ``num_res_blocks + 1`` output blocks per level walking back up).
"""

from __future__ import annotations

import random

import pytest

from parallax.kernels.attention_layers import Layer, block_levels, layer_table, level_grid, role_level, select_layers

SD15_RES, SD15_MULT = [2, 2, 2, 2], [1, 2, 4, 4]
SDXL_RES, SDXL_MULT = [2, 2, 2], [1, 2, 4]

# SD1.5: 12 input blocks (0 = stem), middle, 12 output blocks.
SD15_LEVELS = {
    ("input", 0): 0, ("input", 1): 0, ("input", 2): 0,
    ("input", 3): 1, ("input", 4): 1, ("input", 5): 1,  # 3 = downsampler (its output is at level 1)
    ("input", 6): 2, ("input", 7): 2, ("input", 8): 2,
    ("input", 9): 3, ("input", 10): 3, ("input", 11): 3,
    ("middle", 0): 3,
    ("output", 0): 3, ("output", 1): 3, ("output", 2): 3,
    ("output", 3): 2, ("output", 4): 2, ("output", 5): 2,
    ("output", 6): 1, ("output", 7): 1, ("output", 8): 1,
    ("output", 9): 0, ("output", 10): 0, ("output", 11): 0,
}

# SDXL: 9 input blocks, middle, 9 output blocks.
SDXL_LEVELS = {
    ("input", 0): 0, ("input", 1): 0, ("input", 2): 0,
    ("input", 3): 1, ("input", 4): 1, ("input", 5): 1,
    ("input", 6): 2, ("input", 7): 2, ("input", 8): 2,
    ("middle", 0): 2,
    ("output", 0): 2, ("output", 1): 2, ("output", 2): 2,
    ("output", 3): 1, ("output", 4): 1, ("output", 5): 1,
    ("output", 6): 0, ("output", 7): 0, ("output", 8): 0,
}

# The spec's SD1.x table: exec index -> (address, level); 512 px = latent 64, 64² level 0 ... 8² level 3.
SD15_TABLE = [
    (("input", 1, 0), 0), (("input", 2, 0), 0),
    (("input", 4, 0), 1), (("input", 5, 0), 1),
    (("input", 7, 0), 2), (("input", 8, 0), 2),
    (("middle", 0, 0), 3),
    (("output", 3, 0), 2), (("output", 4, 0), 2), (("output", 5, 0), 2),
    (("output", 6, 0), 1), (("output", 7, 0), 1), (("output", 8, 0), 1),
    (("output", 9, 0), 0), (("output", 10, 0), 0), (("output", 11, 0), 0),
]

# SDXL transformers per block (spec §2 brackets).
SDXL_DEPTHS = {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10,
               ("output", 0): 10, ("output", 1): 10, ("output", 2): 10,
               ("output", 3): 2, ("output", 4): 2, ("output", 5): 2}


def sd15_addresses() -> list[tuple[str, int, int]]:
    return [address for address, _ in SD15_TABLE]


def sdxl_addresses() -> list[tuple[str, int, int]]:
    return [(block, i, d) for (block, i), depth in SDXL_DEPTHS.items() for d in range(depth)]


def shuffled(items, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def sd15_table():
    return layer_table(shuffled(sd15_addresses()), block_levels(SD15_RES, SD15_MULT))


def sdxl_table():
    return layer_table(shuffled(sdxl_addresses()), block_levels(SDXL_RES, SDXL_MULT))


# ---------------------------------------------------------------------------------------------
# block_levels


def test_block_levels_sd15():
    assert block_levels(SD15_RES, SD15_MULT) == SD15_LEVELS


def test_block_levels_sdxl():
    assert block_levels(SDXL_RES, SDXL_MULT) == SDXL_LEVELS


def test_block_levels_accepts_an_int_count():
    assert block_levels(2, SD15_MULT) == SD15_LEVELS


def test_block_levels_spot_checks_from_the_spec():
    levels = block_levels(SD15_RES, SD15_MULT)
    assert levels[("input", 7)] == levels[("input", 8)] == 2  # 16² at 512 px
    assert levels[("middle", 0)] == 3  # 8²
    assert [levels[("output", i)] for i in (3, 4, 5)] == [2, 2, 2]
    assert [levels[("output", i)] for i in (9, 10, 11)] == [0, 0, 0]  # 64²


def test_block_levels_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="disagree"):
        block_levels([2, 2, 2], [1, 2, 4, 4])


# ---------------------------------------------------------------------------------------------
# layer_table


def test_layer_table_sd15_matches_the_spec_table():
    table = sd15_table()
    assert table == [Layer(address, index, level) for index, (address, level) in enumerate(SD15_TABLE)]


def test_layer_table_sdxl_exec_ranges():
    table = sdxl_table()
    assert len(table) == 70
    assert [layer.index for layer in table] == list(range(70))

    def span(block, ids):
        indices = [layer.index for layer in table if layer.address[0] == block and layer.address[1] in ids]
        return indices[0], indices[-1], len(indices)

    assert span("input", (4, 5)) == (0, 3, 4)
    assert span("input", (7, 8)) == (4, 23, 20)
    assert span("middle", (0,)) == (24, 33, 10)
    assert span("output", (0, 1, 2)) == (34, 63, 30)
    assert span("output", (3, 4, 5)) == (64, 69, 6)


def test_layer_table_sdxl_exact_order_and_levels():
    table = sdxl_table()
    expected = (
        [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1)]
        + [("input", 7, d) for d in range(10)] + [("input", 8, d) for d in range(10)]
        + [("middle", 0, d) for d in range(10)]
        + [("output", o, d) for o in (0, 1, 2) for d in range(10)]
        + [("output", o, d) for o in (3, 4, 5) for d in range(2)]
    )
    assert [layer.address for layer in table] == expected
    # 1024 px: input 4,5 and output 3-5 at 64² (level 1); the rest at 32² = latent/4 (level 2)
    assert [layer.level for layer in table] == [1] * 4 + [2] * 60 + [1] * 6


def test_masactrl_sdxl_layer_starts_are_output_block_starts():
    by_index = {layer.index: layer.address for layer in sdxl_table()}
    assert by_index[44] == ("output", 1, 0)
    assert by_index[54] == ("output", 2, 0)
    assert by_index[64] == ("output", 3, 0)
    assert by_index[43] == ("output", 0, 9)  # the layer before each start closes the previous block
    assert by_index[53] == ("output", 1, 9)
    assert by_index[63] == ("output", 2, 9)


def test_masactrl_sd15_start_layer_10_is_the_32_and_64_decoder():
    from_10 = [layer for layer in sd15_table() if layer.index >= 10]
    assert [layer.address for layer in from_10] == [("output", i, 0) for i in range(6, 12)]
    assert {layer.level for layer in from_10} == {0, 1}


def test_layer_table_depth_sorts_numerically_and_after_the_id():
    # depth 10 after depth 2 (numbers, not strings); block id before depth
    levels = {("input", 7): 2, ("input", 8): 2}
    table = layer_table([("input", 8, 0), ("input", 7, 10), ("input", 7, 2)], levels)
    assert [layer.address for layer in table] == [("input", 7, 2), ("input", 7, 10), ("input", 8, 0)]
    assert [layer.index for layer in table] == [0, 1, 2]


def test_layer_table_normalises_address_types():
    table = layer_table([["middle", "0", "0"]], {("middle", 0): 3})
    assert table == [Layer(("middle", 0, 0), 0, 3)]


def test_layer_table_refuses_an_address_outside_the_layout():
    with pytest.raises(ValueError, match="no block"):
        layer_table([("output", 12, 0)], block_levels(SD15_RES, SD15_MULT))


# ---------------------------------------------------------------------------------------------
# role_level and level_grid


@pytest.mark.parametrize(("role", "level"), [
    ("latent", 0), ("latent/1", 0), ("latent/2", 1), ("latent/4", 2), ("latent/8", 3), ("latent/16", 4),
    ("  latent/4 ", 2),
])
def test_role_level(role, level):
    assert role_level(role) == level


@pytest.mark.parametrize("role", ["latent/3", "latent/6", "latent/0", "latent/", "latent/-4", "latent4", "latent/4x",
                                  "latents", "16x16", "", "/4"])
def test_role_level_refuses(role):
    with pytest.raises(ValueError, match="latent"):
        role_level(role)


@pytest.mark.parametrize(("latent", "level", "grid"), [
    ((64, 64), 0, (64, 64)), ((64, 64), 2, (16, 16)), ((64, 64), 3, (8, 8)),  # SD1.5 at 512 px
    ((128, 128), 2, (32, 32)),  # SDXL at 1024 px: latent/4 is 32²
    ((13, 9), 0, (13, 9)), ((13, 9), 1, (7, 5)), ((13, 9), 2, (4, 3)), ((13, 9), 3, (2, 2)), ((13, 9), 4, (1, 1)),
    ((12, 10), 1, (6, 5)), ((12, 10), 2, (3, 3)), ((12, 10), 3, (2, 2)),
    ((1, 1), 5, (1, 1)),
    ((96, 152), 3, (12, 19)),  # 768x1216 px
])
def test_level_grid(latent, level, grid):
    assert level_grid(latent, level) == grid


# ---------------------------------------------------------------------------------------------
# select_layers


def addresses(layers):
    return [layer.address for layer in layers]


def test_select_all():
    table = sd15_table()
    assert select_layers(table, "all") == table
    assert select_layers(table, " ALL ") == table


def test_select_roles_sd15():
    table = sd15_table()
    local_blend = [("input", 7, 0), ("input", 8, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
    assert addresses(select_layers(table, "latent/4")) == local_blend
    assert addresses(select_layers(table, "latent/8")) == [("middle", 0, 0)]
    # P2P self: the 6 layers at latent/4 and latent/8, in execution order whatever the spec order
    assert addresses(select_layers(table, "latent/8, latent/4")) == [
        ("input", 7, 0), ("input", 8, 0), ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
    assert addresses(select_layers(table, "latent")) == [
        ("input", 1, 0), ("input", 2, 0), ("output", 9, 0), ("output", 10, 0), ("output", 11, 0)]
    assert select_layers(table, "latent/16") == []  # no layer that deep


def test_select_roles_sdxl():
    table = sdxl_table()
    assert [layer.index for layer in select_layers(table, "latent/4")] == list(range(4, 64))
    assert [layer.index for layer in select_layers(table, "Latent/2")] == [0, 1, 2, 3, 64, 65, 66, 67, 68, 69]


def test_select_indices_and_ranges():
    table = sd15_table()
    assert addresses(select_layers(table, "6")) == [("middle", 0, 0)]
    assert addresses(select_layers(table, "10-15")) == [("output", i, 0) for i in range(6, 12)]
    assert addresses(select_layers(table, "13 - 15")) == [("output", 9, 0), ("output", 10, 0), ("output", 11, 0)]
    assert addresses(select_layers(table, "14-")) == [("output", 10, 0), ("output", 11, 0)]
    assert addresses(select_layers(table, "15-15")) == [("output", 11, 0)]
    assert [layer.index for layer in select_layers(table, "0, 9, 3-4, 9")] == [0, 3, 4, 9]  # sorted, no repeats
    sdxl = sdxl_table()
    assert [layer.index for layer in select_layers(sdxl, "44-")] == list(range(44, 70))
    assert [layer.index for layer in select_layers(sdxl, "64-")] == list(range(64, 70))


def test_select_addresses_and_mixtures():
    table = sd15_table()
    assert addresses(select_layers(table, "input:7:0")) == [("input", 7, 0)]
    assert addresses(select_layers(table, "OUTPUT:5:0, input:7:0")) == [("input", 7, 0), ("output", 5, 0)]
    assert addresses(select_layers(table, "middle:0:0, latent/4, 15")) == [
        ("input", 7, 0), ("input", 8, 0), ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0),
        ("output", 11, 0)]
    sdxl = sdxl_table()
    assert [layer.index for layer in select_layers(sdxl, "input:8:3,middle:0:3")] == [17, 27]


def test_select_empty_spec_selects_nothing():
    assert select_layers(sd15_table(), "") == []
    assert select_layers(sd15_table(), " , ") == []


@pytest.mark.parametrize(("spec", "match"), [
    ("16", "outside 0-15"),
    ("0-16", "outside 0-15"),
    ("15-10", "runs backwards"),
    ("20-", "outside 0-15"),
    ("input:3:0", "no transformer layer"),  # the downsampler has no transformer
    ("input:7:1", "no transformer layer"),  # SD1.5 blocks hold one
    ("input:7", "block:id:depth"),
    ("down:7:0", "block:id:depth"),
    ("input:x:0", "block:id:depth"),
    ("latent/3", "latent"),
    ("1.5", "not a role"),
    ("-5", "not a role"),
    ("abc", "not a role"),
    ("all, foo", "not a role"),
])
def test_select_refuses(spec, match):
    with pytest.raises(ValueError, match=match):
        select_layers(sd15_table(), spec)
