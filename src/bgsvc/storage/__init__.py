"""Result storage: where job results (and, when kept, originals) live until they expire.

The interface in base.py, the choice in factory.py (:func:`open_store`), one module per
technology: filesystem.py (``file://``, the default) and s3.py (``s3://``, boto3 from the
``s3`` extra); :class:`Sweeper` runs the filesystem backend's expiry.
"""

from bgsvc.storage.base import ResultStore, StoredObject, check_key
from bgsvc.storage.factory import open_store
from bgsvc.storage.filesystem import FilesystemStore
from bgsvc.storage.sweep import Sweeper, default_sweep_interval

__all__ = [
    "FilesystemStore",
    "ResultStore",
    "StoredObject",
    "Sweeper",
    "check_key",
    "default_sweep_interval",
    "open_store",
]
