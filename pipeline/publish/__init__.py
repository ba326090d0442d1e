"""After packing: verify the shards as written (``verify``), describe them (``report``,
``card``) and publish the verified folder to a HuggingFace repo, a folder or any fsspec URL
(``targets``: :func:`~pipeline.publish.targets.publish`).
"""
