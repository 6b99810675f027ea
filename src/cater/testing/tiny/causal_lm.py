"""A tiny causal LM (LLaMA) for tests and the demo: random, or wired to answer any prompt with a fixed script."""
from __future__ import annotations

from pathlib import Path

from cater.prompts.hf_backend.messages import SYSTEM, user_message
from cater.prompts.hf_backend.summary import PALETTE

TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_causal_lm(path: str | Path, seed: int = 0, script: list[str] | None = None) -> Path:
    """Write a tiny LlamaForCausalLM + byte-level BPE tokenizer with a chat template to `path`.

    Without `script` the weights are random (the output is random text). With `script` (a list of
    distinct text pieces) the model is wired to answer any prompt with exactly those pieces, then
    end of sequence: the pieces become tokens of their own, the attention and MLP outputs are zeroed
    so each position sees only its own token, and the output head maps each piece to the next.
    Either way it is saved with `save_pretrained` and loads through `from_pretrained`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [SYSTEM, user_message(["a red shape at the top left"], ["What appeared first?"]), *PALETTE]
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=["<|assistant|>"])
    if script:
        if len(set(script)) != len(script):
            raise ValueError("script pieces must be distinct (each becomes one token with one successor)")
        tokenizer.add_tokens(script)
    tokenizer.chat_template = TINY_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if script:
        _wire_script(model, [tokenizer.convert_tokens_to_ids("<|assistant|>")]
                     + tokenizer.convert_tokens_to_ids(script) + [tokenizer.eos_token_id])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def _wire_script(model, chain: list[int]) -> None:
    """Make greedy decoding follow `chain` token by token (see write_tiny_causal_lm)."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.normal_(0.0, 0.01)
        for current, following in zip(chain, chain[1:]):
            direction = embed[current] / embed[current].norm()
            head[following] += 50.0 * direction
