"""`hf`: a local text-only causal LM rewrites a fixed visual summary into event and frame prompts.

A text LLM cannot see, so each video is first given a fixed, per-frame *visual summary*:
- with `summary_from: <path to another generator's prompts .jsonl>` (e.g. data/prompts/annotations.jsonl),
  the frame-level prompts of that generator (`summary_field: frames`, default) or its event prompts, as
  the sentences covering each frame (`summary_field: events`: the seed's `--source_prompt_field
  event_prompts`); a video missing there is a PromptError (summaries of two kinds are never mixed in one run);
- otherwise a deterministic summary computed from the pixels of each sampled frame: brightness,
  the background colour, up to two other dominant colours with where they are and where they
  moved since the previous frame, and how much the frame changed (`visual_summary`).

The summary and the questions (never choices, never answers) go through the model's chat template;
decoding is greedy (`temperature: 0`, default) or sampled at `temperature` with a generator seeded by
(`seed`, the prompt), so a sampled rewrite is the same on every run and in any order; at most
`max_new_tokens` long. The answer is parsed as JSON
(`{"events": [...], "frames": [...]}`) if it holds such an object, else as numbered or bulleted lists
under "Events" and "Frames" headings. Anything else, or a wrong frame count, is that video's
PromptError with the reason; nothing is filled in.

Generator ablation, in params (model ids or local paths):
    vicuna:  {backend: hf, model: lmsys/vicuna-7b-v1.5, chat_template: vicuna}
    mistral: {backend: hf, model: mistralai/Mistral-7B-Instruct-v0.2}
    llama3:  {backend: hf, model: meta-llama/Meta-Llama-3-8B-Instruct}
Vicuna's tokenizer ships no chat template: `chat_template: vicuna` selects the built-in one (any
other string is used as a Jinja template). Templates that reject a system turn (Mistral) get the
instructions prepended to the user turn.

A checkpoint's own Python code (`auto_map` in its config) never runs unless the generator sets
`trust_remote_code: true` (default false, passed explicitly to `from_pretrained`, so transformers never
asks at a terminal either); review that code before turning it on.

Generated texts are cached like API responses (response_cache.py), keyed by the model's identity
(id, revision, and for a local directory a digest of each file: whole files up to 64 MiB, size plus
first and last MiB above), the rendered prompt and the generation settings, so a rerun loads no
model at all.

The package, by job: `summary` (the fixed visual summary from the pixels), `messages` (the instructions, the
user turn, the chat templates, the answer's parsing) and `backend` (HFBackend: the model, the cache). The tiny
causal LM for tests and the demo is written by `cater.testing.tiny.causal_lm`.
"""
from cater.prompts.hf_backend.backend import SUMMARY_FIELDS, HFBackend
from cater.prompts.hf_backend.messages import SYSTEM, TEMPLATES, VICUNA_TEMPLATE, parse_generation, user_message
from cater.prompts.hf_backend.summary import PALETTE, visual_summary

__all__ = [
    "HFBackend",
    "PALETTE",
    "SUMMARY_FIELDS",
    "SYSTEM",
    "TEMPLATES",
    "VICUNA_TEMPLATE",
    "parse_generation",
    "user_message",
    "visual_summary",
]
