"""Convert SNIPS "custom intent engines" (sonos/nlu-benchmark) into this workload's JSON lines.

    python data/workloads/snips/convert.py <nlu-benchmark>/2017-06-custom-intent-engines data/workloads/snips

``train.jsonl``: 100 utterances per intent, drawn with a fixed seed from the ``train_*_full``
files (texts also in the validation files removed); ``test.jsonl``: the 700 official
``validate_*`` utterances. Each row: ``{"id", "prompt": <utterance>, "reference": <label>,
"choices": LABELS}``, the label a readable phrase for the intent.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

INTENTS = {  # the dataset's intent -> the label a model scores (readable words, not CamelCase)
    "AddToPlaylist": "add to playlist",
    "BookRestaurant": "book restaurant",
    "GetWeather": "weather",
    "PlayMusic": "play music",
    "RateBook": "rate book",
    "SearchCreativeWork": "search creative work",
    "SearchScreeningEvent": "search screening event",
}
TRAIN_PER_INTENT = 100
SEED = 0


def utterances(path: Path, intent: str) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # train_PlayMusic_full.json is Latin-1
        text = raw.decode("latin-1")
    return [" ".join("".join(chunk["text"] for chunk in item["data"]).split()) for item in json.loads(text)[intent]]


def main(source: Path, out: Path) -> None:
    labels = list(INTENTS.values())
    test, seen = [], set()
    for intent, label in INTENTS.items():
        for i, text in enumerate(utterances(source / intent / f"validate_{intent}.json", intent)):
            test.append({"id": f"test-{intent}-{i}", "prompt": text, "reference": label, "choices": labels})
            seen.add(text.casefold())
    rng = random.Random(SEED)
    train = []
    for intent, label in INTENTS.items():
        pool = [t for t in dict.fromkeys(utterances(source / intent / f"train_{intent}_full.json", intent)) if t.casefold() not in seen]
        for i, text in enumerate(rng.sample(pool, TRAIN_PER_INTENT)):
            train.append({"id": f"train-{intent}-{i}", "prompt": text, "reference": label, "choices": labels})
    rng.shuffle(train)
    rng.shuffle(test)
    for name, rows in (("train", train), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(name, len(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
