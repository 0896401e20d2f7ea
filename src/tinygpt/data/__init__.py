"""Text in, batches out: built-in corpora, files, the tokenize-and-cache step, and batch samplers.

    from tinygpt.data import DataConfig, prepare_data, Batches
    data = prepare_data(DataConfig(data="books/"))          # tokenized once, memory-mapped
    batches = Batches(data.train, batch_size=32, block_size=256, seed=0)
    x, y, loss_mask, input_pos = next(batches)              # a Batch

Whatever feeds the trainer yields :class:`Batch` (x, y, loss_mask, input_pos): instruction data,
word datasets and rank-sharded data plug in as other iterators of batches.
"""

from .batches import Batch, Batches
from .cache import TokenData, prepare_data, token_dtype
from .config import SAMPLING_MODES, DataConfig
from .files import absolute_spec, check_encoding, read_text, resolve_files
from .instruct import (
    DEFAULT_TEMPLATE,
    END_WITHOUT_EOT,
    TEMPLATES,
    Example,
    ExampleBatches,
    Template,
    Turn,
    chat_prompt,
    encode_example,
    encode_examples,
    get_template,
    is_instruction_data,
    prompt_text,
    read_examples,
    render,
    response_end,
    split_examples,
    stop_strings,
)

__all__ = ["absolute_spec", "Batch", "Batches", "DataConfig", "SAMPLING_MODES", "TokenData", "check_encoding",
           "prepare_data", "read_text", "resolve_files", "token_dtype",
           # instruction data
           "DEFAULT_TEMPLATE", "END_WITHOUT_EOT", "TEMPLATES", "Example", "ExampleBatches", "Template", "Turn",
           "chat_prompt", "encode_example", "encode_examples", "get_template", "is_instruction_data", "prompt_text",
           "read_examples", "render", "response_end", "split_examples", "stop_strings"]
