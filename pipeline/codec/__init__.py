"""The codec: an xarray cube <-> video streams, validity masks and a manifest.

The encode path reads as its modules: ``options`` (what is asked) -> ``cube`` (dims,
variables, per-band stats) -> ``planning`` (band groups and their streams) -> ``search`` with
``ratecontrol`` (codec and quantiser of a PSNR-target group, from trials on a sample) ->
``quantize`` / ``klt`` / ``groupcoder`` (values -> integer code planes) -> ``passes`` feeding
the ``engines`` (``pyav_engine`` / ``ffmpeg_engine``, told by ``settings`` and
``videocodecs``) and ``masks`` -> ``quality`` (the decoded result checked) -> ``describe``,
``manifest`` and ``encoded`` (the result, in any byte store). ``encode`` composes them
(:func:`~pipeline.codec.encode.encode_cube`); ``decode`` runs them backwards
(:func:`~pipeline.codec.decode.decode_cube`). ``metrics`` holds the paper's PSNR and
bits-per-pixel definitions; ``schema`` the manifest's JSON Schema; ``memory`` keeps a long
encode's footprint flat.

Nothing here knows about TACO, recipes or publishing.
"""
