"""CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"): which COCO objects a
caption mentions that the image does not hold.

Files: COCO annotations - `data` is an `instances_*.json` file or a directory holding
`instances_*.json` files and optionally `captions_*.json` files (the reference merges train2014 and
val2014; give both, or the one your images come from). `images` is the directory the instances'
`file_name`s are in. The model is asked to describe each image (`PROMPT`); captions made elsewhere,
a JSON list `[{"image_id", "caption"}]`, are read by `load_captions` and scored by `score_captions`.

Scoring, as the reference `utils/chair.py` (and its recall, added by the widely used standalone
version of it: covered ground-truth objects over all ground-truth objects):
- ground truth of an image: the synonym-table node of every instance category, plus every object
  its reference captions mention (when captions files are given);
- words of a caption: lower-cased, tokenised, singularised, two-word objects joined ("hot dog",
  "baby bird" -> "bird", "toilet seat" -> "toilet", ...), "seat" dropped when "toilet" is there,
  then every word of the synonym table (chair_synonyms.txt, the paper's published data/synonyms.txt)
  mapped to its node;
- CHAIR_i = hallucinated mentions / all mentions; CHAIR_s = captions with a hallucinated mention /
  captions; recall = sum over images of ground-truth nodes mentioned / sum of ground-truth nodes.

Differences from the reference (no NLTK or pattern data offline): tokens are runs of letters and
digits, hyphenated words kept whole as NLTK's word_tokenize keeps them (NLTK splits "dog's" into
"dog" + "'s", here "dog" + "s": the same objects). Singularisation is `singular`: a word of the
table stays as it is; otherwise an irregular plural (men, women, mice, geese, ...) or the first of
-ies -> -y, -ves -> -f / -fe, -es -> -, -s -> - whose result is a word of the table. pattern.en's
`singularize` differs only on words that are not in the table (they cannot be objects either way)
and on table words it mangles (it makes "glasses" -> "glas", which the reference repairs with its
"wine glas" rule; here "wine glass" is matched directly).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import (
    BenchmarkDataError,
    BenchmarkItem,
    MetricTables,
    field_of,
    image_path,
    ratio,
    read_json,
    require_list,
)

NAME = "chair"
MAX_NEW_TOKENS = 512
PROMPT = "Please describe this image in detail."

# Two-word objects of the reference (kept whole), and qualifiers it strips ("baby bird" -> "bird").
DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate",
)  # fmt: skip
ANIMAL_WORDS = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)
VEHICLE_WORDS = ("jet", "train")
IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "mice": "mouse", "geese": "goose", "oxen": "ox", "feet": "foot",
    "teeth": "tooth", "people": "person", "children": "child", "policemen": "policeman",
    "gentlemen": "gentleman", "servicemen": "serviceman", "firemen": "fireman",
}  # fmt: skip

_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@cache
def synonyms() -> dict[str, str]:
    """Every word of the synonym table -> its node (the line's first word, a COCO category)."""
    text = resources.files(__package__).joinpath("chair_synonyms.txt").read_text(encoding="utf-8")
    table: dict[str, str] = {}
    for line in text.splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        for word in words:
            table[word] = words[0]
    return table


@cache
def double_words() -> dict[str, str]:
    table = {w: w for w in DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    return table


@cache
def _vocabulary() -> frozenset[str]:
    """Single words that take part in an object: the table's words and the parts of two-word ones."""
    words = set(synonyms()) | set(double_words())
    return frozenset(part for w in words for part in w.split(" "))


def singular(word: str) -> str:
    """The singular of `word` as far as the CHAIR vocabulary goes (module docstring)."""
    vocabulary = _vocabulary()
    if word in vocabulary:
        return word
    candidates = [IRREGULAR_PLURALS.get(word, "")]
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("ves"):
        candidates += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    return next((c for c in candidates if c in vocabulary), word)


def caption_objects(caption: str) -> list[tuple[str, str]]:
    """(word as mentioned, its node) of every COCO object mention in a caption, in order."""
    words = [singular(t) for t in _TOKEN.findall(caption.lower())]
    doubles = double_words()
    joined: list[str] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if pair in doubles:
            joined.append(doubles[pair])
            i += 2
        else:
            joined.append(words[i])
            i += 1
    if "toilet" in joined and "seat" in joined:
        joined = [w for w in joined if w != "seat"]
    table = synonyms()
    return [(w, table[w]) for w in joined if w in table]


def annotation_files(data: Path) -> tuple[list[Path], list[Path]]:
    """(instances files, captions files) named by `data`."""
    if data.is_file():
        return [data], []
    if not data.is_dir():
        raise BenchmarkDataError(data, "no such file or directory")
    instances = sorted(data.glob("instances_*.json"))
    if not instances:
        raise BenchmarkDataError(data, "no COCO instances_*.json file in this directory")
    return instances, sorted(data.glob("captions_*.json"))


def ground_truth(
    instances: Iterable[Path], captions: Iterable[Path] = ()
) -> tuple[dict[int, str], dict[int, set[str]]]:
    """(image id -> file name, image id -> ground-truth nodes) from COCO annotation files."""
    table = synonyms()
    files: dict[int, str] = {}
    objects: dict[int, set[str]] = {}
    for path in instances:
        coco = read_json(path)
        if not isinstance(coco, dict):
            raise BenchmarkDataError(path, "expected a COCO annotation object")
        names: dict[int, str] = {}
        for entry, category in enumerate(require_list(path, coco.get("categories"))):
            name = field_of(path, category, "name", str, entry=entry)
            if name not in table:
                raise BenchmarkDataError(path, f"category {name!r} is not a COCO category", entry=entry)
            names[field_of(path, category, "id", int, entry=entry)] = table[name]
        for entry, image in enumerate(require_list(path, coco.get("images"))):
            image_id = field_of(path, image, "id", int, entry=entry)
            files[image_id] = field_of(path, image, "file_name", str, entry=entry)
            objects.setdefault(image_id, set())
        for entry, annotation in enumerate(require_list(path, coco.get("annotations"))):
            category = field_of(path, annotation, "category_id", int, entry=entry)
            if category not in names:
                raise BenchmarkDataError(path, f"annotation of unknown category_id {category}", entry=entry)
            objects.setdefault(field_of(path, annotation, "image_id", int, entry=entry), set()).add(
                names[category]
            )
    for path in captions:
        coco = read_json(path)
        if not isinstance(coco, dict):
            raise BenchmarkDataError(path, "expected a COCO annotation object")
        for entry, annotation in enumerate(require_list(path, coco.get("annotations"))):
            image_id = field_of(path, annotation, "image_id", int, entry=entry)
            caption = field_of(path, annotation, "caption", str, entry=entry)
            objects.setdefault(image_id, set()).update(node for _, node in caption_objects(caption))
    return files, objects


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """One captioning prompt per image of the instances file(s), by image id; the image's
    ground-truth objects travel in `meta["objects"]`."""
    if images is None:
        raise BenchmarkDataError(data, "CHAIR needs the image directory (--images)")
    instances, captions = annotation_files(data)
    files, objects = ground_truth(instances, captions)
    return [
        BenchmarkItem(
            id=str(image_id),
            image=image_path(images, files[image_id], instances[0]),
            prompt=PROMPT,
            meta={"image_id": image_id, "objects": sorted(objects[image_id])},
        )
        for image_id in sorted(files)
    ]


def metrics(captions: Sequence[str], truths: Sequence[set[str]]) -> dict[str, float]:
    """chair_s, chair_i, recall (module docstring), n captions and mentions (object mentions)."""
    mentions = hallucinated = hallucinated_captions = covered = truth_total = 0
    for caption, truth in zip(captions, truths, strict=True):
        found = caption_objects(caption)
        wrong = [node for _, node in found if node not in truth]
        mentions += len(found)
        hallucinated += len(wrong)
        hallucinated_captions += bool(wrong)
        covered += len({node for _, node in found if node in truth})
        truth_total += len(truth)
    return {
        "n": len(captions),
        "chair_s": ratio(hallucinated_captions, len(captions)),
        "chair_i": ratio(hallucinated, mentions),
        "recall": ratio(covered, truth_total),
        "mentions": mentions,
    }


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    return {"all": metrics(list(answers), [set(item.meta["objects"]) for item in items])}


def load_captions(path: Path) -> list[tuple[int, str]]:
    """(image id, caption) of a captions file: a JSON list of {"image_id", "caption"}."""
    records = require_list(path, read_json(path))
    out = []
    for entry, record in enumerate(records):
        if not isinstance(record, dict):
            raise BenchmarkDataError(path, "expected an object with image_id and caption", entry=entry)
        out.append(
            (
                field_of(path, record, "image_id", int, entry=entry),
                field_of(path, record, "caption", str, entry=entry),
            )
        )
    return out


def score_captions(captions_file: Path, data: Path) -> MetricTables:
    """CHAIR of captions made elsewhere against the COCO annotations `data` (as `load`'s)."""
    captions = load_captions(captions_file)
    _, objects = ground_truth(*annotation_files(data))
    for entry, (image_id, _) in enumerate(captions):
        if image_id not in objects:
            raise BenchmarkDataError(
                captions_file, f"image_id {image_id} is not in the annotations", entry=entry
            )
    return {"all": metrics([c for _, c in captions], [objects[i] for i, _ in captions])}
