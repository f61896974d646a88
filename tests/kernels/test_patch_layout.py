"""Layer addresses, CFG chunks and token grids: every layout the host produces."""

from __future__ import annotations

import pytest

from parallax.kernels.patch_layout import (
    BatchLayoutError,
    Chunk,
    block_address,
    cfg_chunks,
    chunk_size,
    layer_address,
    token_grid,
)


def test_layer_and_block_addresses():
    assert layer_address({"block": ("input", 4), "block_index": 1}) == ("input", 4, 1)
    assert layer_address({"block": ("middle", 0)}) == ("middle", 0, 0)
    assert layer_address({}) is None
    assert block_address({"block": ("output", 3)}) == ("output", 3)
    assert block_address({}) is None


@pytest.mark.parametrize(("layout", "batch"), [([1, 0], 12), ([0, 1], 12), ([0], 6), ([1], 6), ([1, 0, 0], 18),
                                               ([2, 1, 0], 9), (None, 4), ([], 4)])
def test_cfg_chunks_split_the_batch_by_the_chunk_count(layout, batch):
    chunks = cfg_chunks(batch, layout)
    kinds = list(layout or [0])
    per = batch // len(kinds)
    assert [c.kind for c in chunks] == kinds
    assert [(c.rows.start, c.rows.stop) for c in chunks] == [(i * per, (i + 1) * per) for i in range(len(kinds))]
    assert chunk_size(batch, layout) == per


def test_cfg_chunks_carry_the_uuids_when_given_one_per_chunk():
    assert cfg_chunks(4, [1, 0], ["u", "c"]) == [Chunk(0, 1, slice(0, 2), "u"), Chunk(1, 0, slice(2, 4), "c")]
    assert [c.uuid for c in cfg_chunks(4, [1, 0], ["only one"])] == [None, None]


def test_cfg_chunks_reject_a_batch_that_does_not_split():
    with pytest.raises(BatchLayoutError, match="does not split into the 2 CFG chunks"):
        cfg_chunks(7, [1, 0])


def test_token_grid_uses_activations_shape_and_checks_squares():
    assert token_grid(12, [2, 320, 3, 4]) == (3, 4)
    assert token_grid(16) == (4, 4)
    with pytest.raises(BatchLayoutError, match="not a square"):
        token_grid(12)
    with pytest.raises(BatchLayoutError, match="3x5"):
        token_grid(12, [2, 320, 3, 5])
