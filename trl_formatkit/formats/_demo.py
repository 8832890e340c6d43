"""An offline stand-in for the Phi-3-mini tokenizer, for docstring examples (not public API).

It has Phi-3-mini-4k-instruct's chat template and special tokens (``<|user|>``, ``<|assistant|>``, ``<|end|>``,
``<|endoftext|>`` as EOS, ``<s>`` as BOS, which it does not add), so ``apply_chat_template(..., tokenize=False)``
renders exactly what the real tokenizer renders; its vocabulary is only those tokens. In your code, load the real
one: ``AutoTokenizer.from_pretrained("microsoft/Phi-3-mini-4k-instruct")``.
"""

from __future__ import annotations

from typing import Any

#: Phi-3-mini-4k-instruct's chat template, as printed in the book chapter.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_SPECIALS = ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


def phi3_like_tokenizer() -> Any:
    """A tiny tokenizer with Phi-3-mini's chat template and special tokens (see the module docstring).

    Example:
        >>> tok = phi3_like_tokenizer()
        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(_SPECIALS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(_SPECIALS[4:])})
    tokenizer.pad_token = tokenizer.eos_token  # as Phi-3-mini ships
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer
