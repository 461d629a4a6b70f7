"""Prompt-set files (text, JSONL, JSON) parsed and validated into rows, with one-line errors naming
file and line.
"""

from transforms.prompts.files import PromptSetError
from transforms.prompts.inference import combine_inference, inference_json, parse_inference_set
from transforms.prompts.paired import load_paired_set
from transforms.prompts.rows import ROW_KEYS, PromptSet, arrow_schema
from transforms.prompts.sets import load_prompt_set
from transforms.prompts.traits import parse_instruction_trait, parse_natural_trait, parse_persona_vectors_trait

__all__ = [
    "PromptSet",
    "PromptSetError",
    "ROW_KEYS",
    "arrow_schema",
    "combine_inference",
    "inference_json",
    "load_paired_set",
    "load_prompt_set",
    "parse_inference_set",
    "parse_instruction_trait",
    "parse_natural_trait",
    "parse_persona_vectors_trait",
]
