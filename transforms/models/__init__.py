"""Loading models: references and revisions, where their files come from (packaged offline
checkpoints, local folders, the hub at a pinned revision), their config dimensions, the
converted-model cache and the in-process model cache, tokenizers and their identity, devices,
dtypes and quantization. Outside this package import from here.
"""

from transforms.models.cache import models_cache_root
from transforms.models.devices import (
    DeviceError,
    check_device_name,
    check_dtype_name,
    resolve_device,
    resolve_dtype,
)
from transforms.models.dims import ModelDims
from transforms.models.fast_tokenizer import (
    TOKENIZER_MEMO,
    load_checkpoint_tokenizer,
)
from transforms.models.loading import (
    LoadedModel,
    load_model,
    load_tokenizer,
    model_fingerprint,
)
from transforms.models.packaged import (
    CONVERTER_VERSION,
    PACKAGED_MODELS,
    SOURCE_RECORD,
    PackagedModel,
    load_gguf_model,
    packaged_gguf,
)
from transforms.models.process_cache import (
    MODEL_CACHE,
    ModelCache,
    ModelKey,
)
from transforms.models.quantization import (
    QuantizationError,
    QuantizationSpec,
    check_supported,
    from_pretrained_kwargs,
    parse_quantization,
    quantize,
)
from transforms.models.refs import (
    ModelLoadError,
    ModelRef,
    ref_kind,
)
from transforms.models.sources import (
    checkpoint_folder,
    config_dims,
    load_config,
    local_revision,
    resolve_checkpoint,
)
from transforms.models.tokenizer_identity import (
    tokenizer_differences,
    tokenizer_fingerprint,
    tokenizer_traits,
    vocabulary_fingerprint,
)

__all__ = [
    "CONVERTER_VERSION",
    "DeviceError",
    "LoadedModel",
    "MODEL_CACHE",
    "ModelCache",
    "ModelDims",
    "ModelKey",
    "ModelLoadError",
    "ModelRef",
    "PACKAGED_MODELS",
    "PackagedModel",
    "QuantizationError",
    "QuantizationSpec",
    "SOURCE_RECORD",
    "TOKENIZER_MEMO",
    "check_device_name",
    "check_dtype_name",
    "check_supported",
    "checkpoint_folder",
    "config_dims",
    "from_pretrained_kwargs",
    "load_checkpoint_tokenizer",
    "load_config",
    "load_gguf_model",
    "load_model",
    "load_tokenizer",
    "local_revision",
    "model_fingerprint",
    "models_cache_root",
    "packaged_gguf",
    "parse_quantization",
    "quantize",
    "ref_kind",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "tokenizer_differences",
    "tokenizer_fingerprint",
    "tokenizer_traits",
    "vocabulary_fingerprint",
]
