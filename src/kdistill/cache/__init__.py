"""Teacher-output caches: the format and fingerprints (:mod:`.format`), writing one
(:mod:`.write`) and the teacher that reads one (:mod:`.teacher`)."""

from .format import CACHE_FORMAT, DTYPES, check_matches, describe, nbytes_of, read_meta, row_keys, teacher_fingerprint
from .teacher import CachedTeacher, TopKTeacherOutput, stored_views
from .write import cache_teacher

__all__ = [
    "CACHE_FORMAT",
    "DTYPES",
    "CachedTeacher",
    "TopKTeacherOutput",
    "cache_teacher",
    "check_matches",
    "describe",
    "nbytes_of",
    "read_meta",
    "row_keys",
    "stored_views",
    "teacher_fingerprint",
]
