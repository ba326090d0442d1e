"""TACO shards, after the codec: encoded cubes packed one FOLDER sample each (``pack``),
read back locally or over HTTP range requests (``read``: :func:`~pipeline.taco.read.open_sample`,
:func:`~pipeline.taco.read.iter_samples`), and opened by xarray (``backend``:
``xr.open_dataset(path, engine="cubecast")``).

Nothing here knows about recipes or publishing; ``publish`` reads the shards through ``read``.
"""
