"""Writes peftsft's shipped general-ability data (package data under peftsft/data/general/):

- check.jsonl: the held-out general check, run before and after every chat run (hand-written below).
  Each row: {"messages": [user, assistant reference], "expect": [accepted answers], "category": ...}.
  The loss is taken on the reference; a greedy answer counts as right when it contains any `expect` item.
- replay.jsonl: the replay pool that `[data] replay = 0.2` mixes into training ({"messages": [...]} rows),
  generated from templates with a fixed seed. Disjoint from the check set (asserted here, and in a test).

    python recipes/data/make_general_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "peftsft" / "data" / "general"

# category, question, accepted answers, reference answer. Chosen so that the default model
# (SmolLM2-135M-Instruct) answers about two thirds of them in 16 greedy tokens, and none appears in
# recipes/data/persona_train.jsonl (the default recipe's data), so the check is held out from it too.
CHECK = [
    ("facts", "What is the capital of Russia?", ["Moscow"], "The capital of Russia is Moscow."),
    ("facts", "Which planet is known as the Red Planet?", ["Mars"], "Mars is known as the Red Planet."),
    ("facts", "What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"],
     "Plants absorb carbon dioxide from the air."),
    ("facts", "What is the largest ocean on Earth?", ["Pacific"], "The Pacific Ocean is the largest ocean on Earth."),
    ("facts", "What is the tallest mountain in the world?", ["Everest"], "Mount Everest is the tallest mountain in the world."),
    ("facts", "Who painted the Mona Lisa?", ["Leonardo", "da Vinci"], "The Mona Lisa was painted by Leonardo da Vinci."),
    ("facts", "What language is mainly spoken in Brazil?", ["Portuguese"], "The main language of Brazil is Portuguese."),
    ("facts", "What is the currency of Japan?", ["yen"], "The currency of Japan is the yen."),
    ("facts", "What is the largest desert in Africa?", ["Sahara"], "The Sahara is the largest desert in Africa."),
    ("facts", "Which organ pumps blood around the human body?", ["heart"], "The heart pumps blood around the body."),
    ("facts", "What is the longest river in South America?", ["Amazon"], "The Amazon is the longest river in South America."),
    ("facts", "Who was the first person to walk on the Moon?", ["Armstrong"],
     "Neil Armstrong was the first person to walk on the Moon."),
    ("arithmetic", "What is 2 + 2?", ["4", "four"], "2 + 2 = 4."),
    ("arithmetic", "What is 100 divided by 10?", ["10", "ten"], "100 divided by 10 is 10."),
    ("arithmetic", "What is half of 50?", ["25"], "Half of 50 is 25."),
    ("arithmetic", "What is 5 + 3?", ["8", "eight"], "5 + 3 = 8."),
    ("arithmetic", "What is 10 - 4?", ["6", "six"], "10 - 4 = 6."),
    ("arithmetic", "What is 3 multiplied by 4?", ["12", "twelve"], "3 multiplied by 4 is 12."),
    ("language", "Write the number twelve as digits.", ["12"], "12"),
    ("language", "What is the plural of 'mouse'?", ["mice"], "The plural of mouse is mice."),
    ("language", "What is the opposite of 'hot'?", ["cold"], "The opposite of hot is cold."),
    ("language", "What is the opposite of 'up'?", ["down"], "The opposite of up is down."),
    ("language", "Translate 'hello' into Spanish.", ["hola"], "Hello in Spanish is hola."),
    ("language", "What is the plural of 'child'?", ["children"], "The plural of child is children."),
    ("reasoning", "Which is larger, 9 or 12?", ["12"], "12 is larger than 9."),
    ("reasoning", "What is the first month of the year?", ["January"], "January is the first month of the year."),
    ("reasoning", "How many sides does a triangle have?", ["3", "three"], "A triangle has three sides."),
    ("reasoning", "How many months are in a year?", ["12", "twelve"], "There are 12 months in a year."),
    ("reasoning", "What do bees make?", ["honey"], "Bees make honey."),
    ("reasoning", "What color do you get when you mix blue and yellow?", ["green"], "Mixing blue and yellow gives green."),
    ("reasoning", "If today is Monday, what day is tomorrow?", ["Tuesday"], "If today is Monday, tomorrow is Tuesday."),
    ("reasoning", "What is the color of a clear daytime sky?", ["blue"], "A clear daytime sky is blue."),
]

# --- replay pool: facts the check set does not ask -------------------------------------------------------
CAPITALS = [
    ("France", "Paris"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Greece", "Athens"),
    ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Colombia", "Bogotá"), ("Venezuela", "Caracas"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
]
FACTS = [
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the main gas in the air we breathe?", "Nitrogen is the main gas in the air; oxygen is second."),
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote Pride and Prejudice."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("Which continent is Egypt in?", "Egypt is in Africa."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What instrument has 88 keys?", "A standard piano has 88 keys."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("How many players are on a soccer team on the field?", "A soccer team has 11 players on the field."),
    ("Which ocean lies between Europe and North America?", "The Atlantic Ocean lies between Europe and North America."),
    ("What is the largest country by area?", "Russia is the largest country by area."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is the opposite of north?", "The opposite of north is south."),
    ("Which is the smallest planet in our solar system?", "Mercury is the smallest planet in our solar system."),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body."),
    ("What melts ice on roads in winter?", "Salt is spread on roads to melt ice."),
    ("What is a group of wolves called?", "A group of wolves is called a pack."),
]
WORDS = {  # word: (opposite, plural)
    "big": ("small", None), "fast": ("slow", None), "happy": ("sad", None), "open": ("closed", None),
    "light": ("dark", None), "early": ("late", None), "full": ("empty", None), "young": ("old", None),
    "foot": (None, "feet"), "tooth": (None, "teeth"), "man": (None, "men"), "woman": (None, "women"),
    "goose": (None, "geese"), "box": (None, "boxes"), "city": (None, "cities"), "leaf": (None, "leaves"),
}
PAST = {"eat": "ate", "run": "ran", "see": "saw", "write": "wrote", "swim": "swam", "buy": "bought", "take": "took"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ITEMS = ["apples", "books", "pencils", "coins", "stickers", "marbles"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana"]
LIST_TOPICS = {"primary colors": "red, yellow and blue", "fruits": "apple, banana and orange",
               "vowels": "a, e, i, o and u", "planets near the Sun": "Mercury, Venus and Earth"}


def msg(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def arithmetic(rng: random.Random) -> dict:
    op = rng.choice("+-*")
    a, b = rng.randint(2, 60), rng.randint(2, 12 if op == "*" else 60)
    a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    if (a, b) in {(2, 2), (5, 3), (10, 4), (3, 4)}:  # the check set asks these
        a += 1
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    question = rng.choice([f"What is {a} {op} {b}?", f"What is {a} {word} {b}?", f"Calculate {a} {op} {b}."])
    return msg(question, f"{a} {word} {b} is {value}.")


def comparison(rng: random.Random) -> dict:
    a, b = rng.sample(range(13, 500), 2)
    if rng.random() < 0.5:
        return msg(f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}.")
    return msg(f"Which is smaller, {a} or {b}?", f"{min(a, b)} is smaller than {max(a, b)}.")


def calendar(rng: random.Random) -> dict:
    if rng.random() < 0.5:
        i = rng.randrange(1, 7)  # Monday → Tuesday is in the check set
        return msg(f"If today is {DAYS[i]}, what day is tomorrow?", f"If today is {DAYS[i]}, tomorrow is {DAYS[(i + 1) % 7]}.")
    i = rng.randrange(1, 12)
    return msg(f"Which month comes after {MONTHS[i - 1]}?", f"{MONTHS[i]} comes after {MONTHS[i - 1]}.")


def word_problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(3, 20), rng.randint(2, 9)
    if rng.random() < 0.5:
        return msg(f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
                   f"{name} has {a + b} {item} now, because {a} + {b} = {a + b}.")
    a = a + b
    return msg(f"{name} has {a} {item} and gives away {b}. How many {item} are left?",
               f"{name} has {a - b} {item} left, because {a} - {b} = {a - b}.")


def sequence(rng: random.Random) -> dict:
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    seq = [start + step * i for i in range(4)]
    return msg(f"What comes next: {', '.join(map(str, seq))}, ...?", f"The next number is {seq[-1] + step}; each step adds {step}.")


def formatting(rng: random.Random) -> dict:
    word = rng.choice(["river", "garden", "window", "planet", "music", "yellow", "friend", "summer", "bridge", "forest"])
    kind = rng.randrange(4)
    if kind == 0:
        return msg(f"Write the word '{word}' in capital letters.", word.upper())
    if kind == 1:
        return msg(f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters.")
    if kind == 2:
        return msg(f"What is the first letter of the word '{word}'?", f"The first letter of '{word}' is '{word[0]}'.")
    topic, answer = rng.choice(list(LIST_TOPICS.items()))
    return msg(f"Name the {topic}.", f"The {topic} are {answer}.")


def lexical(rng: random.Random) -> dict:
    word, (opposite, plural) = rng.choice(list(WORDS.items()))
    if opposite:
        return msg(f"What is the opposite of '{word}'?", f"The opposite of {word} is {opposite}.")
    if rng.random() < 0.3:
        verb, past = rng.choice(list(PAST.items()))
        return msg(f"What is the past tense of '{verb}'?", f"The past tense of {verb} is {past}.")
    return msg(f"What is the plural of '{word}'?", f"The plural of {word} is {plural}.")


def replay_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = [msg(f"What is the capital of {c}?", f"The capital of {c} is {k}.") for c, k in CAPITALS]
    rows += [msg(q, a) for q, a in FACTS]
    makers = [arithmetic, comparison, calendar, word_problem, sequence, formatting, lexical]
    seen = {row["messages"][0]["content"] for row in rows} | {q for _, q, _, _ in CHECK}
    while len(rows) < n:
        row = rng.choice(makers)(rng)
        if row["messages"][0]["content"] not in seen:
            seen.add(row["messages"][0]["content"])
            rows.append(row)
    rng.shuffle(rows)
    return rows


def check_rows() -> list[dict]:
    return [{**msg(q, ref), "expect": expect, "category": cat} for cat, q, expect, ref in CHECK]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    check, replay = check_rows(), replay_rows(300)
    questions = {r["messages"][0]["content"].lower() for r in check}
    assert not questions & {r["messages"][0]["content"].lower() for r in replay}, "check and replay overlap"
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "check.jsonl", check)
    write_jsonl(OUT / "replay.jsonl", replay)
    print(f"{len(check)} check rows, {len(replay)} replay rows → {OUT}")


if __name__ == "__main__":
    main()
