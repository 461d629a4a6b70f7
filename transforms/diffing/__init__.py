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
from transforms.diffing.paired_features import (
    FeatureStat,
    PairedValues,
    benjamini_hochberg,
    mean_difference_direction,
    paired_feature_stats,
    sign_flips,
    split_pairs,
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
    "FeatureStat",
    "LoraAdapter",
    "PairedValues",
    "SimilarityStats",
    "TensorReader",
    "benjamini_hochberg",
    "cohens_d_paired",
    "cohens_d_unpaired",
    "cosine_by_layer",
    "diff_cosine",
    "diff_norms",
    "logit_lens_many",
    "mean_difference_direction",
    "paired_feature_stats",
    "parse_param",
    "projections",
    "random_baseline",
    "random_directions",
    "random_specificity",
    "read_final_norm",
    "sign_flips",
    "split_pairs",
    "token_ok",
    "top_singular_directions",
    "unembedding_name",
]
