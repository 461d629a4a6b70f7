"""Trait-vector extraction: the train/validation split, extraction methods by name, and per-layer
evaluation.
"""

from transforms.vectors.evaluation import (
    SMALL_SAMPLE,
)
from transforms.vectors.export import (
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    VectorFile,
    export_vectors,
    read_vector_file,
)
from transforms.vectors.extraction import (
    ExtractionResult,
    METHODS,
    evaluate,
    extract,
    id_rows,
    split_train_val,
)
from transforms.vectors.probe import (
    PROBE_C_GRID,
    cv_folds,
    probe,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "VectorFile",
    "export_vectors",
    "read_vector_file",
    "ExtractionResult",
    "METHODS",
    "PROBE_C_GRID",
    "SMALL_SAMPLE",
    "cv_folds",
    "evaluate",
    "extract",
    "id_rows",
    "probe",
    "split_train_val",
]
