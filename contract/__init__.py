"""The one contract shared by runner, scoring and orchestrator: every file format, defined once."""

from contract.dataset import AUTO_FORMAT, CAPTION_QUERY, DATA_FORMATS, DataFileError, Dataset, load_dataset
from contract.records import *  # noqa: F403  (the record types and file names are the public API)
from contract.records import __all__ as _records_all

__all__ = ["AUTO_FORMAT", "CAPTION_QUERY", "DATA_FORMATS", "DataFileError", "Dataset", "load_dataset", *_records_all]
