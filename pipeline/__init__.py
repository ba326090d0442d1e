"""cubecast: Earth-observation cubes as video streams, packed into TACO shards."""

from pipeline.codec.decode import decode_cube, iter_decode
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.planning import EncodeOptions, GroupSpec
from pipeline.errors import CubecastError
from pipeline.taco.read import iter_samples, open_sample

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
