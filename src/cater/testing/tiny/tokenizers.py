"""Tiny tokenizers of the real checkpoints' families, for the tiny teacher checkpoints.

- `llama_sentencepiece`: LLaMA's SentencePiece BPE (Video-LLaVA-7B, Chat-UniVi-7B and IDEFICS-9B are
  LLaMA models): byte fallback, a dummy prefix (`▁A` pieces), split digits, no normalisation,
  `<unk>` = 0, `<s>` = 1, `</s>` = 2. The SentencePiece model is trained here on a fixed text and saved
  as `tokenizer.model`, the file the 7B checkpoints ship; transformers converts it into its
  `LlamaTokenizer`, as for the real ones.
- `gpt_neox_bpe`: GPT-NeoX's byte-level BPE (MPT-7B, OpenFlamingo's language model): `ĠA` pieces,
  `<|endoftext|>` for bos, eos and unk.

Both are deterministic (one training thread, a fixed text), so the tiny checkpoints are byte-identical
from run to run. The text holds the families' prompt templates and the demo's words; anything else
falls back to bytes (SentencePiece) or byte pieces (BPE), as rare text does in the real vocabularies.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

LETTERS = ("A", "B", "C", "D", "E")
TEMPLATE_LINES = (
    "USER: <video>\nWhat happens first in the video?\nA. a red circle moves left\nB. a blue square moves right",
    "C. a green triangle appears\nD. the yellow star disappears\nE. nothing changes",
    "Answer with the option's letter from the given choices directly. ASSISTANT: A",
    "A chat between a curious user and an artificial intelligence assistant. USER: <image>\nQuestion? ASSISTANT: B",
    "User: What moved? Options: A. one B. two C. three D. four E. five<end_of_utterance>\nAssistant: C",
    "Subtitles: which shape moved up or down before or after the other one? what color was it? how many? ASSISTANT: D",
    "Question: where did it go? Answer: E",
)
WORDS = (
    "the of and to in is it that was for on are with as at be this have from or one had by word but not what all were "
    "we when your can said there use an each which she do how their if will up other about out many then them these so "
    "some her would make like him into time has look two more write go see number no way could people my than first "
    "been call who its now find long down day did get come made may part shape circle square triangle star red blue "
    "green yellow purple orange moved moves left right stayed still appeared disappeared last after before count"
)


def training_lines() -> list[str]:
    letters = [f"Answer: {letter}" for letter in LETTERS] + [f"ASSISTANT: {letter}" for letter in LETTERS]
    return [*TEMPLATE_LINES, *(letters * 8), WORDS]


def sentencepiece_model(vocab_size: int = 512) -> bytes:
    """A LLaMA-style SentencePiece BPE model (the bytes of `tokenizer.model`)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, hard_vocab_limit=False, minloglevel=2)
    return model.getvalue()


def llama_tokenizer_config(**config) -> dict:
    """LLaMA's tokenizer_config.json: bos added, no eos, the SentencePiece specials; `config` adds or overrides."""
    return {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "legacy": False, **config}


def llama_sentencepiece(added_tokens: tuple[str, ...] = (), pad_token: str | None = None, vocab_size: int = 512,
                        **config):
    """(transformers' LlamaTokenizer, the `tokenizer.model` bytes): the tokenizer converted from the trained
    SentencePiece model with LLaMA's tokenizer_config (bos added, no eos), as from_pretrained converts a
    checkpoint that ships only `tokenizer.model` (needs protobuf). `added_tokens` are special tokens after the
    SentencePiece vocabulary, as the multimodal checkpoints add `<image>`, `<video>`; `config` goes into
    tokenizer_config.json. A writer saves both: `save_pretrained` and `tokenizer.model`."""
    import tempfile

    from transformers import LlamaTokenizer

    model = sentencepiece_model(vocab_size)
    settings = llama_tokenizer_config(**config)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(model)
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
        tokenizer = LlamaTokenizer.from_pretrained(folder)
    specials = list(added_tokens) + ([pad_token] if pad_token and pad_token not in tokenizer.get_vocab() else [])
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if pad_token:
        tokenizer.pad_token = pad_token
    check_letters(tokenizer, "\u2581")
    return tokenizer, model


def gpt_neox_bpe(vocab_size: int = 512):
    """GPT-NeoX's tokenizer class over a byte-level BPE vocabulary learned from the fixed text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPTNeoXTokenizer

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
                                  special_tokens=["<|endoftext|>", "<|padding|>"], show_progress=False)
    learner.train_from_iterator(training_lines(), trainer)
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tokenizer = GPTNeoXTokenizer(vocab=learned["vocab"], merges=merges)
    check_letters(tokenizer, "Ġ")
    return tokenizer


def check_letters(tokenizer, space: str) -> None:
    """' A'..' E' after a prompt are single pieces spelled `<space marker><letter>`, as in the real vocabularies."""
    for letter in LETTERS:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer("ASSISTANT: " + letter, add_special_tokens=False)["input_ids"])
        if pieces[-1] != space + letter:
            raise AssertionError(f"tiny tokenizer: {letter!r} after a prompt is {pieces[-2:]}, not {space + letter!r}")
