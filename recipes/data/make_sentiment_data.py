"""Write the small sentiment dataset of recipes/bert-sentiment-lora.toml (deterministic; rerun to regenerate).

    python recipes/data/make_sentiment_data.py

Reviews of films, restaurants, gadgets, hotels and books, labelled positive / negative / neutral.
sentiment_train.jsonl and sentiment_eval.jsonl ({"text", "label"} rows) share no sentence: every eval
sentence uses a sentiment word or a sentence pattern that training never shows, so the eval accuracy
measures what the pretrained encoder carries over, not what was memorised. Beside the plain sentences, both
splits hold the cases that sentiment words alone get wrong (PHENOMENA): negated praise and negated complaints,
a concession followed by the verdict that counts ("..., but ..."), a verdict told by what people did rather
than by an adjective, sarcasm, and neutral facts and questions without dates. sentiment_new.txt holds
hand-written sentences, one a line, for `peftsft predict`. The hand-written hard set (sentiment_hard.jsonl)
is not written here, and no row here is near one of its rows (tests/unit/test_classification.py).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 11
PER_LABEL = {"train": 120, "eval": 30}
PHENOMENA_SEED = 12  # a stream of its own: the plain sentences stay as they were
EVAL_PER_PHENOMENON = 12

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
# The cases sentiment words alone get wrong: name → (label, train templates, held-out eval templates).
# {pos}/{neg}: a sentiment word of the split's pool; {concede_pos}/{concede_neg}: a side remark of the other
# polarity; {verdict_pos}/{verdict_neg}: the clause that decides the label.
PHENOMENA = {
    "negated complaint": ("positive", [
        "{Aspect} was not {neg} in the slightest.", "I have zero complaints about {aspect}.",
        "There was nothing {neg} about {subj}.", "{Aspect} never let me down.", "I honestly couldn't fault {aspect}.",
        "{Subj} was anything but {neg}.", "Not a single problem with {aspect} the whole time.",
        "I was worried {aspect} would be {neg}, and it wasn't.", "{Aspect} isn't {neg} whatsoever.",
        "I don't regret choosing {subj} one bit.",
    ], [
        "Nothing went wrong with {aspect}, not even once.", "{Aspect} was far from {neg}.",
        "I didn't find {aspect} {neg} for a second.", "None of us had anything negative to say about {subj}.",
    ]),
    "negated praise": ("negative", [
        "{Aspect} was not {pos} at all.", "I wouldn't call {aspect} {pos}.", "Nothing about {subj} was {pos}.",
        "{Aspect} never worked the way it should.", "{Subj} is far from {pos}.", "{Aspect} could have been a lot better.",
        "I did not enjoy {subj} much.", "{Aspect} wasn't {pos}, not even close.", "{Subj} didn't live up to the hype.",
        "There is nothing {pos} about {aspect}.",
    ], [
        "{Aspect} was hardly {pos}.", "No one would describe {subj} as {pos}.", "{Subj} did not impress any of us.",
        "I didn't think {aspect} was {pos} in the least.",
    ]),
    "concession, then praise": ("positive", [
        "{Concede_neg}, but {verdict_pos}.", "Although {concede_neg}, {verdict_pos}.",
        "{Concede_neg}; however, {verdict_pos}.", "{Concede_neg}, yet {verdict_pos}.",
        "{Verdict_pos} even though {concede_neg}.",
    ], [
        "{Concede_neg}. That said, {verdict_pos}.", "{Concede_neg}. Nevertheless, {verdict_pos}.",
        "{Concede_neg}, and still {verdict_pos}.",
    ]),
    "concession, then complaint": ("negative", [
        "{Concede_pos}, but {verdict_neg}.", "Although {concede_pos}, {verdict_neg}.",
        "{Concede_pos}; however, {verdict_neg}.", "{Concede_pos}, yet {verdict_neg}.",
        "{Verdict_neg} even though {concede_pos}.",
    ], [
        "{Concede_pos}. That said, {verdict_neg}.", "{Concede_pos}. Nevertheless, {verdict_neg}.",
        "{Concede_pos}, and still {verdict_neg}.",
    ]),
    "sarcasm": ("negative", [
        "Oh great, {aspect} broke again.", "Just what I needed: {aspect} failing on day one.",
        "Wow, a whole hour for {aspect}. {Pos} service.", "Love how {aspect} gives up whenever I need it.",
        "Perfect, another evening wasted on {subj}.",
    ], [
        "Fantastic, {aspect} quit after ten minutes. Thanks a lot.",
        "Sure, because waiting forever for {aspect} is exactly what I wanted.",
    ]),
    "facts and questions": ("neutral", [
        "{Subj} is about twenty minutes from the city centre.", "Has anyone here got an opinion on {subj}?",
        "I haven't checked out {subj} yet.", "{Subj} comes in three different versions.",
        "What time does {subj} open?", "Is {aspect} included in the price?", "I'm planning to look at {subj} on {day}.",
        "My cousin asked whether {subj} has {aspect}.", "{Aspect} is described in the second section of the brochure.",
        "We will decide about {subj} after the weekend.", "How long is {aspect} of {subj}?",
        "{Subj} is sold in most big cities.",
    ], [
        "Where exactly is {subj}?", "A friend of mine works at the company behind {subj}.",
        "I might compare {subj} with a few others first.", "{Subj} appears in a list of new arrivals.",
    ]),
}
CONCEDE = {
    "positive": ["{aspect} looked {pos} at first", "the first minutes were promising", "the staff were polite",
                 "the price seemed fair", "the pictures online looked {pos}", "{aspect} started off well",
                 "the location is handy"],
    "negative": ["the queue was long", "{aspect} was a little slow", "it cost more than I planned",
                 "the start was {neg}", "parking was a pain", "{aspect} took a while to get used to",
                 "the wait was longer than promised"],
}
VERDICT = {
    "positive": ["{aspect} more than made up for it", "overall I loved {subj}", "I would do it all again tomorrow",
                 "in the end {subj} was {pos}", "{aspect} turned out {pos}", "every minute was worth it"],
    "negative": ["{aspect} ruined it for me", "overall {subj} was {neg}", "I won't be doing that again",
                 "in the end {subj} was {neg}", "{aspect} turned out {neg}", "the evening was wasted"],
}
# a verdict told by what people did, not by a sentiment word: domain → label → (train, held-out eval)
DEEDS = {
    "film": {
        "positive": (["I watched {subj} twice in the same week.", "The whole cinema clapped when {subj} ended.",
                      "I keep thinking about {aspect} days later.", "I already bought tickets to see {subj} again.",
                      "I've recommended {subj} to everyone at work."],
                     ["My friends quote {subj} to each other all the time now."]),
        "negative": (["I fell asleep halfway through {subj}.", "We walked out of {subj} before the second act.",
                      "I kept checking my watch during {subj}.", "I could predict every scene of {subj}.",
                      "I turned {subj} off after twenty minutes."],
                     ["By the end of {subj} the cinema was half empty."]),
    },
    "restaurant": {
        "positive": (["We have booked {subj} again for Saturday.", "Every plate went back to the kitchen empty.",
                      "I asked the chef how {aspect} was made.", "We tipped the waiter double at {subj}.",
                      "We drive forty minutes just to eat at {subj}."],
                     ["We're already planning our next dinner at {subj}."]),
        "negative": (["We waited an hour and {aspect} arrived cold.", "Most of {aspect} stayed on our plates.",
                      "I was sick the night after eating at {subj}.", "We left {subj} before the main course came.",
                      "The waiter at {subj} ignored us for forty minutes."],
                     ["We ended up ordering pizza at home after {subj}."]),
    },
    "gadget": {
        "positive": (["{Subj} still runs like new after two years.", "I bought a second one as a gift for my parents.",
                      "{Aspect} lasts me three full days.", "I use {subj} every single day.",
                      "{Subj} survived a fall down the stairs without a scratch."],
                     ["I've replaced all my old devices with {subj}."]),
        "negative": (["{Subj} stopped turning on after a month.", "{Aspect} dies before lunch every day.",
                      "I sent {subj} back for a replacement twice.", "{Subj} overheats within ten minutes.",
                      "{Aspect} cracked the first time I used {subj}."],
                     ["{Subj} spends more time at the repair shop than at home."]),
    },
    "hotel": {
        "positive": (["We extended our stay at {subj} by three nights.", "I slept better at {subj} than at home.",
                      "The manager upgraded our room without us asking.", "{Aspect} was spotless every single day.",
                      "Staff at {subj} remembered our names from the first morning."],
                     ["Our kids keep asking when we can return to {subj}."]),
        "negative": (["There was hair in {aspect} when we arrived.", "We checked out of {subj} a day early.",
                      "Nobody fixed the broken shower in three days.", "The noise at {subj} kept us up until 3 am.",
                      "We found ants in {aspect} at {subj}."],
                     ["We spent the second night at a different place."]),
    },
    "book": {
        "positive": (["I read {subj} in one sitting.", "I stayed up all night to finish {subj}.",
                      "I've given copies of {subj} to all my friends.", "I started {subj} again the day I finished it.",
                      "I cried at {aspect} of {subj}."],
                     ["I've underlined half of {subj}."]),
        "negative": (["I gave up on {subj} after fifty pages.", "I had to reread every page of {subj} to follow it.",
                      "{Subj} is now propping up a wobbly table.", "I skipped whole chapters of {subj}.",
                      "I guessed the twist of {subj} on page ten."],
                     ["{Subj} went straight into the donation box."]),
    },
}
PER_PHENOMENON = {"negated complaint": 90, "negated praise": 90, "concession, then praise": 90,
                  "concession, then complaint": 90, "sarcasm": 45, "facts and questions": 180,
                  "deeds, positive": 60, "deeds, negative": 60}
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


def phenomenon_sentence(rng: random.Random, name: str, held_out: bool) -> tuple[str, str]:
    """(text, label) of one PHENOMENA kind, or of DEEDS ("deeds, positive"); held out: the eval templates."""
    subjects, aspects = DOMAINS[domain := rng.choice(sorted(DOMAINS))]
    if name.startswith("deeds, "):
        label = name.removeprefix("deeds, ")
        template = rng.choice(DEEDS[domain][label][held_out])
    else:
        label, train_templates, eval_templates = PHENOMENA[name]
        template = rng.choice(eval_templates if held_out else train_templates)
    slots = {"subj": rng.choice(subjects), "aspect": rng.choice(aspects), "day": rng.choice(DAYS)}
    for key, label_name in (("pos", "positive"), ("neg", "negative")):
        slots[key] = rng.choice(WORDS[label_name][held_out and rng.random() < 0.5])
    for key, label_name in (("pos", "positive"), ("neg", "negative")):
        slots[f"concede_{key}"] = rng.choice(CONCEDE[label_name]).format(**slots)
        slots[f"verdict_{key}"] = rng.choice(VERDICT[label_name]).format(**slots)
    slots |= {key[0].upper() + key[1:]: value[0].upper() + value[1:] for key, value in slots.items()}
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", template.format(**slots)), label


def phenomenon_rows(rng: random.Random, split: str, taken: set[str]) -> list[dict]:
    rows = []
    for name, train_count in PER_PHENOMENON.items():
        wanted = train_count if split == "train" else EVAL_PER_PHENOMENON
        made = tries = 0
        while made < wanted:
            tries += 1
            if tries > 100 * wanted:
                raise SystemExit(f"{name}: too few distinct {split} sentences for {wanted} rows; add templates")
            text, label = phenomenon_sentence(rng, name, held_out=split == "eval")
            if text not in taken:
                taken.add(text)
                rows.append({"text": text, "label": label})
                made += 1
    return rows


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
    rng = random.Random(PHENOMENA_SEED)
    train += phenomenon_rows(rng, "train", taken)
    evaluation += phenomenon_rows(rng, "eval", taken)
    rng.shuffle(train)
    rng.shuffle(evaluation)
    write_jsonl(HERE / "sentiment_train.jsonl", train)
    write_jsonl(HERE / "sentiment_eval.jsonl", evaluation)
    (HERE / "sentiment_new.txt").write_text("\n".join(NEW_SENTENCES) + "\n", encoding="utf-8")
    print(f"wrote {len(train)} train and {len(evaluation)} eval rows, {len(NEW_SENTENCES)} new sentences")


if __name__ == "__main__":
    main()
