"""Build the small tool-calling dataset used by recipes/tool-calling-lora.toml.

Writes two JSONL files next to this script, in ShareGPT format with a per-row `tools` column (a JSON string
of tool schemas — bare {name, description, parameters} and OpenAI {"type": "function", ...} alternate):

  tools_train.jsonl   conversations over five functions: a user asks, the assistant calls the right function
                      (`function_call` turn, {"name", "arguments"} JSON) — some followed by the tool's result
                      (`observation`) and the final answer — and, about two rows in five, requests that need no
                      call, answered in plain text: small talk, general questions, questions on the tools' own
                      topics that a tool cannot answer, and requests for a tool the row does not offer
  tools_eval.jsonl    90 single-turn rows built only from held-out phrasings: 60 calls (12 per function) and 30
                      rows that need no call (the same four kinds); the reference is the call, or the plain answer

Every row offers two of the five tools (a call row: the right one plus a distractor, shuffled), so the model must
pick by name — and must see when neither fits. Held-out means no eval question shares more than half its words
with a training question (tests/unit/test_tools_data.py). Stdlib only and seeded: byte-identical on every run.
"""

import json
import random
from pathlib import Path

SEED = 2112
N_CALLS_PER_FUNCTION = 32
N_FOLLOW_UPS = 30  # call → tool result → final answer
N_UNOFFERED_PER_FUNCTION = 8  # train: a request for a function the row does not offer → plain answer, no call
N_EVAL_CALLS_PER_FUNCTION = 12
N_EVAL_UNOFFERED_PER_FUNCTION = 2
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
# the plain answer to a request for a function the row does not offer
CANNOT = {
    "get_weather": "check the weather",
    "convert_currency": "convert currencies",
    "set_timer": "set timers",
    "get_stock_price": "look up stock prices",
    "translate_text": "translate text",
}

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Nairobi", "Berlin", "Toronto",
          "Sydney", "Lisbon", "Mumbai", "Dublin", "Austin", "Prague", "Hanoi", "Zurich", "Quito"]
CURRENCIES = {"USD": "dollars", "EUR": "euros", "JPY": "yen", "GBP": "pounds", "CHF": "Swiss francs",
              "CAD": "Canadian dollars"}
LABELS = ["pasta", "tea", "laundry", "workout", "oven", "nap", "eggs", "meeting", "bread", "homework"]
STOCKS = {"AAPL": "Apple", "MSFT": "Microsoft", "TSLA": "Tesla", "AMZN": "Amazon", "NVDA": "Nvidia",
          "GOOGL": "Google", "NFLX": "Netflix", "IBM": "IBM"}
# (train texts, held-out eval texts) to translate: the held-out phrasings must not share the quoted words
PHRASES = (["good morning", "thank you very much", "where is the station", "I love this city", "see you tomorrow",
            "how much does it cost", "happy birthday", "the weather is nice today", "I am hungry", "good night"],
           ["my name is Anna", "the food was delicious", "please call a taxi", "what time is it", "we are lost"])
LANGUAGES = ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Dutch"]

# (train phrasings, held-out eval phrasings) per function; {slots} filled from the value pools above
PHRASINGS = {
    "get_weather": (
        ["What's the weather in {city}?", "How is the weather in {city} right now?", "weather {city}",
         "Is it cold in {city} today?", "Tell me the current weather for {city}.", "Do I need an umbrella in {city}?",
         "Check the weather in {city} please.", "What's it like outside in {city}?",
         "Is it raining in {city}?", "What are the conditions in {city} at the moment?"],
        ["Could you look up the weather for {city}?", "Any idea what the weather is doing in {city}?",
         "I'm heading to {city}, what's the weather there?", "Give me the {city} forecast for now.",
         "Should I bring a coat to {city} today?"],
    ),
    "convert_currency": (
        ["Convert {amount} {from_code} to {to_code}.", "How much is {amount} {from_name} in {to_name}?",
         "{amount} {from_code} to {to_code}", "What do {amount} {from_name} come to in {to_code}?",
         "Change {amount} {from_name} into {to_name}, please.", "How many {to_name} would I get for {amount} {from_code}?",
         "I have {amount} {from_code}; what is that in {to_code}?", "Exchange {amount} {from_name} to {to_name}."],
        ["If I swap {amount} {from_name}, how many {to_name} is that?", "Please turn {amount} {from_code} into {to_code}.",
         "What's {amount} {from_code} worth in {to_name}?", "{amount} {from_name} equals how many {to_name}?"],
    ),
    "set_timer": (
        ["Set a timer for {minutes} minutes for the {label}.", "Start a {minutes}-minute timer called {label}.",
         "timer {minutes} min {label}", "Can you time {minutes} minutes for my {label}?",
         "Please set a {minutes} minute {label} timer.", "Count down {minutes} minutes for the {label}.",
         "Start timing the {label}: {minutes} minutes.", "I want a timer of {minutes} minutes, label it {label}."],
        ["I need a {minutes} minute countdown for the {label}.", "Remind me in {minutes} minutes about the {label}.",
         "Put on a timer: {label}, {minutes} minutes.", "Ping me after {minutes} minutes, it's for the {label}."],
    ),
    "get_stock_price": (
        ["What's the price of {symbol}?", "How is {company} stock doing?", "{symbol} stock price",
         "Get me the latest quote for {company}.", "What is {company} trading at?", "Check {symbol} for me.",
         "Show me the {symbol} share price.", "Tell me what {company} shares cost now."],
        ["Where is {company}'s share price right now?", "Look up the current {symbol} quote.",
         "How much does one {company} share go for today?", "Is {symbol} up or down at the moment?"],
    ),
    "translate_text": (
        ["Translate '{text}' into {language}.", "How do you say '{text}' in {language}?",
         "'{text}' in {language}, please.", "Can you put '{text}' into {language}?",
         "What is '{text}' in {language}?", "Give me the {language} for '{text}'."],
        ["I need '{text}' translated to {language}.", "Say '{text}' in {language} for me.",
         "Render '{text}' in {language}.", "Write '{text}' the way a {language} speaker would."],
    ),
}

# requests that need no call: (train pairs, held-out eval pairs) per kind; questions on the tools' own topics
# (weather, money, time, markets, languages) that no tool answers are the ones a tuned model over-calls on
NO_CALL = {
    "small talk": (
        [("Hi there!", "Hello! How can I help you today?"),
         ("Thanks, that's all.", "You're welcome! Have a great day."),
         ("Good morning!", "Good morning! What can I do for you?"),
         ("How are you?", "I'm doing well, thanks for asking! How can I help?"),
         ("Hello", "Hi! What would you like to do?"),
         ("Goodbye!", "Goodbye! Take care."),
         ("You're very helpful.", "Thank you, I'm glad I could help."),
         ("What's your name?", "I'm an AI assistant. How can I help you?"),
         ("Can you help me?", "Of course! Tell me what you need."),
         ("Good evening.", "Good evening! What can I do for you tonight?"),
         ("I'm bored.", "How about a short walk, a puzzle, or a new book? I'm happy to suggest something."),
         ("That was great, thanks a lot.", "Glad to hear it! Anything else?"),
         ("What can you do?", "I can answer questions and use the tools I'm given when a request needs them."),
         ("Are you a robot?", "I'm an AI assistant, a computer program that answers in text."),
         ("Ok cool", "Great! Let me know if you need anything else."),
         ("See you later!", "See you! Have a good one.")],
        [("Hey, how's it going?", "I'm doing well, thanks! How can I help you?"),
         ("Thank you so much!", "You're welcome! Happy to help."),
         ("Nice to meet you.", "Nice to meet you too! What can I do for you?"),
         ("Know any good jokes?", "Why did the scarecrow win an award? Because he was outstanding in his field."),
         ("Who made you?", "I'm an AI assistant built by a team of developers.")],
    ),
    "general": (
        [("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
         ("What is 7 times 8?", "7 times 8 is 56."),
         ("Tell me a fun fact.", "Honey never spoils: edible honey has been found in ancient Egyptian tombs."),
         ("What's the capital of Italy?", "The capital of Italy is Rome."),
         ("Can you write a haiku about rain?", "Soft rain on the roof,\nquiet streets shine in grey light,\nthe day breathes slowly."),
         ("How many days are in a leap year?", "A leap year has 366 days."),
         ("What does CPU stand for?", "CPU stands for central processing unit."),
         ("Give me a synonym for happy.", "Cheerful is a synonym for happy."),
         ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
         ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
         ("Recommend a good book.", "Try 'The Hobbit' by J. R. R. Tolkien: a short, charming adventure."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("What is the square root of 81?", "The square root of 81 is 9."),
         ("Who was the first person on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969."),
         ("What gas do plants take in?", "Plants take in carbon dioxide and release oxygen."),
         ("Name three primary colors.", "Red, yellow and blue are the traditional primary colors."),
         ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level."),
         ("Write a short sentence about cats.", "Cats spend most of the day asleep in the sunniest spot they can find."),
         ("What's 100 divided by 4?", "100 divided by 4 is 25."),
         ("How do I make scrambled eggs?", "Whisk eggs with a pinch of salt, then stir them in a buttered pan over low heat until just set."),
         ("Which animal is known as the king of the jungle?", "The lion is called the king of the jungle."),
         ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen."),
         ("Who invented the telephone?", "Alexander Graham Bell is credited with inventing the telephone."),
         ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
         ("Give me an idea for dinner.", "How about a vegetable stir-fry with rice? It's quick and easy."),
         ("How many sides does a hexagon have?", "A hexagon has six sides."),
         ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
         ("Summarize the story of Cinderella in one sentence.",
          "A kind young woman mistreated by her stepfamily goes to a royal ball with a fairy godmother's help and wins the prince's heart."),
         ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
         ("Spell the word necessary.", "N-E-C-E-S-S-A-R-Y.")],
        [("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
         ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
         ("What's 12 plus 30?", "12 plus 30 is 42."),
         ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
         ("Name a famous composer.", "Ludwig van Beethoven is a famous composer."),
         ("How many continents are there?", "There are seven continents."),
         ("Which organ pumps blood through the body?", "The heart pumps blood through the body.")],
    ),
    "near the tools": (
        [("What causes rain?", "Rain falls when water vapour in clouds condenses into drops too heavy to stay up."),
         ("Why is the sky blue?", "Air scatters blue sunlight more than red light, so the sky looks blue."),
         ("What is the difference between weather and climate?",
          "Weather is the day-to-day state of the air; climate is the average weather of a place over many years."),
         ("How do I convert Celsius to Fahrenheit?", "Multiply the Celsius value by 9/5 and add 32."),
         ("What is a hurricane?", "A hurricane is a large rotating storm with strong winds that forms over warm oceans."),
         ("Which season comes after winter?", "Spring comes after winter."),
         ("What currency is used in Japan?", "Japan uses the yen."),
         ("What does the code EUR stand for?", "EUR is the currency code of the euro."),
         ("Why do exchange rates change?", "Exchange rates move with supply and demand for currencies, interest rates and trade."),
         ("What is inflation?", "Inflation is the general rise of prices over time, which lowers what money can buy."),
         ("What is the currency of the United Kingdom?", "The United Kingdom uses the pound sterling."),
         ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
         ("How long should I boil an egg?", "About 7 minutes for a soft-set yolk, 10 minutes for hard-boiled."),
         ("What is the Pomodoro technique?", "It is a way of working in 25-minute blocks separated by short breaks."),
         ("How many seconds are in a day?", "There are 86,400 seconds in a day."),
         ("What is a stock dividend?", "A dividend is a share of a company's profit paid out to its shareholders."),
         ("What is a ticker symbol?", "A ticker symbol is the short code a stock trades under, like AAPL for Apple."),
         ("What is the difference between a stock and a bond?",
          "A stock is a share of ownership in a company; a bond is a loan you make to a company or government."),
         ("Who founded Microsoft?", "Bill Gates and Paul Allen founded Microsoft in 1975."),
         ("What does IPO mean?", "IPO means initial public offering: the first sale of a company's shares to the public."),
         ("What language is spoken in Mexico?", "Spanish is the main language spoken in Mexico."),
         ("How many official languages does Switzerland have?", "Switzerland has four national languages: German, French, Italian and Romansh."),
         ("Is English a Germanic language?", "Yes, English belongs to the Germanic branch of the Indo-European languages."),
         ("Which writing systems does Japanese use?", "Japanese uses kanji together with the hiragana and katakana syllabaries."),
         ("Is it hard to learn German?", "German takes practice, but its spelling is regular and many words resemble English ones."),
         ("Where is Tokyo?", "Tokyo is the capital of Japan, on the east coast of the island of Honshu."),
         ("What is Paris famous for?", "Paris is famous for the Eiffel Tower, the Louvre, its cafes and its food."),
         ("Why do we have time zones?", "Because the Sun is overhead at different times around the world, so clocks are set by region.")],
        [("What does a thermometer measure?", "A thermometer measures temperature."),
         ("Which country uses the rupee?", "India uses the rupee, as do Pakistan, Nepal and Sri Lanka."),
         ("What do people mean by a bear market?", "A bear market is a long fall in share prices, usually 20% or more from a recent high."),
         ("Roughly how many hours does a week have?", "A week has 168 hours."),
         ("Which language has the most native speakers?", "Mandarin Chinese has the most native speakers."),
         ("Why does it sometimes snow instead of rain?", "When the air is below freezing all the way down, the drops fall as snow."),
         ("What do stock exchanges do?", "Stock exchanges are markets where shares of companies are bought and sold."),
         ("How long does spaghetti usually need to cook?", "Usually 8 to 12 minutes in boiling water; the packet says exactly.")],
    ),
}


def slots(function, rng, index=0):
    """(phrasing slots, call arguments, tool result, final answer) for one request (index 1: held-out values)."""
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
    text, language = rng.choice(PHRASES[index]), rng.choice(LANGUAGES)
    return ({"text": text, "language": language}, {"text": text, "target_language": language},
            {"translation": f"[{language}] {text}"}, f"In {language}: [{language}] {text}")


def offered_tools(rng, needed=None, excluded=None):
    """TOOLS_PER_ROW schemas incl. the needed one (never the excluded one), shuffled; bare or OpenAI-wrapped."""
    others = [name for name in TOOLS if name not in (needed, excluded)]
    names = ([needed] if needed else []) + rng.sample(others, TOOLS_PER_ROW - (1 if needed else 0))
    rng.shuffle(names)
    wrap = rng.random() < 0.5
    return json.dumps([{"type": "function", "function": TOOLS[n]} if wrap else TOOLS[n] for n in names])


def call_row(function, phrasing, rng, index=0, follow_up=False):
    fill, arguments, result, final = slots(function, rng, index)
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


def unoffered_row(function, phrasing, rng, index=0):
    """A request for `function` on a row that offers two other tools: the answer says so, and calls nothing."""
    fill = slots(function, rng, index)[0]
    reply = f"Sorry, I can't {CANNOT[function]} here: none of the tools I have does that."
    return {"tools": offered_tools(rng, excluded=function),
            "conversations": [{"from": "human", "value": phrasing.format(**fill)}, {"from": "gpt", "value": reply}]}


def build(rng, split):
    index = 0 if split == "train" else 1
    per_function = N_CALLS_PER_FUNCTION if split == "train" else N_EVAL_CALLS_PER_FUNCTION
    unoffered = N_UNOFFERED_PER_FUNCTION if split == "train" else N_EVAL_UNOFFERED_PER_FUNCTION
    rows = [call_row(f, rng.choice(PHRASINGS[f][index]), rng, index) for f in TOOLS for _ in range(per_function)]
    rows += [unoffered_row(f, rng.choice(PHRASINGS[f][index]), rng, index) for f in TOOLS for _ in range(unoffered)]
    rows += [no_call_row(question, reply, rng) for pairs in NO_CALL.values() for question, reply in pairs[index]]
    if split == "train":
        rows += [call_row(f, rng.choice(PHRASINGS[f][0]), rng, follow_up=True)
                 for f in rng.choices(list(TOOLS), k=N_FOLLOW_UPS)]
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
