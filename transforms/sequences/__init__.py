"""Token sequences: the one tokenization path (prompt + response ids and the boundary), the position
language that selects tokens of them, and batched generation.
"""

from transforms.sequences.generation import (
    Generated,
    GenerationConfig,
    generate_batch,
    left_pad,
    plan_batches,
    stop_ids,
)
from transforms.sequences.positions import (
    EmptySpanError,
    FRAMES,
    Position,
    parse_position,
)
from transforms.sequences.tokenization import (
    DoubleBOSError,
    FormattedPrompt,
    PromptFormatError,
    PromptResponse,
    answer_end_id,
    assert_no_double_bos,
    bos_token_id,
    format_prompt,
    response_boundary,
    split_generated,
    supports_system_prompt,
    tokenizer_adds_bos,
)

__all__ = [
    "DoubleBOSError",
    "EmptySpanError",
    "FRAMES",
    "FormattedPrompt",
    "Generated",
    "GenerationConfig",
    "Position",
    "PromptFormatError",
    "PromptResponse",
    "answer_end_id",
    "assert_no_double_bos",
    "bos_token_id",
    "format_prompt",
    "generate_batch",
    "left_pad",
    "parse_position",
    "plan_batches",
    "response_boundary",
    "split_generated",
    "stop_ids",
    "supports_system_prompt",
    "tokenizer_adds_bos",
]
