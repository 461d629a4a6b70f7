"""Loading models: references and revisions, packaged offline checkpoints, the converted-model cache,
tokenizers and their identity, devices, dtypes and quantization. Outside this package import from here.
"""

from transforms.models.devices import (
    DeviceError,
    check_device_name,
    check_dtype_name,
    resolve_device,
    resolve_dtype,
)
from transforms.models.fast_tokenizer import (
    TOKENIZER_MEMO,
    load_checkpoint_tokenizer,
)
from transforms.models.loading import (
    LoadedModel,
    ModelLoadError,
    ModelRef,
    PACKAGED_MODELS,
    PackagedModel,
    SOURCE_RECORD,
    load_gguf_model,
    load_model,
    load_tokenizer,
    local_revision,
    model_fingerprint,
    models_cache_root,
    packaged_gguf,
    ref_kind,
    resolve_checkpoint,
    tokenizer_fingerprint,
    vocabulary_fingerprint,
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
    ModelRef,
)
from transforms.models.tokenizer_identity import (
    tokenizer_differences,
    tokenizer_fingerprint,
    tokenizer_traits,
)

__all__ = [
    "DeviceError",
    "LoadedModel",
    "ModelLoadError",
    "ModelRef",
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
    "from_pretrained_kwargs",
    "load_checkpoint_tokenizer",
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
    "tokenizer_fingerprint",
    "tokenizer_traits",
    "vocabulary_fingerprint",
]
