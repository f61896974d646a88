"""MVDiffusion correspondence-aware attention (CAA) weights as the pack sees them (Tangshitao/MVDiffusion).

The shared contract between the offline converter (``tools/convert_caa.py``, which reads the published
Lightning checkpoints) and the loader node (which reads the converted safetensors header): the nine
blocks, their widths, the tensor shapes of one block, and one validation that names the file, the block,
the key and the expected and found shapes. Pure data: no ComfyUI import, no tensors allocated.

A block of width C is a transformer (``attn1`` q/k/v/out, GEGLU ``ff`` with mult 4, ``norm1``/``norm2``)
plus the positional-encoding buffer ``pe.freq_bands`` of C/4 frequencies; heads have 32 channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from .tensor_shapes import shape_of

# Keys inside the Lightning checkpoint carry this prefix; the converted file does not.
CHECKPOINT_PREFIX = "mv_base_model."
BLOCK_PREFIX = "cp_blocks_"
FORMAT = "parallax-caa"
FORMAT_VERSION = "1"
FREQ_BANDS = "pe.freq_bands"
HEAD_DIM = 32
VARIANTS = ("pano", "pano_outpaint")

ENCODER_BLOCKS = tuple(f"cp_blocks_encoder.{i}" for i in range(4))
MID_BLOCK = "cp_blocks_mid"
DECODER_BLOCKS = tuple(f"cp_blocks_decoder.{i}" for i in range(4))
BLOCKS = (*ENCODER_BLOCKS, MID_BLOCK, *DECODER_BLOCKS)
PUBLISHED_CHANNELS: Mapping[str, int] = MappingProxyType(
    dict(zip(BLOCKS, (320, 640, 1280, 1280, 1280, 1280, 1280, 640, 320)))
)
# The depth model wraps its CAA in ``attn1`` next to a ``resnet``: same block names, other tensors.
_DEPTH_MARKERS = ("attn1.", "resnet.")
_MAX_LISTED = 12


class CAALayoutError(ValueError):
    """Tensors that are not the nine CAA blocks; ``problems`` holds one line per missing/extra/misshaped key."""

    def __init__(self, source: str, problems: Sequence[str], headline: str | None = None):
        self.source, self.problems = source, list(problems)
        head = headline or f"{source} does not hold the MVDiffusion CAA blocks ({len(self.problems)} problem(s))"
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        lines = [head + ":", *(f"  - {p}" for p in shown)]
        if more:
            lines.append(f"  - ... and {more} more")
        super().__init__("\n".join(lines))


class UnsupportedCAAVariant(CAALayoutError):
    """The depth-conditioned MVDiffusion model: its blocks carry a resnet and another encoding."""


def block_shapes(channels: int) -> dict[str, tuple[int, ...]]:
    """Suffix (inside one block) -> shape, for a block of width ``channels``."""
    c = check_width(channels)
    shapes: dict[str, tuple[int, ...]] = {f"transformer.attn1.{p}.weight": (c, c) for p in ("to_q", "to_k", "to_v")}
    shapes.update(
        {
            "transformer.attn1.to_out.weight": (c, c),
            "transformer.attn1.to_out.bias": (c,),
            "transformer.ff.net.0.proj.weight": (8 * c, c),
            "transformer.ff.net.0.proj.bias": (8 * c,),
            "transformer.ff.net.2.weight": (c, 4 * c),
            "transformer.ff.net.2.bias": (c,),
            "transformer.norm1.weight": (c,),
            "transformer.norm1.bias": (c,),
            "transformer.norm2.weight": (c,),
            "transformer.norm2.bias": (c,),
            FREQ_BANDS: (1, 1, c // 4),
        }
    )
    return shapes


def check_width(channels: int) -> int:
    """A block width must split into 32-channel heads (which also makes C/4 frequencies whole)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0 or channels % HEAD_DIM:
        raise ValueError(f"a CAA block width must be a positive multiple of {HEAD_DIM}, got {channels!r}")
    return channels


def check_channels(channels: Mapping[str, int] | None) -> Mapping[str, int]:
    """The published widths, or a full block -> width table (tests and re-trained variants use others)."""
    if channels is None:
        return PUBLISHED_CHANNELS
    if set(channels) != set(BLOCKS):
        raise ValueError(f"a CAA width table names exactly the blocks {BLOCKS}, got {tuple(channels)}")
    for width in channels.values():
        check_width(width)
    return channels


def channels_from_list(widths: Sequence[int]) -> dict[str, int]:
    """Nine widths in block order (encoder 0-3, mid, decoder 0-3) -> a width table."""
    if len(widths) != len(BLOCKS):
        raise ValueError(f"{len(BLOCKS)} widths are needed (encoder 0-3, mid, decoder 0-3), got {len(widths)}")
    return dict(check_channels(dict(zip(BLOCKS, widths))))


def block_parameter_count(channels: int) -> int:
    """Trainable parameters of one block: 16C^2 + 14C (the frequency buffer is not a parameter)."""
    total = 0
    for suffix, shape in block_shapes(channels).items():
        if suffix != FREQ_BANDS:
            count = 1
            for dim in shape:
                count *= dim
            total += count
    return total


def layout_parameter_count(channels: Mapping[str, int] | None = None) -> int:
    return sum(block_parameter_count(c) for c in check_channels(channels).values())


def caa_key(key: str) -> str | None:
    """The converted-file name of a CAA tensor (checkpoint prefix stripped), or None for any other tensor."""
    name = key[len(CHECKPOINT_PREFIX) :] if key.startswith(CHECKPOINT_PREFIX) else key
    return name if name.startswith(BLOCK_PREFIX) else None


def split_key(key: str) -> tuple[str, str]:
    """``cp_blocks_encoder.0.pe.freq_bands`` -> ("cp_blocks_encoder.0", "pe.freq_bands")."""
    head, _, rest = key.partition(".")
    if head in ("cp_blocks_encoder", "cp_blocks_decoder"):
        index, _, rest = rest.partition(".")
        head = f"{head}.{index}"
    return head, rest


def is_depth_variant(keys: Mapping[str, object] | Sequence[str]) -> bool:
    return any(split_key(k)[1].startswith(_DEPTH_MARKERS) for k in keys)


def _is_float(value: object) -> bool | None:
    """Whether a tensor (or header entry) holds floats; None when the value says nothing about its dtype."""
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else bool(getattr(dtype, "is_floating_point", False))


def _block_problems(block: str, width: int, found: Mapping[str, object]) -> list[str]:
    expected = block_shapes(width)
    problems = []
    for suffix, shape in expected.items():
        key = f"{block}.{suffix}"
        if suffix not in found:
            problems.append(f"block {block} (C={width}): missing {key} (expected shape {list(shape)})")
            continue
        got = shape_of(found[suffix])
        if got != shape:
            shown = list(got) if got is not None else repr(found[suffix])
            problems.append(f"block {block} (C={width}): {key} expected shape {list(shape)}, got {shown}")
        elif _is_float(found[suffix]) is False:
            problems.append(
                f"block {block} (C={width}): {key} expected a floating-point tensor, "
                f"got {getattr(found[suffix], 'dtype', None)}"
            )
    for suffix in sorted(set(found) - set(expected)):
        problems.append(f"block {block} (C={width}): unexpected key {block}.{suffix}")
    return problems


def caa_problems(tensors: Mapping[str, object], channels: Mapping[str, int] | None = None) -> list[str]:
    """Every way ``tensors`` (converted names -> tensor or header entry with ``shape``) differs from the layout."""
    widths = check_channels(channels)
    by_block: dict[str, dict[str, object]] = {}
    problems = []
    for key, value in tensors.items():
        block, suffix = split_key(key)
        if block in widths:
            by_block.setdefault(block, {})[suffix] = value
        else:
            problems.append(f"unexpected key {key} (not one of the blocks {', '.join(BLOCKS)})")
    for block, width in widths.items():
        if block not in by_block:
            problems.append(f"block {block} (C={width}) is missing: none of its {len(block_shapes(width))} tensors")
        else:
            problems.extend(_block_problems(block, width, by_block[block]))
    return problems


def check_caa_layout(
    tensors: Mapping[str, object], channels: Mapping[str, int] | None = None, source: str = "the file"
) -> None:
    """Raise ``CAALayoutError`` (or ``UnsupportedCAAVariant``) unless ``tensors`` are exactly the nine blocks.

    ``tensors`` maps converted names (no ``mv_base_model.`` prefix) to tensors or to header entries with
    ``shape`` (and optionally ``dtype``), so a safetensors header is validated without reading weights.
    """
    if is_depth_variant(tensors):
        example = next(k for k in tensors if split_key(k)[1].startswith(_DEPTH_MARKERS))
        raise UnsupportedCAAVariant(
            source,
            [f"depth-model key {example}"],
            headline=(
                f"{source} is the MVDiffusion depth model (CAA blocks with 'attn1.'/'resnet.' tensors); only the "
                f"panorama models ({' / '.join(VARIANTS)}) are supported"
            ),
        )
    problems = caa_problems(tensors, channels)
    if problems:
        raise CAALayoutError(source, problems)
