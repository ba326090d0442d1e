"""The last step of the data path, after ``taco``: verify the shards as written (``verify``:
decode every sample, PSNR per band against the source), describe them (``report``:
REPORT.md and plots; ``card``: the dataset card README.md) and publish the verified folder to
a HuggingFace repo, a folder or any fsspec URL (``targets``:
:func:`~pipeline.publish.targets.publish`).
"""
