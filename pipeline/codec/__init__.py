"""The codec: an xarray cube <-> video streams, validity masks and a manifest.

The encode path reads as its modules: ``cube`` (which dims and variables, per-band stats) ->
``planning`` (band groups, codec choice per group) -> ``quantize`` / ``klt`` / ``groupcoder``
(values -> integer code planes) -> ``videocodecs`` with the ``pyav_engine`` / ``ffmpeg_engine``
writers (planes -> Matroska streams) and ``masks`` -> ``manifest`` + ``encoded`` (the result,
in any byte store). ``encode`` composes them (:func:`~pipeline.codec.encode.encode_cube`);
``decode`` runs them backwards (:func:`~pipeline.codec.decode.decode_cube`). ``metrics``
holds the paper's PSNR and bits-per-pixel definitions; ``schema`` the manifest's JSON Schema.

Nothing here knows about TACO, recipes or publishing.
"""
