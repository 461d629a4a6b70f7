"""Comparing two variants of a model: weight diffs streamed tensor by tensor and read as residual
directions, activation similarity on the same tokens, and activation shifts along trait vectors.
"""

from transforms.diffing.compare import (
    cohens_d_paired,
    cohens_d_unpaired,
    diff_cosine,
    projections,
    random_directions,
    random_specificity,
)
from transforms.diffing.directions import (
    logit_lens_many,
    read_final_norm,
    token_ok,
    top_singular_directions,
    unembedding_name,
)
from transforms.diffing.similarity import (
    SimilarityStats,
)
from transforms.diffing.tensor_reader import (
    TensorReader,
)
from transforms.diffing.weights import (
    AdapterError,
    LoraAdapter,
    cosine_by_layer,
    diff_norms,
    parse_param,
    random_baseline,
)

__all__ = [
    "AdapterError",
    "LoraAdapter",
    "SimilarityStats",
    "TensorReader",
    "cohens_d_paired",
    "cohens_d_unpaired",
    "cosine_by_layer",
    "diff_cosine",
    "diff_norms",
    "logit_lens_many",
    "parse_param",
    "projections",
    "random_baseline",
    "random_directions",
    "random_specificity",
    "read_final_norm",
    "token_ok",
    "top_singular_directions",
    "unembedding_name",
]
