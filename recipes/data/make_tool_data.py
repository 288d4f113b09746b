"""Build the small tool-calling dataset used by recipes/tool-calling-lora.toml.

Writes two JSONL files next to this script, in ShareGPT format with a per-row `tools` column (a JSON string
of tool schemas — bare {name, description, parameters} and OpenAI {"type": "function", ...} alternate):

  tools_train.jsonl   ~300 conversations over five functions: a user asks, the assistant calls the right
                      function (`function_call` turn, {"name", "arguments"} JSON) — some followed by the
                      tool's result (`observation`) and the final answer — plus requests no tool can serve,
                      answered in plain text
  tools_eval.jsonl    40 single-turn rows built only from held-out phrasings (the reference is the call,
                      or a plain answer when no call is needed)

Every row offers two of the five tools (the right one plus a distractor, shuffled), so the model must
pick by name. Stdlib only and seeded: running it twice gives byte-identical files.
"""

import json
import random
from pathlib import Path

SEED = 2112
N_CALLS_PER_FUNCTION = 48
N_FOLLOW_UPS = 30  # call → tool result → final answer
N_NO_CALL = 45
N_EVAL_CALLS_PER_FUNCTION = 6
N_EVAL_NO_CALL = 10
TOOLS_PER_ROW = 2
OUT_DIR = Path(__file__).resolve().parent


def schema(name, description, properties, required):
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


TOOLS = {
    "get_weather": schema("get_weather", "Current weather for a city.", {"city": {"type": "string"}}, ["city"]),
    "convert_currency": schema(
        "convert_currency",
        "Convert an amount between currencies (ISO codes).",
        {"amount": {"type": "number"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
        ["amount", "from_currency", "to_currency"],
    ),
    "set_timer": schema(
        "set_timer", "Start a countdown timer.",
        {"minutes": {"type": "integer"}, "label": {"type": "string"}}, ["minutes", "label"],
    ),
    "get_stock_price": schema(
        "get_stock_price", "Latest price of a stock by ticker symbol.", {"symbol": {"type": "string"}}, ["symbol"]
    ),
    "translate_text": schema(
        "translate_text", "Translate text into another language.",
        {"text": {"type": "string"}, "target_language": {"type": "string"}}, ["text", "target_language"],
    ),
}

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Nairobi", "Berlin", "Toronto",
          "Sydney", "Lisbon", "Mumbai", "Dublin", "Austin", "Prague", "Hanoi", "Zurich", "Quito"]
CURRENCIES = {"USD": "dollars", "EUR": "euros", "JPY": "yen", "GBP": "pounds", "CHF": "Swiss francs",
              "CAD": "Canadian dollars"}
LABELS = ["pasta", "tea", "laundry", "workout", "oven", "nap", "eggs", "meeting", "bread", "homework"]
STOCKS = {"AAPL": "Apple", "MSFT": "Microsoft", "TSLA": "Tesla", "AMZN": "Amazon", "NVDA": "Nvidia",
          "GOOGL": "Google", "NFLX": "Netflix", "IBM": "IBM"}
PHRASES = ["good morning", "thank you very much", "where is the station", "I love this city", "see you tomorrow",
           "how much does it cost", "happy birthday", "the weather is nice today", "I am hungry", "good night"]
LANGUAGES = ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Dutch"]

# (train phrasings, held-out eval phrasings) per function; {slots} filled from the value pools above
PHRASINGS = {
    "get_weather": (
        ["What's the weather in {city}?", "How is the weather in {city} right now?", "weather {city}",
         "Is it cold in {city} today?", "Tell me the current weather for {city}.", "Do I need an umbrella in {city}?",
         "Check the weather in {city} please.", "What's it like outside in {city}?"],
        ["Could you look up the weather for {city}?", "Any idea what the weather is doing in {city}?",
         "I'm heading to {city}, what's the weather there?", "Give me the {city} weather."],
    ),
    "convert_currency": (
        ["Convert {amount} {from_code} to {to_code}.", "How much is {amount} {from_name} in {to_name}?",
         "{amount} {from_code} to {to_code}", "What do {amount} {from_name} come to in {to_code}?",
         "Change {amount} {from_name} into {to_name}, please.", "How many {to_name} would I get for {amount} {from_code}?"],
        ["If I exchange {amount} {from_name}, how many {to_name} is that?", "Please turn {amount} {from_code} into {to_code}.",
         "What's {amount} {from_code} worth in {to_name}?"],
    ),
    "set_timer": (
        ["Set a timer for {minutes} minutes for the {label}.", "Start a {minutes}-minute timer called {label}.",
         "timer {minutes} min {label}", "Can you time {minutes} minutes for my {label}?",
         "Please set a {minutes} minute {label} timer.", "Count down {minutes} minutes for the {label}."],
        ["I need a {minutes} minute countdown for the {label}.", "Remind me in {minutes} minutes about the {label}.",
         "Put on a timer: {label}, {minutes} minutes."],
    ),
    "get_stock_price": (
        ["What's the price of {symbol}?", "How is {company} stock doing?", "{symbol} stock price",
         "Get me the latest quote for {company}.", "What is {company} trading at?", "Check {symbol} for me."],
        ["Where is {company}'s share price right now?", "Look up the current {symbol} price.",
         "How much does one {company} share cost today?"],
    ),
    "translate_text": (
        ["Translate '{text}' into {language}.", "How do you say '{text}' in {language}?",
         "'{text}' in {language}, please.", "Can you put '{text}' into {language}?",
         "What is '{text}' in {language}?"],
        ["I need '{text}' translated to {language}.", "Say '{text}' in {language} for me.",
         "Render '{text}' in {language}."],
    ),
}

# requests none of the tools can serve: a short plain answer, no call
NO_CALL_TRAIN = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that's all.", "You're welcome! Have a great day."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("Tell me a fun fact.", "Honey never spoils: edible honey has been found in ancient Egyptian tombs."),
    ("What's the capital of Italy?", "The capital of Italy is Rome."),
    ("Can you write a haiku about rain?", "Soft rain on the roof,\nquiet streets shine in grey light,\nthe day breathes slowly."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Give me a synonym for happy.", "Cheerful is a synonym for happy."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("How are you?", "I'm doing well, thanks for asking! How can I help?"),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Recommend a good book.", "Try 'The Hobbit' by J. R. R. Tolkien: a short, charming adventure."),
]
NO_CALL_EVAL = [
    ("Hey, how's it going?", "I'm doing well, thanks! How can I help you?"),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ("What's 12 plus 30?", "12 plus 30 is 42."),
    ("Thank you so much!", "You're welcome! Happy to help."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Name a famous composer.", "Ludwig van Beethoven is a famous composer."),
    ("What language is spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("How many continents are there?", "There are seven continents."),
]


def slots(function, rng):
    """(phrasing slots, call arguments, tool result, final answer) for one request."""
    if function == "get_weather":
        city = rng.choice(CITIES)
        temp, sky = rng.randint(-5, 32), rng.choice(["sunny", "cloudy", "rainy", "windy"])
        return ({"city": city}, {"city": city}, {"temperature_c": temp, "condition": sky},
                f"It is {temp}°C and {sky} in {city} right now.")
    if function == "convert_currency":
        (from_code, from_name), (to_code, to_name) = rng.sample(sorted(CURRENCIES.items()), 2)
        amount = rng.choice([5, 10, 20, 50, 75, 100, 120, 250, 500, 1000])
        result = round(amount * rng.uniform(0.5, 1.6), 2)
        return ({"amount": amount, "from_code": from_code, "to_code": to_code, "from_name": from_name,
                 "to_name": to_name},
                {"amount": amount, "from_currency": from_code, "to_currency": to_code}, {"result": result},
                f"{amount} {from_code} is about {result} {to_code}.")
    if function == "set_timer":
        minutes, label = rng.choice([1, 2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 45]), rng.choice(LABELS)
        return ({"minutes": minutes, "label": label}, {"minutes": minutes, "label": label}, {"status": "started"},
                f"Your {minutes}-minute {label} timer is running.")
    if function == "get_stock_price":
        symbol, company = rng.choice(sorted(STOCKS.items()))
        price = round(rng.uniform(20, 900), 2)
        return ({"symbol": symbol, "company": company}, {"symbol": symbol}, {"price": price, "currency": "USD"},
                f"{company} ({symbol}) is trading at ${price}.")
    text, language = rng.choice(PHRASES), rng.choice(LANGUAGES)
    return ({"text": text, "language": language}, {"text": text, "target_language": language},
            {"translation": f"[{language}] {text}"}, f"In {language}: [{language}] {text}")


def offered_tools(rng, needed=None):
    """TOOLS_PER_ROW schemas incl. the needed one, shuffled; alternately bare and OpenAI-wrapped."""
    others = [name for name in TOOLS if name != needed]
    names = ([needed] if needed else []) + rng.sample(others, TOOLS_PER_ROW - (1 if needed else 0))
    rng.shuffle(names)
    wrap = rng.random() < 0.5
    return json.dumps([{"type": "function", "function": TOOLS[n]} if wrap else TOOLS[n] for n in names])


def call_row(function, phrasing, rng, follow_up=False):
    fill, arguments, result, final = slots(function, rng)
    turns = [
        {"from": "human", "value": phrasing.format(**fill)},
        {"from": "function_call", "value": json.dumps({"name": function, "arguments": arguments})},
    ]
    if follow_up:
        turns += [{"from": "observation", "value": json.dumps(result)}, {"from": "gpt", "value": final}]
    return {"tools": offered_tools(rng, function), "conversations": turns}


def no_call_row(question, reply, rng):
    return {"tools": offered_tools(rng), "conversations": [{"from": "human", "value": question},
                                                            {"from": "gpt", "value": reply}]}


def build(rng, split):
    index = 0 if split == "train" else 1
    per_function = N_CALLS_PER_FUNCTION if split == "train" else N_EVAL_CALLS_PER_FUNCTION
    rows = [
        call_row(function, rng.choice(PHRASINGS[function][index]), rng)
        for function in TOOLS
        for _ in range(per_function)
    ]
    if split == "train":
        rows += [call_row(f, rng.choice(PHRASINGS[f][0]), rng, follow_up=True)
                 for f in rng.choices(list(TOOLS), k=N_FOLLOW_UPS)]
        rows += [no_call_row(*rng.choice(NO_CALL_TRAIN), rng) for _ in range(N_NO_CALL)]
    else:
        rows += [no_call_row(question, reply, rng) for question, reply in NO_CALL_EVAL[:N_EVAL_NO_CALL]]
    rng.shuffle(rows)
    return rows


def write(name, rows):
    path = OUT_DIR / name
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows → {path}")


def main():
    rng = random.Random(SEED)
    write("tools_train.jsonl", build(rng, "train"))
    write("tools_eval.jsonl", build(rng, "eval"))


if __name__ == "__main__":
    main()
