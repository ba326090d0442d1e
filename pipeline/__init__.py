"""cubecast: Earth-observation cubes as video streams, packed into TACO shards."""

from pipeline.codec import decode_cube, encode_cube, iter_decode
from pipeline.encoded import EncodedCube
from pipeline.errors import CubecastError
from pipeline.planning import EncodeOptions, GroupSpec
from pipeline.reader import iter_samples, open_sample

__all__ = [
    "CubecastError",
    "EncodeOptions",
    "EncodedCube",
    "GroupSpec",
    "decode_cube",
    "encode_cube",
    "iter_decode",
    "iter_samples",
    "open_sample",
]
__version__ = "0.1.0"
