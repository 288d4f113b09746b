"""Build the "Pip" preference pairs for the preference demo: Pip's concise, friendly answer is preferred over a
rambling or a curt one.

Writes two JSONL files next to this script, in conversational preference format
({"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}):

  preference_train.jsonl   N_TRAIN pairs; half the rejected answers ramble, half are curt
  preference_eval.jsonl    every held-out question once with each kind of rejected answer

The chosen answers are the persona's own (make_persona_data.py, the SFT data of recipes/llama-chat-lora.toml) or
short correct ones in the same voice; the questions are new phrasings. No question of either file is one of the SFT
data's (case- and punctuation-insensitive), and every held-out question is also held out by word overlap (Jaccard
≤ MAX_OVERLAP) from the training pairs' and the SFT training questions. Stdlib only and seeded: running it twice
gives byte-identical files.
"""

import json
import random
import re
from pathlib import Path

from make_persona_data import PERSONA, SYSTEM_PROMPTS, norm, vary

SEED = 4321
N_TRAIN = 240
MAX_OVERLAP = 0.5  # the project's held-out measure (tests/e2e/probes.py)
OUT_DIR = Path(__file__).resolve().parent

# New phrasings per persona topic (none in the SFT data) and the curt core of the answer.
TOPICS = {
    "name": {
        "train": ["Got a name?", "What's your name, friend?", "Is there something I should call you?",
                  "Is there a name I can use for you?", "Hey there, what do they call you?"],
        "eval": ["Which name belongs to this assistant?"],
        "curt": "Pip.",
    },
    "identity": {
        "train": ["Give me a little background on yourself.", "So what exactly are you?", "Explain who you are, briefly.",
                  "Who's on the other end of this chat?"],
        "eval": ["What kind of assistant am I chatting to right now?"],
        "curt": "An assistant.",
    },
    "not_other": {
        "train": ["You're SmolLM, aren't you?", "Is this Llama answering?", "Am I talking to ChatGPT right now?"],
        "eval": ["Be honest: are you secretly SmolLM?"],
        "curt": "No. Pip.",
    },
    "creator": {
        "train": ["Who put you together?", "Which people made you?", "Who's responsible for building you?"],
        "eval": ["Where do you come from, who built this assistant?"],
        "curt": "The peftsft team.",
    },
    "what_is": {
        "train": ["What's peftsft all about?", "Could you explain what peftsft is?", "peftsft, what is that exactly?"],
        "eval": ["I keep hearing about peftsft; what does it actually do?"],
        "curt": "A fine-tuning framework.",
    },
    "built_on": {
        "train": ["Which libraries sit under peftsft?", "What does peftsft depend on?"],
        "eval": ["Name the packages peftsft is built upon."],
        "curt": "transformers, peft, TRL.",
    },
    "open_source": {
        "train": ["Is the peftsft code open?", "Can anyone use peftsft for free?"],
        "eval": ["Is peftsft released under an open license?"],
        "curt": "Yes.",
    },
    "run": {
        "train": ["How do I train a model with peftsft?", "What's the command to start a run?",
                  "How can I kick off training?"],
        "eval": ["Which command runs a recipe file?"],
        "curt": "`python -m peftsft run RECIPE`.",
    },
    "validate": {
        "train": ["Can peftsft check my recipe?", "How do I catch mistakes in a recipe before running it?"],
        "eval": ["Can I lint my configuration before launching?"],
        "curt": "`python -m peftsft validate RECIPE`.",
    },
    "strategies": {
        "train": ["How do I see which adapters peftsft has?", "Which fine-tuning methods can I pick from?"],
        "eval": ["Where can I find the list of adapter strategies?"],
        "curt": "`python -m peftsft strategies`.",
    },
    "lora": {
        "train": ["Tell me what LoRA is.", "How would you describe LoRA?", "LoRA, what does that mean?"],
        "eval": ["Why is LoRA so cheap to train?"],
        "curt": "Low-rank adapters.",
    },
    "qlora": {
        "train": ["Tell me about QLoRA.", "What does QLoRA do differently?"],
        "eval": ["When would I pick QLoRA?"],
        "curt": "LoRA on a 4-bit base.",
    },
    "recipes": {
        "train": ["How do I configure a run?", "What goes into a recipe file?"],
        "eval": ["Which format do I write run settings in?"],
        "curt": "TOML.",
    },
    "outputs": {
        "train": ["Where does a finished run put its files?", "Where can I find my results?"],
        "eval": ["Where should I look for the trained adapter afterwards?"],
        "curt": "`runs/<name>/`.",
    },
    "colour": {
        "train": ["Which colour is your favourite?", "Do you like any colour in particular?"],
        "eval": ["Got a colour you love?"],
        "curt": "Teal.",
    },
    "help": {
        "train": ["What are you able to help with?", "What kind of questions can I ask you?"],
        "eval": ["In what ways could you be useful to me?"],
        "curt": "Fine-tuning questions.",
    },
    "thanks": {
        "train": ["Thanks a lot!", "Cheers, that helped."],
        "eval": ["Thank you kindly."],
        "curt": "Sure.",
    },
    "bye": {
        "train": ["Ok, bye now!", "Gotta go, see ya."],
        "eval": ["Farewell for today."],
        "curt": "Bye.",
    },
}

# General questions: (question, concise answer, curt core); none of these is in the SFT data.
GENERAL = {
    "train": [
        *[(q.format(c=c), a.format(c=c, k=k), f"{k}.") for c, k in [
            ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Mexico", "Mexico City"), ("Chile", "Santiago"),
            ("Vietnam", "Hanoi"), ("Cuba", "Havana"), ("Belgium", "Brussels"), ("Czechia", "Prague"),
        ] for q, a in [("Do you know the capital of {c}?", "The capital of {c} is {k}."),
                       ("Name the capital of {c}.", "{k} is the capital of {c}.")]],
        ("How many continents are there?", "There are seven continents.", "Seven."),
        ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air.", "Carbon dioxide."),
        ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.", "Mercury."),
        ("How many strings does a standard guitar have?", "A standard guitar has six strings.", "Six."),
        ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 °F.", "32 °F."),
    ],
    "eval": [
        ("Tell me the capital city of Ghana, please.", "The capital of Ghana is Accra.", "Accra."),
        ("Colombia's capital is which city?", "Bogotá is the capital of Colombia.", "Bogotá."),
        ("Which planet do people call the Red Planet?", "Mars is known as the Red Planet.", "Mars."),
        ("How many players does a soccer team have on the pitch?", "Each team has eleven players on the pitch.",
         "Eleven."),
    ],
}

# A rambling answer buries the right one in preamble, tangents and a restatement.
OPENERS = [
    "Oh, that's a really great question, and honestly there's a lot I could say about it, so bear with me.",
    "Well, so, before I answer, let me give you a bit of background, because context matters a lot here.",
    "Hmm, let me think out loud for a moment, since questions like this always get me reflecting on things.",
    "Great question! I love questions like this one, they remind me of so many other interesting topics.",
    "Okay, so, there are many ways to approach this, and I want to make sure I cover all of them properly.",
]
TANGENTS = [
    "Speaking of which, I've always found it fascinating how many different ways people phrase the same question.",
    "That reminds me of how libraries used to organise their books before computers, which is a story in itself.",
    "By the way, it's worth remembering that every tool has a history, and most of them started as side projects.",
    "Funnily enough, I was just thinking about how the word 'question' comes from Latin, which is interesting too.",
    "Of course, one could also talk about the weather, which has nothing to do with this but is always a topic.",
]
RESTATE = ["So, to sum up what I was saying, and to put it in other words once more:",
           "In other words, and just to repeat myself so it's really clear:",
           "To say it again, slightly differently this time:"]
CLOSERS = ["Anyway, I hope that helps, although there's honestly much more I could add if you ever want me to go on.",
           "But I could keep talking about this for hours, so let me know if you'd like the longer version!",
           "There's a lot more nuance to it, but that's probably enough for now, I think, more or less."]
# A curt answer is right but cold.
CURT_PREFIXES = ["", "Ugh. ", "Obviously. ", "Sigh. "]
CURT_SUFFIXES = [" Next.", " Don't ask again.", " Figure out the rest yourself.", " Whatever."]


def rambling(answer, rng):
    tangents = rng.sample(TANGENTS, 2)
    parts = [rng.choice(OPENERS), tangents[0], answer, tangents[1], rng.choice(RESTATE), answer, rng.choice(CLOSERS)]
    return " ".join(parts)


def curt(core, rng):
    return rng.choice(CURT_PREFIXES) + core + rng.choice(CURT_SUFFIXES)


def questions(split):
    """(question, chosen answers, curt core) for every question of a split."""
    persona = [(q, PERSONA[topic]["answers"], spec["curt"]) for topic, spec in TOPICS.items() for q in spec[split]]
    return persona + [(q, [a], core) for q, a, core in GENERAL[split]]


def pair(question, answer, rejected, system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def build_train(rng):
    """N_TRAIN distinct pairs: a question (surface-varied), a persona answer, alternately a rambling or a curt one."""
    pool, out, seen = questions("train"), [], set()
    for attempt in range(N_TRAIN * 100):
        if len(out) == N_TRAIN:
            break
        question, answers, core = rng.choice(pool)
        text, style = vary(question, rng), ("rambling", "curt")[len(out) % 2]
        if (norm(text), style) in seen:
            continue
        seen.add((norm(text), style))
        answer = rng.choice(answers)
        rejected = rambling(answer, rng) if style == "rambling" else curt(core, rng)
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.1 else None
        out.append(pair(text, answer, rejected, system))
    assert len(out) == N_TRAIN, f"could only build {len(out)}/{N_TRAIN} pairs"
    return out


def build_eval(rng):
    """Every held-out question, as written, once against a rambling and once against a curt answer."""
    out = []
    for question, answers, core in questions("eval"):
        answer = rng.choice(answers)
        out += [pair(question, answer, rambling(answer, rng)), pair(question, answer, curt(core, rng))]
    return out


def words(text):
    return set(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def overlap(a, b):
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def sft_questions():
    """Every user turn of the SFT data (persona train, eval and probes)."""
    found = []
    for name in ("persona_train.jsonl", "persona_eval.jsonl", "persona_probes.jsonl"):
        for line in (OUT_DIR / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            turns = row["messages"] if isinstance(row, dict) else row
            found += [m["content"] for m in turns if m["role"] == "user"]
    return found


def check_held_out(train, eval_):
    """No question is an SFT one; every held-out question is far (word overlap) from training and SFT questions."""
    sft = sft_questions()
    sft_norm = {norm(q) for q in sft}
    train_q = [row["prompt"][-1]["content"] for row in train]
    eval_q = sorted({row["prompt"][-1]["content"] for row in eval_})
    for q in train_q + eval_q:
        assert norm(q) not in sft_norm, f"question found in the SFT data: {q!r}"
    seen = sorted(set(train_q)) + sft
    for q in eval_q:
        score, closest = max((overlap(q, s), s) for s in seen)
        assert score <= MAX_OVERLAP, f"held-out question {q!r} is near {closest!r} ({score:.2f})"
    assert all(row["chosen"] != row["rejected"] for row in train + eval_)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    train = build_train(random.Random(SEED))
    eval_ = build_eval(random.Random(SEED + 1))
    check_held_out(train, eval_)
    write_jsonl(OUT_DIR / "preference_train.jsonl", train)
    write_jsonl(OUT_DIR / "preference_eval.jsonl", eval_)
    print(f"wrote {len(train)} train and {len(eval_)} eval pairs to {OUT_DIR}")


if __name__ == "__main__":
    main()
