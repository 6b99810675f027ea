"""Flamingo as a teacher, with two implementations of the architecture to choose from.

`TeacherConfig.extra["backend"]` picks one:

- ``idefics`` (default): `IdeficsForVisionText2Text` + `IdeficsProcessor` from transformers, the open
  reproduction of Flamingo (e.g. ``HuggingFaceM4/idefics-9b-instruct``), loaded with `from_pretrained`.
  Prompt, in the family's chat format (the processor adds ``<s>`` and the image tokens)::

      User:<frame 1><frame 2>...<frame T>Question: ...\\nOptions:\\nA. ...\\n[Subtitles: ...\\n]
      Answer with the option's letter.<end_of_utterance>\\nAssistant: Answer:

- ``openflamingo``: the `open_flamingo` package (e.g. ``openflamingo/OpenFlamingo-9B-vitl-mpt7b``). Its
  loader builds the model from an open_clip vision encoder, a causal LM and a checkpoint of the perceiver
  and cross-attention weights, so `config.model` is a directory holding ``openflamingo.json``::

      {"clip_vision_encoder_path": "ViT-L-14", "clip_vision_encoder_pretrained": "openai",
       "lang_encoder_path": "anas-awadalla/mpt-7b", "tokenizer_path": "anas-awadalla/mpt-7b",
       "cross_attn_every_n_layers": 4, "checkpoint": "checkpoint.pt"}

  Relative paths (also after ``local-dir:``) are resolved against that directory. The clip is one media
  item with the frames on its frame axis, as OpenFlamingo feeds video: vision_x is [B, T_img=1, F=frames,
  C, H, W], the prompt one ``<image>`` then the same question text as above ending in ``Answer:``.

Both backends let the question and the answer position attend to every frame (IDEFICS: the image attention
mask widened to all images so far; OpenFlamingo: all frames in one media item).

Both: one forward pass per batch (left-padded), no generation. The scores are the next-token logits of the
option letters (" A", " B", ... as the tokenizer encodes them right after "Answer:") at the last prompt
position; `hard_idx` is their argmax. `hidden` is the language model's final (normed) hidden state at that
same position, as float32. The ground-truth answer is not part of `TeacherInput`, so it cannot leak.

`cater.testing.tiny.flamingo` writes a tiny randomly initialised checkpoint in each backend's real format, so
tests and the demo run the same loading code as the 9B models.

Modules: `common` (question text, answer cue), `idefics` and `openflamingo` (the backends; the latter with its
manifest, remote-code check and checkpoint loading), `teacher` (`FlamingoTeacher`); re-exported here.
"""
from __future__ import annotations

from cater.teachers.flamingo.common import ANSWER_CUE, INSTRUCTION, question_text, to_pil
from cater.teachers.flamingo.idefics import IDEFICS_END_OF_UTTERANCE, IDEFICS_MODEL_TYPE, IdeficsBackend
from cater.teachers.flamingo.openflamingo import (
    LOCAL_DIR, MANIFEST_OPTIONAL, MANIFEST_REQUIRED, OPENFLAMINGO_MANIFEST, OPENFLAMINGO_MEDIA, OpenFlamingoBackend,
    check_no_remote_code, read_openflamingo_manifest,
)
from cater.teachers.flamingo.teacher import BACKENDS, DEFAULT_BACKEND, KNOWN_EXTRA, FlamingoTeacher

__all__ = [
    "ANSWER_CUE", "BACKENDS", "DEFAULT_BACKEND", "IDEFICS_END_OF_UTTERANCE", "IDEFICS_MODEL_TYPE", "INSTRUCTION",
    "KNOWN_EXTRA", "LOCAL_DIR", "MANIFEST_OPTIONAL", "MANIFEST_REQUIRED", "OPENFLAMINGO_MANIFEST", "OPENFLAMINGO_MEDIA",
    "FlamingoTeacher", "IdeficsBackend", "OpenFlamingoBackend", "check_no_remote_code", "question_text",
    "read_openflamingo_manifest", "to_pil",
]
