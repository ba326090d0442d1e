"""cubecast: Earth-observation cubes as video streams, packed into TACO shards.

The package reads as the data path. A ``recipe`` names a dataset; ``sources`` turns its files
into cubes; ``codec`` turns each cube into video streams plus a manifest; ``taco`` packs them
into shards and reads them back; ``publish`` verifies, reports and publishes the shards.
``build`` composes these steps for one recipe and ``cli`` is the command line on top.
Exported here is the reader's API: encode and decode a cube, open a sample of a shard,
and a training dataset over shards (:class:`CubeDataset`).
"""

from pipeline.codec.decode import decode_cube, iter_decode
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.options import EncodeOptions, GroupSpec
from pipeline.errors import CubecastError
from pipeline.taco.loader import CubeDataset
from pipeline.taco.read import iter_samples, open_sample

__all__ = [
    "CubeDataset",
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
