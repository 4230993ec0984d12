"""Result storage: where job results (and, when kept, originals) live until they expire.

Two backends behind :class:`ResultStore`: a local directory (``file://``, the default) and
S3 or an S3-compatible store (``s3://``, boto3 from the ``s3`` extra). :func:`open_store`
picks one from the settings; :class:`Sweeper` runs the local backend's expiry.
"""

from bgsvc.storage.base import ResultStore, StoredObject, check_key
from bgsvc.storage.factory import open_store
from bgsvc.storage.local import LocalStore
from bgsvc.storage.sweep import Sweeper, default_sweep_interval

__all__ = [
    "LocalStore",
    "ResultStore",
    "StoredObject",
    "Sweeper",
    "check_key",
    "default_sweep_interval",
    "open_store",
]
