"""`openai`: event and frame prompts from a vision-language model behind the OpenAI API.

Each video becomes one request: the sampled frames as images (data URLs, resized so the longer
side is at most `image_size`) plus the questions asked about the video as context (questions only:
never choices, never answers). The model must answer with strict JSON-schema structured output
`{"events": [str, ...], "frames": [str, ...]}`, with exactly one frame sentence per image; event
sentences are spread over the frames in order (`spread_events`).

Requests go through the official `openai` client, which does the retrying (`max_retries`, with
`retry-after` honoured); this module adds what the client does not: a malformed response body,
output that is not the JSON asked for, refusals and truncated answers all become that video's
PromptError with the reason. `concurrency` requests run at once, in a thread pool. Every answered
request is stored in a response cache keyed by the sha256 of its payload (see response_cache.py),
so a rerun, or a run resumed after a kill, never sends a finished request again.

The API key is read from the environment only (`OPENAI_API_KEY`, or the variable named by
`api_key_env`), and only when a request has to be sent; it is never written anywhere.

OpenAI-compatible servers (vLLM, Ollama, ...) work through `base_url`. Use `api: chat` (Chat
Completions is what they all implement). The OpenAI key goes only to OpenAI: a `base_url` other than
`https://api.openai.com/...` needs `api_key_env`, the variable holding *that* server's key (never
OPENAI_API_KEY), or `api_key_env: null` (or `none`) to send no key at all; without it the backend
refuses to start. Requests to such a server carry exactly that key in `Authorization` (or none), and
no OpenAI organization or project header, whatever OPENAI_* variables the environment holds:

    # vLLM:   vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --api-key local-secret
    #         export VLLM_API_KEY=local-secret
    generators:
      qwen-vl:
        backend: openai
        api: chat
        model: Qwen/Qwen2.5-VL-7B-Instruct
        base_url: http://localhost:8000/v1
        api_key_env: VLLM_API_KEY

    # Ollama: ollama pull llava:7b ; export OLLAMA_API_KEY=ollama  (Ollama ignores the value)
    generators:
      llava-ollama:
        backend: openai
        api: chat
        model: llava:7b
        base_url: http://localhost:11434/v1
        api_key_env: OLLAMA_API_KEY
        concurrency: 1

Structured output through `response_format: json_schema` needs vLLM with guided decoding (the
default) or Ollama >= 0.5; older servers may answer free text, which then fails validation and
is reported per video.

The package, by job: `messages` (the request's text and images, the answer's parsing), `keys` (which key goes
to which server), `pricing` (image tokens per model family, the cost estimate), `batch` (the Batch API mode:
upload, create, poll, re-attach, answers into the response cache) and `backend` (OpenAIBackend).
"""
from cater.prompts.openai_backend.backend import APIS, DETAILS, IMAGE_FORMATS, OpenAIBackend
from cater.prompts.openai_backend.batch import BATCH_TERMINAL, BatchMode
from cater.prompts.openai_backend.keys import (_UNSET, OPENAI_BASE_URL, OPENAI_KEY_ENV, _redact, api_key_from_env,
                                               is_openai_url, request_headers, resolve_api_key_env)
from cater.prompts.openai_backend.messages import (INSTRUCTIONS, OUTPUT_SCHEMA, SCHEMA_NAME, _short, _usage, chat_text,
                                                   encode_image, parse_output, responses_text, user_text)
from cater.prompts.openai_backend.pricing import (FALLBACK_RULE, PATCH_RULES, TILE_RULES, estimate_line, image_rule,
                                                  image_tokens)

__all__ = [
    "APIS",
    "BATCH_TERMINAL",
    "BatchMode",
    "DETAILS",
    "FALLBACK_RULE",
    "IMAGE_FORMATS",
    "INSTRUCTIONS",
    "OPENAI_BASE_URL",
    "OPENAI_KEY_ENV",
    "OUTPUT_SCHEMA",
    "OpenAIBackend",
    "PATCH_RULES",
    "SCHEMA_NAME",
    "TILE_RULES",
    "_UNSET",
    "_redact",
    "_short",
    "_usage",
    "api_key_from_env",
    "chat_text",
    "encode_image",
    "estimate_line",
    "image_rule",
    "image_tokens",
    "is_openai_url",
    "parse_output",
    "request_headers",
    "resolve_api_key_env",
    "responses_text",
    "user_text",
]
