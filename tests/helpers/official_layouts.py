"""Small synthetic dataset layouts in the official formats, for tests and end-to-end runs.

Each `write_<dataset>(root)` writes annotation files exactly as the official releases lay them
out, plus short real videos (PyAV, 64x64, 16 frames at 8 fps = 2 s) and, for TVQA, SubRip
subtitles, and returns the `dataset` config that loads the layout:

    cfg = write_msrvtt_qa(tmp_path)          # {"name": "msrvtt_qa", "annotations": ..., "videos": ...}
    samples = ADAPTERS[cfg["name"]](cfg)

The questions and answers are made up (no real record is copied here).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FPS = 8
NUM_FRAMES = 16
SIZE = 64  # decord2 3.4.0 mis-decodes very narrow videos (32 px wide comes back with 6 channels)
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4", ".mov": "libx264"}


# --- media -----------------------------------------------------------------------------------


def clip_frames(seed: int, num_frames: int = NUM_FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 [T, size, size, 3]: a coloured square moving over a tinted background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=3)
    colour = rng.integers(130, 256, size=3)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = background
    side = size // 4
    for t in range(num_frames):
        x = (t * (size - side)) // max(1, num_frames - 1)
        frames[t, size // 3 : size // 3 + side, x : x + side] = colour
    return frames


def write_video(path: Path, seed: int = 0, num_frames: int = NUM_FRAMES, fps: int = FPS) -> Path:
    """A short real video at `path`; the codec follows the extension."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix.lower()], rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for frame in clip_frames(seed, num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: Path, seed: int = 0, num_frames: int = 6) -> Path:
    """A TVQA-style frame folder: 00001.jpg, 00002.jpg, ... (3 fps in the official release)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip_frames(seed, num_frames), start=1):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(path: Path, cues: list[tuple[float, float, str]], encoding: str = "utf-8") -> Path:
    blocks = [f"{i}\n{_srt_time(s)} --> {_srt_time(e)}\n{text}\n" for i, (s, e, text) in enumerate(cues, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\n".join(blocks).encode(encoding))
    return path


def _dump_compact(path: Path, records: list[dict]) -> None:
    """MSRVTT-QA / MSVD-QA serialisation: compact, sorted keys, '/' escaped, no final newline."""
    text = json.dumps([dict(sorted(r.items())) for r in records], separators=(",", ":")).replace("/", "\\/")
    path.write_text(text, encoding="utf-8")


# --- MSRVTT-QA / MSVD-QA ----------------------------------------------------------------------

# (question, answer) per video, by split; question words what/who/how/where/when.
_OPEN_QA = {
    "train": [
        [("what is the dog chasing?", "ball"), ("who is running?", "man"), ("how many dogs are there?", "two")],
        [("what is on the table?", "cup"), ("who is singing?", "woman"), ("where is the man?", "kitchen")],
        [("what is the man playing?", "guitar"), ("who is dancing?", "girl"), ("what is flying?", "bird")],
        [("what is a person riding?", "bike"), ("who plays the piano?", "boy"), ("when does it rain?", "night")],
        [("what is the cat eating?", "fish"), ("who is cooking?", "chef"), ("what is the girl holding?", "ball")],
        [("what is parked outside?", "car"), ("who is driving?", "man"), ("how many people talk?", "three")],
    ],
    "val": [[("what is the woman reading?", "book"), ("who is laughing?", "child")]],
    "test": [
        [("what is the man holding?", "umbrella"), ("who is swimming?", "woman"), ("is it a sunny day?", "yes")],
        [("what is the video doing?", "regard"), ("where is the cat?", "garden")],
    ],
}


def _open_records(with_category: bool, first_video: int) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {}
    qa_id, video_id = 0, first_video
    for split, videos in _OPEN_QA.items():
        records[split] = []
        for qas in videos:
            for question, answer in qas:
                record = {"answer": answer, "id": qa_id, "question": question, "video_id": video_id}
                if with_category:
                    record["category_id"] = video_id % 20
                records[split].append(record)
                qa_id += 1
            video_id += 1
    return records


def write_msrvtt_qa(root: Path, with_videos: bool = True) -> dict:
    """`root/annotations/{train,val,test}_qa.json` and `root/videos/video<N>.mp4` (videos 0-9)."""
    root = Path(root)
    ann, videos = root / "annotations", root / "videos"
    ann.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    for split, records in _open_records(with_category=True, first_video=0).items():
        _dump_compact(ann / f"{split}_qa.json", records)
        if with_videos:
            for video_id in sorted({r["video_id"] for r in records}):
                write_video(videos / f"video{video_id}.mp4", seed=video_id)
    return {"name": "msrvtt_qa", "annotations": str(ann), "videos": str(videos), "num_choices": 5, "seed": 0}


def msvd_clip_name(video_id: int) -> str:
    """A YouTube-style MSVD clip name, like the official `-4wsuPCjDBc_5_15`."""
    return f"-yt{video_id:03d}x_{video_id}_{video_id + 7}"


def write_msvd_qa(root: Path, with_videos: bool = True) -> dict:
    """`root/annotations/{train,val,test}_qa.json` + `youtube_mapping.txt`, clips in
    `root/YouTubeClips/<clip name>.avi` (videos 1-10)."""
    root = Path(root)
    ann, videos = root / "annotations", root / "YouTubeClips"
    ann.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    mapping = []
    for split, records in _open_records(with_category=False, first_video=1).items():
        _dump_compact(ann / f"{split}_qa.json", records)
        for video_id in sorted({r["video_id"] for r in records}):
            mapping.append(f"{msvd_clip_name(video_id)} vid{video_id}")
            if with_videos:
                write_video(videos / f"{msvd_clip_name(video_id)}.avi", seed=video_id)
    (ann / "youtube_mapping.txt").write_text("\n".join(mapping) + "\n", encoding="utf-8")
    return {"name": "msvd_qa", "annotations": str(ann), "videos": str(videos), "num_choices": 5, "seed": 0}


# --- ActivityNet-QA -----------------------------------------------------------------------------

# per video: (k, question, answer, type), following the official per-video layout of types
_FREE_QUESTIONS = {
    4: "what color is the shirt",
    5: "what is in the hand",
    6: "where is the person",
    7: "how many people are there",
    8: "what is the weather like",
}
_ANET_ANSWERS = {
    0: ["dancing", "running", "jumping", "swimming", "cooking", "surfing"],
    1: ["left", "right", "behind", "front", "above", "below"],
    2: ["sitting", "walking", "clapping", "waving", "standing", "kneeling"],
    4: ["red", "blue", "green", "black", "white", "yellow"],
    5: ["ball", "rope", "bottle", "phone", "racket", "cup"],
    6: ["gym", "beach", "street", "park", "pool", "stage"],
    7: ["1", "2", "3", "4", "5", "6"],
    8: ["sunny", "rainy", "cloudy", "calm", "windy", "snowy"],
}
ANET_VIDEOS = {
    "train": ["abc_DEF-12", "Gh-Ij_kLm9", "nOpQrStUv1", "v_Wx-yz0AbC", "Qq1-Qq2_Qq3"],
    "val": ["VaL_vid-001"],
    "test": ["tEsT-vid_02"],
}
ANET_PLAIN_NAMED = {"Gh-Ij_kLm9"}  # this one is stored as <video_name>.mkv, the rest as v_<video_name>.mp4


def _anet_video_qas(video_index: int) -> list[tuple[str, str, int]]:
    """10 (question, answer, type) for one video, in the official order of types."""
    pick = lambda t: _ANET_ANSWERS[t][video_index % len(_ANET_ANSWERS[t])]  # noqa: E731
    yes_no = ("yes", "no")[video_index % 2], ("no", "yes")[video_index % 2]
    return [
        ("what is the person doing", pick(0), 0),
        ("is the person outdoors", yes_no[0], 3),
        ("is the person a man", yes_no[1], 3),
        ("where is the ball relative to the person", pick(1), 1),
        ("what does the person do after standing up", pick(2), 2),
    ] + [(question, pick(t), t) for t, question in _FREE_QUESTIONS.items()]


def write_activitynet_qa(root: Path, with_videos: bool = True) -> dict:
    """`root/annotations/{train,val,test}_{q,a}.json` and videos in `root/videos`."""
    root = Path(root)
    ann, videos = root / "annotations", root / "videos"
    ann.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    video_index = 0
    for split, names in ANET_VIDEOS.items():
        questions, answers = [], []
        for name in names:
            for k, (question, answer, type_code) in enumerate(_anet_video_qas(video_index), start=1):
                qid = f"v_{name}_{k}"
                questions.append({"video_name": name, "question": question, "question_id": qid})
                answers.append({"answer": answer, "type": type_code, "question_id": qid})
            if with_videos:
                file = f"{name}.mkv" if name in ANET_PLAIN_NAMED else f"v_{name}.mp4"
                write_video(videos / file, seed=100 + video_index)
            video_index += 1
        (ann / f"{split}_q.json").write_text(json.dumps(questions), encoding="utf-8")
        (ann / f"{split}_a.json").write_text(json.dumps(answers), encoding="utf-8")
    return {"name": "activitynet_qa", "annotations": str(ann), "videos": str(videos), "num_choices": 5, "seed": 0}


# --- TVQA --------------------------------------------------------------------------------------

TVQA_CLIPS = {
    "s01e01_seg01_clip_00": "The Big Bang Theory",
    "castle_s01e01_seg02_clip_03": "Castle",
    "met_s02e03_seg01_clip_01": "How I Met You Mother",
    "friends_s01e02_seg02_clip_05": "Friends",
}
TVQA_SUBTITLES = [  # (start, end, text) relative to the clip; clips last 2 s
    (0.0, 0.6, "(Sheldon:) Where is my spot?"),
    (0.7, 1.2, "(Leonard:) You are sitting in it.\nReally."),
    (1.3, 2.0, "(Penny:) Café time!"),
]
# (split, qid, vid_name, ts, question, answer_idx)
TVQA_QUESTIONS = [
    ("train", 0, "s01e01_seg01_clip_00", "0.5-1.25", "What does Sheldon look for?", 2),
    ("train", 1, "s01e01_seg01_clip_00", "0-0.5", "Who answers Sheldon?", 0),
    ("train", 2, "castle_s01e01_seg02_clip_03", "1.3-2.0", "Why does Penny shout?", 4),
    ("train", 3, "met_s02e03_seg01_clip_01", "NaN-NaN", "Where are they sitting?", 1),
    ("val", 4, "met_s02e03_seg01_clip_01", "0.0-2.0", "How many people talk?", 3),
    ("val", 5, "castle_s01e01_seg02_clip_03", "0.8-1.1", "Which seat is taken?", 0),
    ("test_public", 6, "friends_s01e02_seg02_clip_05", "0.2-0.9", "When does Penny arrive?", None),
    ("test_public", 7, "friends_s01e02_seg02_clip_05", "NaN-NaN", "Whose coffee is it?", None),
]


def tvqa_line(qid: int, vid_name: str, ts: str, question: str, answer_idx: int | None) -> dict:
    record = {f"a{i}": f"Answer {i} to question {qid}. " for i in range(5)}
    if answer_idx is not None:
        record["answer_idx"] = answer_idx
    record.update({"q": question, "qid": qid, "show_name": TVQA_CLIPS[vid_name], "ts": ts, "vid_name": vid_name})
    return record


def write_tvqa(root: Path, with_videos: bool = True, frames: bool = False) -> dict:
    """`root/annotations/tvqa_{train,val,test_public}.jsonl`, `root/subtitles/<vid>.srt`, and
    either `root/videos/<vid>.mp4` or (frames=True) `root/frames/<show>_frames/<vid>/00001.jpg...`."""
    root = Path(root)
    ann, subs = root / "annotations", root / "subtitles"
    ann.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test_public"):
        lines = [tvqa_line(q, v, ts, text, a) for s, q, v, ts, text, a in TVQA_QUESTIONS if s == split]
        (ann / f"tvqa_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    cfg = {"name": "tvqa", "annotations": str(ann), "subtitles": str(subs), "use_ts": True}
    for seed, vid_name in enumerate(TVQA_CLIPS):
        # one clip's subtitles are ISO-8859-1, as many official .srt files are
        write_srt(subs / f"{vid_name}.srt", TVQA_SUBTITLES, encoding="iso-8859-1" if seed == 1 else "utf-8")
        if not with_videos:
            continue
        if frames:
            show = vid_name.split("_")[0] if not vid_name.startswith("s0") else "bbt"
            write_frame_folder(root / "frames" / f"{show}_frames" / vid_name, seed=seed)
        else:
            write_video(root / "videos" / f"{vid_name}.mp4", seed=seed)
    cfg["frames_dir" if frames else "videos"] = str(root / ("frames" if frames else "videos"))
    return cfg
