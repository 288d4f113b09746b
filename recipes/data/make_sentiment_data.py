"""Write the small sentiment dataset of recipes/bert-sentiment-lora.toml (deterministic; rerun to regenerate).

    python recipes/data/make_sentiment_data.py

Reviews of films, restaurants, gadgets, hotels and books, labelled positive / negative / neutral.
sentiment_train.jsonl and sentiment_eval.jsonl ({"text", "label"} rows) share no sentence: every eval
sentence uses a sentiment word or a sentence pattern that training never shows, so the eval accuracy
measures what the pretrained encoder carries over, not what was memorised. sentiment_new.txt holds
hand-written sentences, one a line, for `peftsft predict`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 11
PER_LABEL = {"train": 120, "eval": 30}

DOMAINS = {
    "film": (["the movie", "this film", "the sequel", "the documentary"],
             ["the acting", "the plot", "the soundtrack", "the ending", "the dialogue"]),
    "restaurant": (["the restaurant", "this cafe", "the bistro", "the pizzeria"],
                   ["the food", "the service", "the pasta", "the dessert", "the staff"]),
    "gadget": (["this phone", "the laptop", "this speaker", "the blender"],
               ["the battery", "the screen", "the sound", "the build quality", "the setup"]),
    "hotel": (["the hotel", "this resort", "the guesthouse"],
              ["the room", "the pool", "the breakfast", "the front desk", "the bed"]),
    "book": (["this novel", "the book", "the memoir"],
             ["the main character", "the writing", "the story", "the pacing", "the final chapter"]),
}

# (training words, held-out words): eval sentences draw from the held-out ones half of the time
WORDS = {
    "positive": (["wonderful", "excellent", "fantastic", "great", "delightful", "amazing", "lovely",
                  "brilliant", "superb", "enjoyable", "impressive", "pleasant"],
                 ["outstanding", "marvelous", "terrific", "charming", "splendid", "fabulous"]),
    "negative": (["terrible", "awful", "horrible", "boring", "disappointing", "dreadful", "poor", "bad",
                  "annoying", "mediocre", "unpleasant", "frustrating"],
                 ["atrocious", "dull", "lousy", "pathetic", "miserable", "abysmal"]),
}

TEMPLATES = {
    "positive": (
        ["{Aspect} was {adj}.",
         "I loved {subj}; {aspect} was {adj}.",
         "Honestly, {subj} is {adj} and I would recommend it to anyone.",
         "{Subj} was {adj}, and I would happily go back.",
         "What a {adj} experience, {subj} exceeded my expectations.",
         "Everything about {subj} felt {adj}, especially {aspect}.",
         "I was really happy with {subj}, {aspect} was {adj}.",
         "Five stars: {aspect} was {adj}.",
         "{Subj} made my whole week, I can't wait to go back.",
         "Worth every penny, {aspect} blew me away."],
        ["My friends and I agreed that {subj} was {adj}.",
         "Can't stop smiling, {aspect} in {subj} was simply {adj}!",
         "If you get the chance, try {subj}; {aspect} is {adj}.",
         "Thank you for {subj}, {aspect} put a smile on my face."],
    ),
    "negative": (
        ["{Aspect} was {adj}.",
         "I hated {subj}; {aspect} was {adj}.",
         "Honestly, {subj} is {adj} and I would not recommend it to anyone.",
         "{Subj} was {adj}, and I will never go back.",
         "What a {adj} experience, {subj} was a waste of money.",
         "Everything about {subj} felt {adj}, especially {aspect}.",
         "I was really unhappy with {subj}, {aspect} was {adj}.",
         "One star: {aspect} was {adj}.",
         "{Subj} broke down twice and nobody answered my complaints.",
         "Never again, {aspect} ruined the whole evening."],
        ["My friends and I agreed that {subj} was {adj}.",
         "I want my money back, {aspect} in {subj} was simply {adj}.",
         "Save yourself the trouble and skip {subj}; {aspect} is {adj}.",
         "I asked for a refund, {aspect} at {subj} was a complete letdown."],
    ),
    "neutral": (
        ["I went to {subj} on {day}.",
         "{Subj} was released in {year}.",
         "The review of {subj} mentions {aspect}.",
         "We talked about {subj} over lunch on {day}.",
         "{Subj} is listed on the website with its {aspect}.",
         "My brother asked me what {aspect} of {subj} is like.",
         "There is a paragraph about {aspect} in the guide.",
         "{Subj} changed owners in {year}."],
        ["The article from {year} describes {subj} and {aspect}.",
         "On {day} somebody posted a photo of {subj}.",
         "I read a short note about {aspect} of {subj}."],
    ),
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# hand-written, not generated: for `peftsft predict RUN_DIR --file recipes/data/sentiment_new.txt`
NEW_SENTENCES = [
    "The concert last night was absolutely magical.",
    "My order arrived broken and customer support never answered.",
    "The museum is open from nine to five.",
    "This is the best coffee I have had in years.",
    "The sequel is a tedious mess with no redeeming qualities.",
    "The train leaves from platform four.",
]


def sentence(rng: random.Random, label: str, held_out: bool) -> str:
    """One sentence; a held-out sentence uses a held-out template, a held-out word, or both."""
    subjects, aspects = DOMAINS[rng.choice(sorted(DOMAINS))]
    train_templates, new_templates = TEMPLATES[label]
    train_words, new_words = WORDS.get(label, ([""], [""]))
    new_template = held_out and (label == "neutral" or rng.random() < 0.5)
    new_word = held_out and not new_template
    if held_out and label != "neutral" and rng.random() < 0.3:
        new_template = new_word = True
    template = rng.choice(new_templates if new_template else train_templates)
    subj, aspect = rng.choice(subjects), rng.choice(aspects)
    text = template.format(
        subj=subj, Subj=subj[0].upper() + subj[1:], aspect=aspect, Aspect=aspect[0].upper() + aspect[1:],
        adj=rng.choice(new_words if new_word else train_words), day=rng.choice(DAYS), year=rng.randint(1995, 2024),
    )
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)  # "a amazing" → "an amazing"


def split_rows(rng: random.Random, split: str, taken: set[str]) -> list[dict]:
    rows = []
    for label in ("positive", "negative", "neutral"):
        made = 0
        while made < PER_LABEL[split]:
            text = sentence(rng, label, held_out=split == "eval")
            if text not in taken:  # no duplicates inside a split, none shared between splits
                taken.add(text)
                rows.append({"text": text, "label": label})
                made += 1
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    taken: set[str] = set()
    train = split_rows(rng, "train", taken)
    evaluation = split_rows(rng, "eval", taken)
    write_jsonl(HERE / "sentiment_train.jsonl", train)
    write_jsonl(HERE / "sentiment_eval.jsonl", evaluation)
    (HERE / "sentiment_new.txt").write_text("\n".join(NEW_SENTENCES) + "\n", encoding="utf-8")
    print(f"wrote {len(train)} train and {len(evaluation)} eval rows, {len(NEW_SENTENCES)} new sentences")


if __name__ == "__main__":
    main()
