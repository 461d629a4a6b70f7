"""Prompt-set files (text, JSONL, JSON) parsed and validated into rows, with one-line errors naming
file and line.
"""

from transforms.prompts.sets import (
    PromptSet,
    PromptSetError,
    ROW_KEYS,
    arrow_schema,
    combine_inference,
    inference_json,
    load_prompt_set,
    parse_inference_set,
    parse_instruction_trait,
    parse_natural_trait,
    parse_persona_vectors_trait,
)

__all__ = [
    "PromptSet",
    "PromptSetError",
    "ROW_KEYS",
    "arrow_schema",
    "combine_inference",
    "inference_json",
    "load_prompt_set",
    "parse_inference_set",
    "parse_instruction_trait",
    "parse_natural_trait",
    "parse_persona_vectors_trait",
]
