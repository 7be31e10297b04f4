"""Tiered storage: closed segments go to an object store and are read back from it.

``store`` (the interface) with ``s3`` and ``gcs``; ``manifest`` (what a partition has in
the bucket, pure); ``uploader`` (per partition, started for the partitions this broker
leads); ``reader`` (Fetch/ListOffsets below the local log start); ``restore`` (a new
broker from the bucket); ``manager`` ties them together for ``app.py``.
"""
