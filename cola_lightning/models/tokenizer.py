"""Tokenizers: the backbone's own, or a built-in byte-level one for tiny random test models."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BYTE_TOKENIZER = "bytes"
BYTE_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>")


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte (ids 0-255) plus pad, eos and bos (256-258).

    Tiny random-init backbones use it so tests need no files: any text round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    for token in BYTE_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def _byte_symbols() -> list[str]:
    """The printable symbol the byte-level pre-tokenizer uses for each byte 0-255 (GPT-2's table).

    Printable bytes stand for themselves; the others are shifted past 255 in order.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batched training and generation need a pad token; fall back to EOS as most LMs do."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The tokenizer has neither a pad nor an EOS token; set one on the tokenizer "
                "before using it with cola_lightning."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
