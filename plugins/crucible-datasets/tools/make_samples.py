# ruff: noqa: E501  (sample content is data: long literal lines read better unsplit)
"""Write the samples shipped with crucible-datasets (deterministic; run from the repo root).

    python plugins/crucible-datasets/tools/make_samples.py

All content is written for this project: short, original conversations and
problems, with arithmetic computed here so every answer is right. The chat
sample is also written to examples/data/chat.jsonl (examples/sft-local.toml),
the dates sample to examples/data/dates.jsonl (the README's main job).
"""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "plugins" / "crucible-datasets" / "crucible_datasets" / "samples"
EXAMPLE_CHAT = ROOT / "examples" / "data" / "chat.jsonl"
EXAMPLE_DATES = ROOT / "examples" / "data" / "dates.jsonl"


def _u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# -- chat -----------------------------------------------------------------------------

OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("early", "late"),
    ("full", "empty"),
    ("loud", "quiet"),
    ("wet", "dry"),
    ("open", "closed"),
    ("light", "dark"),
    ("fast", "slow"),
    ("hard", "soft"),
    ("young", "old"),
    ("push", "pull"),
    ("win", "lose"),
    ("begin", "end"),
    ("inside", "outside"),
    ("happy", "sad"),
    ("thick", "thin"),
    ("rich", "poor"),
    ("heavy", "light"),
    ("true", "false"),
]
PLURALS = [
    ("mouse", "mice"),
    ("child", "children"),
    ("leaf", "leaves"),
    ("box", "boxes"),
    ("tooth", "teeth"),
    ("city", "cities"),
    ("foot", "feet"),
    ("knife", "knives"),
    ("goose", "geese"),
    ("person", "people"),
    ("wolf", "wolves"),
    ("bus", "buses"),
    ("sheep", "sheep"),
    ("baby", "babies"),
    ("woman", "women"),
]
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Chile", "Santiago"),
    ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Cuba", "Havana"),
    ("Germany", "Berlin"),
    ("Australia", "Canberra"),
    ("Mexico", "Mexico City"),
    ("Thailand", "Bangkok"),
]
WORDS = [
    "garden",
    "pencil",
    "river",
    "window",
    "planet",
    "basket",
    "candle",
    "orange",
    "bridge",
    "forest",
    "ladder",
    "monkey",
    "rocket",
    "silver",
    "tunnel",
    "cat",
    "dog",
    "lamp",
    "stone",
    "cloud",
]
RHYMES = [
    ("cat", "hat"),
    ("tree", "bee"),
    ("cake", "lake"),
    ("moon", "spoon"),
    ("light", "night"),
    ("rain", "train"),
    ("bell", "shell"),
    ("star", "car"),
    ("fox", "box"),
    ("ring", "king"),
]
TIPS = [
    (
        "Give me a tip for sleeping better.",
        "Go to bed at the same time each night and keep screens away for an hour before.",
    ),
    (
        "How can I remember names?",
        "Repeat the name back when you hear it and link it to something you know.",
    ),
    ("Suggest a quick breakfast.", "Oats with milk and a sliced banana take about five minutes."),
    (
        "How do I keep a plant alive?",
        "Give it light, water only when the soil is dry, and use a pot with drainage.",
    ),
    (
        "Any tip for learning to type?",
        "Keep your fingers on the home row and practise a little every day.",
    ),
    (
        "How do I stay focused?",
        "Work in 25-minute blocks with short breaks, and silence your phone.",
    ),
    ("What should I pack for a hike?", "Water, a snack, a map, sun cream and a light rain jacket."),
    (
        "How can I save money on food?",
        "Plan meals for the week, shop with a list and cook in batches.",
    ),
    (
        "Tip for a first job interview?",
        "Research the company and prepare two examples of your past work.",
    ),
    (
        "How do I start running?",
        "Alternate one minute of running with two of walking, three times a week.",
    ),
    (
        "How do I boil an egg?",
        "Lower it into boiling water for 9 minutes, then cool it in cold water.",
    ),
    ("Name a good habit.", "Drinking a glass of water when you wake up."),
    (
        "How do I clean a keyboard?",
        "Turn it off, shake out the crumbs, then wipe the keys with a damp cloth.",
    ),
    (
        "How can I write clearer emails?",
        "Put the request in the first line and keep each paragraph short.",
    ),
    ("What is a healthy snack?", "A handful of nuts or a piece of fruit."),
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than red, so blue reaches us from every direction.",
    ),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted, so each half gets more direct sun for part of the year.",
    ),
    (
        "What does a compass do?",
        "It points to magnetic north, which helps you find your direction.",
    ),
    (
        "What is a prime number?",
        "A whole number above 1 whose only divisors are 1 and itself, like 7.",
    ),
    (
        "What is photosynthesis?",
        "Plants using sunlight, water and carbon dioxide to make sugar and oxygen.",
    ),
]
ONE_WORD = [
    ("What color is the sky on a clear day?", "Blue."),
    ("What do bees make?", "Honey."),
    ("What is frozen water called?", "Ice."),
    ("Which animal says moo?", "Cow."),
    ("What do you call a baby cat?", "Kitten."),
    ("What is the largest ocean?", "Pacific."),
    ("How many legs does a spider have?", "Eight."),
    ("What shape has three sides?", "Triangle."),
    ("What gas do we breathe in to live?", "Oxygen."),
    ("Which planet is called the red planet?", "Mars."),
]
CHATS = [
    [_u("Hi!"), _a("Hello! How can I help you today?")],
    [_u("Good morning."), _a("Good morning! What can I do for you?")],
    [_u("Thanks for the help."), _a("You're welcome. Happy to help!")],
    [_u("Who are you?"), _a("I'm a small assistant trained to answer short questions.")],
    [_u("Can you tell me a joke?"), _a("Why did the cookie see a doctor? It felt crumby.")],
    [_u("Hi"), _a("Hi! Ask me anything."), _u("Name a fruit."), _a("Apple.")],
    [_u("Pick a number."), _a("Seven."), _u("Double it."), _a("Fourteen.")],
    [_u("Say yes."), _a("Yes."), _u("Now say no."), _a("No.")],
    [_u("Bye!"), _a("Goodbye, take care!")],
    [_u("Are you a robot?"), _a("I'm a language model, a program that writes text.")],
]


def chat_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows: list[list[dict[str, str]]] = []
    for _ in range(30):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        if rng.random() < 0.5:
            rows.append([_u(f"What is {a} plus {b}?"), _a(f"{a} plus {b} is {a + b}.")])
        else:
            hi, lo = max(a, b), min(a, b)
            rows.append([_u(f"What is {hi} minus {lo}?"), _a(f"{hi} minus {lo} is {hi - lo}.")])
    for word, opposite in OPPOSITES:
        rows.append(
            [_u(f"What is the opposite of {word}?"), _a(f"The opposite of {word} is {opposite}.")]
        )
    for word, plural in PLURALS:
        rows.append(
            [_u(f"What is the plural of {word}?"), _a(f"The plural of {word} is {plural}.")]
        )
    for country, capital in CAPITALS:
        rows.append(
            [
                _u(f"What is the capital of {country}?"),
                _a(f"The capital of {country} is {capital}."),
            ]
        )
    for word in WORDS[:15]:
        rows.append(
            [
                _u(f"How many letters are in the word {word}?"),
                _a(f"The word {word} has {len(word)} letters."),
            ]
        )
    for word in WORDS[5:]:
        rows.append([_u(f"Spell {word} backwards."), _a(f"Backwards, {word} is {word[::-1]}.")])
    for _ in range(15):
        nums = rng.sample(range(1, 60), rng.randint(3, 5))
        listed = ", ".join(map(str, nums))
        rows.append(
            [
                _u(f"Sort these numbers: {listed}."),
                _a(f"Sorted: {', '.join(map(str, sorted(nums)))}."),
            ]
        )
    for word, rhyme in RHYMES:
        rows.append(
            [
                _u(f"Give me a word that rhymes with {word}."),
                _a(f"{rhyme.capitalize()} rhymes with {word}."),
            ]
        )
    for question, answer in TIPS:
        rows.append([_u(question), _a(answer)])
    for question, answer in ONE_WORD:
        rows.append([_s("Answer in one word."), _u(question), _a(answer)])
    rows.extend(CHATS)
    rng.shuffle(rows)
    return [{"messages": m} for m in rows]


# -- dates: a task a tiny model learns in seconds ---------------------------------------

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DATE_ROWS = 500


def dates_rows(rng: random.Random) -> list[dict[str, Any]]:
    """ISO dates (1950-2049) and the same date written out: ``2004-03-06`` -> ``6 March 2004``.

    Every date is distinct, so a held-out row is a date the model never saw.
    """
    first = date(1950, 1, 1).toordinal()
    last = date(2049, 12, 31).toordinal()
    days = sorted(rng.sample(range(first, last + 1), DATE_ROWS))
    rng.shuffle(days)
    rows: list[dict[str, Any]] = []
    for ordinal in days:
        d = date.fromordinal(ordinal)
        rows.append(
            {
                "messages": [
                    _u(d.isoformat()),
                    _a(f"{d.day} {MONTHS[d.month - 1]} {d.year}"),
                ]
            }
        )
    return rows


# -- GSM8K-format math ------------------------------------------------------------------

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Iris", "Sam", "Nora", "Theo"]


def _calc(expr: str, value: int) -> str:
    return f"<<{expr}={value}>>{value}"


def gsm8k_rows(rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def boxes() -> tuple[str, str]:
        n = rng.choice(NAMES)
        b, per, gone = rng.randint(2, 9), rng.randint(4, 15), rng.randint(1, 10)
        total = b * per
        return (
            f"{n} has {b} boxes with {per} pencils in each box. {n} gives away {gone} pencils. "
            "How many pencils does " + n + " have left?",
            f"{n} starts with {b} * {per} = {_calc(f'{b}*{per}', total)} pencils.\n"
            f"After giving away {gone}, {n} has {total} - {gone} = {_calc(f'{total}-{gone}', total - gone)} pencils.\n"
            f"#### {total - gone}",
        )

    def wage() -> tuple[str, str]:
        n = rng.choice(NAMES)
        rate, hours, days = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 6)
        daily = rate * hours
        total = daily * days
        return (
            f"{n} earns ${rate} an hour and works {hours} hours a day for {days} days. "
            f"How much does {n} earn in total?",
            f"Each day {n} earns {rate} * {hours} = ${_calc(f'{rate}*{hours}', daily)}.\n"
            f"Over {days} days that is {daily} * {days} = ${_calc(f'{daily}*{days}', total)}.\n"
            f"#### {total}",
        )

    def apples() -> tuple[str, str]:
        n = rng.choice(NAMES)
        start, bought, eaten = rng.randint(5, 30), rng.randint(3, 20), rng.randint(1, 5)
        after = start + bought
        return (
            f"There are {start} apples in a basket. {n} buys {bought} more and then eats {eaten}. "
            "How many apples are in the basket now?",
            f"After buying there are {start} + {bought} = {_calc(f'{start}+{bought}', after)} apples.\n"
            f"After eating {eaten} there are {after} - {eaten} = {_calc(f'{after}-{eaten}', after - eaten)} apples.\n"
            f"#### {after - eaten}",
        )

    def share() -> tuple[str, str]:
        friends = rng.randint(2, 6)
        each = rng.randint(3, 12)
        total = friends * each
        n = rng.choice(NAMES)
        return (
            f"{n} shares {total} stickers equally among {friends} friends. "
            "How many stickers does each friend get?",
            f"Each friend gets {total} / {friends} = {_calc(f'{total}/{friends}', each)} stickers.\n#### {each}",
        )

    def speed() -> tuple[str, str]:
        kmh, hours = rng.randint(30, 90), rng.randint(2, 5)
        back = rng.randint(1, 3)
        out = kmh * hours
        total = out + kmh * back
        return (
            f"A train travels at {kmh} km per hour for {hours} hours, then {back} more hours at the "
            "same speed. How many kilometers does it travel in all?",
            f"First it covers {kmh} * {hours} = {_calc(f'{kmh}*{hours}', out)} km.\n"
            f"Then {kmh} * {back} = {_calc(f'{kmh}*{back}', kmh * back)} km more.\n"
            f"In all {out} + {kmh * back} = {_calc(f'{out}+{kmh * back}', total)} km.\n#### {total}",
        )

    def tickets() -> tuple[str, str]:
        adults, kids = rng.randint(1, 4), rng.randint(1, 5)
        pa, pk = rng.randint(10, 20), rng.randint(4, 9)
        ca, ck = adults * pa, kids * pk
        return (
            f"Museum tickets cost ${pa} for adults and ${pk} for children. A family buys {adults} adult "
            f"and {kids} child tickets. How much do they pay?",
            f"Adult tickets cost {adults} * {pa} = ${_calc(f'{adults}*{pa}', ca)}.\n"
            f"Child tickets cost {kids} * {pk} = ${_calc(f'{kids}*{pk}', ck)}.\n"
            f"Together {ca} + {ck} = ${_calc(f'{ca}+{ck}', ca + ck)}.\n#### {ca + ck}",
        )

    def pages() -> tuple[str, str]:
        n = rng.choice(NAMES)
        book, per_day, days = rng.randint(120, 300), rng.randint(10, 25), rng.randint(2, 5)
        read = per_day * days
        return (
            f"{n}'s book has {book} pages. {n} reads {per_day} pages a day for {days} days. "
            "How many pages are left to read?",
            f"{n} reads {per_day} * {days} = {_calc(f'{per_day}*{days}', read)} pages.\n"
            f"Left: {book} - {read} = {_calc(f'{book}-{read}', book - read)} pages.\n#### {book - read}",
        )

    def garden() -> tuple[str, str]:
        rows_, per = rng.randint(3, 9), rng.randint(4, 12)
        dead = rng.randint(1, 6)
        total = rows_ * per
        return (
            f"A garden has {rows_} rows of tulips with {per} tulips in each row. {dead} tulips wilt. "
            "How many tulips are still blooming?",
            f"There are {rows_} * {per} = {_calc(f'{rows_}*{per}', total)} tulips.\n"
            f"Blooming: {total} - {dead} = {_calc(f'{total}-{dead}', total - dead)}.\n#### {total - dead}",
        )

    def savings() -> tuple[str, str]:
        n = rng.choice(NAMES)
        weekly, weeks, price = rng.randint(5, 20), rng.randint(3, 10), 0
        saved = weekly * weeks
        price = rng.randint(10, saved)
        return (
            f"{n} saves ${weekly} every week for {weeks} weeks and then buys a game for ${price}. "
            f"How much money does {n} have left?",
            f"{n} saves {weekly} * {weeks} = ${_calc(f'{weekly}*{weeks}', saved)}.\n"
            f"After the game {saved} - {price} = ${_calc(f'{saved}-{price}', saved - price)}.\n"
            f"#### {saved - price}",
        )

    def eggs() -> tuple[str, str]:
        hens, per, dozen = rng.randint(3, 12), rng.randint(1, 2), 12
        days = rng.choice([6, 12, 18, 24])
        total = hens * per * days
        boxes_ = total // dozen
        return (
            f"A farm has {hens} hens. Each hen lays {per} eggs a day. The eggs from {days} days "
            "are packed in boxes of 12. How many full boxes are there?",
            f"Each day the hens lay {hens} * {per} = {_calc(f'{hens}*{per}', hens * per)} eggs.\n"
            f"In {days} days that is {hens * per} * {days} = {_calc(f'{hens * per}*{days}', total)} eggs.\n"
            f"Full boxes: {total} // 12 = {_calc(f'{total}//12', boxes_)}.\n#### {boxes_}",
        )

    makers = [boxes, wage, apples, share, speed, tickets, pages, garden, savings, eggs]
    for i in range(60):
        question, answer = makers[i % len(makers)]()
        rows.append({"question": question, "answer": answer})
    rng.shuffle(rows)
    return rows


# -- MMLU-format multiple choice ------------------------------------------------------------

MMLU_FIXED: list[tuple[str, str, str, list[str]]] = [
    # subject, question, answer, distractors
    ("astronomy", "Which planet is closest to the Sun?", "Mercury", ["Venus", "Earth", "Mars"]),
    (
        "astronomy",
        "What is the name of Earth's natural satellite?",
        "The Moon",
        ["Phobos", "Titan", "Europa"],
    ),
    (
        "astronomy",
        "Which planet has the most prominent ring system?",
        "Saturn",
        ["Mars", "Mercury", "Venus"],
    ),
    (
        "astronomy",
        "What powers the Sun?",
        "Nuclear fusion",
        ["Burning coal", "Nuclear fission", "Lightning"],
    ),
    (
        "astronomy",
        "About how long does Earth take to orbit the Sun?",
        "365 days",
        ["24 hours", "30 days", "100 years"],
    ),
    ("astronomy", "What is a light-year a measure of?", "Distance", ["Time", "Brightness", "Mass"]),
    (
        "high_school_biology",
        "Which organelle makes most of a cell's usable energy?",
        "Mitochondrion",
        ["Nucleus", "Ribosome", "Golgi body"],
    ),
    (
        "high_school_biology",
        "Which molecule carries genetic information in most organisms?",
        "DNA",
        ["ATP", "Glucose", "Cellulose"],
    ),
    (
        "high_school_biology",
        "What do red blood cells mainly carry?",
        "Oxygen",
        ["Insulin", "Bile", "Starch"],
    ),
    (
        "high_school_biology",
        "Which gas do plants take in for photosynthesis?",
        "Carbon dioxide",
        ["Oxygen", "Nitrogen", "Helium"],
    ),
    (
        "high_school_biology",
        "How many chambers does a human heart have?",
        "Four",
        ["Two", "Three", "Six"],
    ),
    (
        "high_school_biology",
        "Which kingdom do mushrooms belong to?",
        "Fungi",
        ["Plantae", "Animalia", "Protista"],
    ),
    (
        "computer_science",
        "Which data structure works last in, first out?",
        "Stack",
        ["Queue", "Heap", "Linked list"],
    ),
    (
        "computer_science",
        "What is the time complexity of binary search on a sorted array?",
        "O(log n)",
        ["O(n)", "O(1)", "O(n log n)"],
    ),
    ("computer_science", "How many bits are in a byte?", "8", ["4", "16", "10"]),
    ("computer_science", "Which number base does hexadecimal use?", "16", ["2", "8", "10"]),
    (
        "computer_science",
        "What does a compiler do?",
        "Translates source code to another form",
        ["Stores files", "Cools the CPU", "Draws the screen"],
    ),
    ("computer_science", "What is 1010 in binary as a decimal number?", "10", ["5", "12", "20"]),
    (
        "computer_science",
        "Which structure maps keys to values with average O(1) lookup?",
        "Hash table",
        ["Array list", "Stack", "Binary heap"],
    ),
    (
        "computer_science",
        "What does RAM lose when power is cut?",
        "Its contents",
        ["Its size", "Its speed", "Nothing"],
    ),
    ("high_school_chemistry", "What is the chemical symbol for sodium?", "Na", ["S", "So", "Sd"]),
    ("high_school_chemistry", "What is the pH of pure water at 25 C?", "7", ["0", "5", "14"]),
    (
        "high_school_chemistry",
        "Which particle has a negative charge?",
        "Electron",
        ["Proton", "Neutron", "Nucleus"],
    ),
    (
        "high_school_chemistry",
        "What is H2O commonly called?",
        "Water",
        ["Salt", "Hydrogen peroxide", "Ammonia"],
    ),
    (
        "high_school_chemistry",
        "Which element do all organic compounds contain?",
        "Carbon",
        ["Iron", "Neon", "Gold"],
    ),
    (
        "high_school_chemistry",
        "What is the most abundant gas in Earth's air?",
        "Nitrogen",
        ["Oxygen", "Carbon dioxide", "Argon"],
    ),
    (
        "high_school_chemistry",
        "Which state of matter has a fixed shape?",
        "Solid",
        ["Liquid", "Gas", "Plasma"],
    ),
    (
        "high_school_chemistry",
        "What is NaCl commonly called?",
        "Table salt",
        ["Baking soda", "Chalk", "Vinegar"],
    ),
    (
        "high_school_geography",
        "Which is the longest river in South America?",
        "Amazon",
        ["Nile", "Danube", "Mekong"],
    ),
    (
        "high_school_geography",
        "Which continent is the Sahara desert on?",
        "Africa",
        ["Asia", "Europe", "Australia"],
    ),
    (
        "high_school_geography",
        "What is the capital of Canada?",
        "Ottawa",
        ["Toronto", "Vancouver", "Montreal"],
    ),
    (
        "high_school_geography",
        "Which ocean lies between Africa and Australia?",
        "Indian Ocean",
        ["Arctic Ocean", "Atlantic Ocean", "Southern Ocean"],
    ),
    (
        "high_school_geography",
        "Which line divides Earth into northern and southern halves?",
        "The equator",
        ["The prime meridian", "The Tropic of Cancer", "The date line"],
    ),
    (
        "high_school_geography",
        "What is the capital of Australia?",
        "Canberra",
        ["Sydney", "Melbourne", "Perth"],
    ),
]


def mmlu_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    items = list(MMLU_FIXED)
    for _ in range(48 - len(items)):
        a, b = rng.randint(11, 99), rng.randint(2, 9)
        right = a * b
        wrong = {right + b, right - b, right + 10, right - 1}
        wrong.discard(right)
        items.append(
            (
                "elementary_mathematics",
                f"What is {a} x {b}?",
                str(right),
                [str(w) for w in sorted(wrong)[:3]],
            )
        )
    for subject, question, answer, distractors in items:
        choices = [answer, *distractors]
        rng.shuffle(choices)
        rows.append(
            {
                "question": question,
                "subject": subject,
                "choices": choices,
                "answer": choices.index(answer),
            }
        )
    rng.shuffle(rows)
    return rows


# -- HumanEval-format code -------------------------------------------------------------------

CODE: list[tuple[str, str, str, str]] = [
    (
        "sum_of_squares",
        'def sum_of_squares(nums: list[int]) -> int:\n    """Return the sum of the squares of the numbers.\n    >>> sum_of_squares([1, 2, 3])\n    14\n    """\n',
        "    return sum(n * n for n in nums)\n",
        "def check(candidate):\n    assert candidate([1, 2, 3]) == 14\n    assert candidate([]) == 0\n    assert candidate([-2, 5]) == 29\n",
    ),
    (
        "is_palindrome",
        'def is_palindrome(text: str) -> bool:\n    """True if text reads the same backwards, ignoring case and non-letters.\n    >>> is_palindrome("Never odd or even")\n    True\n    """\n',
        "    letters = [c.lower() for c in text if c.isalnum()]\n    return letters == letters[::-1]\n",
        'def check(candidate):\n    assert candidate("Never odd or even") is True\n    assert candidate("abc") is False\n    assert candidate("") is True\n    assert candidate("A man, a plan, a canal: Panama") is True\n',
    ),
    (
        "count_vowels",
        'def count_vowels(s: str) -> int:\n    """Count the vowels (a, e, i, o, u, either case) in s.\n    >>> count_vowels("Hello World")\n    3\n    """\n',
        '    return sum(1 for c in s.lower() if c in "aeiou")\n',
        'def check(candidate):\n    assert candidate("Hello World") == 3\n    assert candidate("xyz") == 0\n    assert candidate("AEIOU") == 5\n',
    ),
    (
        "fizzbuzz_word",
        'def fizzbuzz_word(n: int) -> str:\n    """"Fizz" for multiples of 3, "Buzz" for 5, "FizzBuzz" for both, else str(n).\n    >>> fizzbuzz_word(15)\n    \'FizzBuzz\'\n    """\n',
        '    if n % 15 == 0:\n        return "FizzBuzz"\n    if n % 3 == 0:\n        return "Fizz"\n    if n % 5 == 0:\n        return "Buzz"\n    return str(n)\n',
        'def check(candidate):\n    assert candidate(15) == "FizzBuzz"\n    assert candidate(9) == "Fizz"\n    assert candidate(10) == "Buzz"\n    assert candidate(7) == "7"\n',
    ),
    (
        "second_largest",
        'def second_largest(nums: list[int]) -> int | None:\n    """The second largest distinct value, or None if there is none.\n    >>> second_largest([4, 1, 4, 3])\n    3\n    """\n',
        "    values = sorted(set(nums), reverse=True)\n    return values[1] if len(values) > 1 else None\n",
        "def check(candidate):\n    assert candidate([4, 1, 4, 3]) == 3\n    assert candidate([2, 2]) is None\n    assert candidate([]) is None\n    assert candidate([-1, -5]) == -5\n",
    ),
    (
        "run_length_encode",
        'def run_length_encode(s: str) -> str:\n    """Encode runs as count then character.\n    >>> run_length_encode("aaabcc")\n    \'3a1b2c\'\n    """\n',
        '    out = []\n    i = 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(f"{j - i}{s[i]}")\n        i = j\n    return "".join(out)\n',
        'def check(candidate):\n    assert candidate("aaabcc") == "3a1b2c"\n    assert candidate("") == ""\n    assert candidate("z") == "1z"\n',
    ),
    (
        "flatten_once",
        'def flatten_once(nested: list[list[int]]) -> list[int]:\n    """Join a list of lists into one list, in order.\n    >>> flatten_once([[1, 2], [], [3]])\n    [1, 2, 3]\n    """\n',
        "    return [x for part in nested for x in part]\n",
        "def check(candidate):\n    assert candidate([[1, 2], [], [3]]) == [1, 2, 3]\n    assert candidate([]) == []\n",
    ),
    (
        "word_lengths",
        'def word_lengths(text: str) -> dict[str, int]:\n    """Map each distinct word (split on spaces) to its length.\n    >>> word_lengths("to be or")\n    {\'to\': 2, \'be\': 2, \'or\': 2}\n    """\n',
        "    return {w: len(w) for w in text.split()}\n",
        'def check(candidate):\n    assert candidate("to be or") == {"to": 2, "be": 2, "or": 2}\n    assert candidate("") == {}\n    assert candidate("hello hello") == {"hello": 5}\n',
    ),
    (
        "rotate_left",
        'def rotate_left(items: list[int], k: int) -> list[int]:\n    """Rotate items left by k places (k may exceed the length).\n    >>> rotate_left([1, 2, 3, 4], 1)\n    [2, 3, 4, 1]\n    """\n',
        "    if not items:\n        return []\n    k %= len(items)\n    return items[k:] + items[:k]\n",
        "def check(candidate):\n    assert candidate([1, 2, 3, 4], 1) == [2, 3, 4, 1]\n    assert candidate([1, 2, 3], 5) == [3, 1, 2]\n    assert candidate([], 3) == []\n",
    ),
    (
        "is_balanced",
        'def is_balanced(brackets: str) -> bool:\n    """True if every (, [ and { is closed in the right order.\n    >>> is_balanced("([]{})")\n    True\n    """\n',
        '    pairs = {")": "(", "]": "[", "}": "{"}\n    stack = []\n    for c in brackets:\n        if c in "([{":\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack\n',
        'def check(candidate):\n    assert candidate("([]{})") is True\n    assert candidate("(]") is False\n    assert candidate("((") is False\n    assert candidate("") is True\n',
    ),
    (
        "digit_sum",
        'def digit_sum(n: int) -> int:\n    """Sum of the decimal digits of n (sign ignored).\n    >>> digit_sum(-472)\n    13\n    """\n',
        "    return sum(int(d) for d in str(abs(n)))\n",
        "def check(candidate):\n    assert candidate(-472) == 13\n    assert candidate(0) == 0\n    assert candidate(1005) == 6\n",
    ),
    (
        "merge_sorted",
        'def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    """Merge two sorted lists into one sorted list.\n    >>> merge_sorted([1, 4], [2, 3, 5])\n    [1, 2, 3, 4, 5]\n    """\n',
        "    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n    return out + a[i:] + b[j:]\n",
        "def check(candidate):\n    assert candidate([1, 4], [2, 3, 5]) == [1, 2, 3, 4, 5]\n    assert candidate([], [1]) == [1]\n    assert candidate([2, 2], [2]) == [2, 2, 2]\n",
    ),
]


def humaneval_rows() -> list[dict[str, str]]:
    return [
        {
            "task_id": f"Crucible/{i}",
            "prompt": prompt,
            "canonical_solution": solution,
            "test": test,
            "entry_point": entry,
        }
        for i, (entry, prompt, solution, test) in enumerate(CODE)
    ]


# -- preference pairs ------------------------------------------------------------------------

WRONG_CAPITALS = {
    "Canada": "Toronto",
    "Australia": "Sydney",
    "Japan": "Kyoto",
    "Spain": "Barcelona",
    "Egypt": "Alexandria",
    "Germany": "Munich",
    "Italy": "Milan",
    "Norway": "Bergen",
    "Portugal": "Porto",
    "Poland": "Krakow",
}
UNHELPFUL = [
    "I don't know.",
    "Look it up yourself.",
    "That is not an interesting question.",
    "Maybe. Hard to say.",
]


def preference_rows(rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for country, wrong in WRONG_CAPITALS.items():
        right = dict(CAPITALS)[country]
        rows.append(
            {
                "prompt": f"What is the capital of {country}?",
                "chosen": f"The capital of {country} is {right}.",
                "rejected": f"The capital of {country} is {wrong}.",
            }
        )
    for _ in range(10):
        a, b = rng.randint(3, 40), rng.randint(3, 40)
        off = rng.choice([-2, -1, 1, 2, 10])
        rows.append(
            {
                "prompt": f"What is {a} plus {b}?",
                "chosen": f"{a} plus {b} is {a + b}.",
                "rejected": f"{a} plus {b} is {a + b + off}.",
            }
        )
    for (question, answer), bad in zip(TIPS[:10], UNHELPFUL * 3, strict=False):
        rows.append({"prompt": question, "chosen": answer, "rejected": bad})
    for word, opposite in OPPOSITES[:10]:
        rows.append(
            {
                "prompt": f"What is the opposite of {word}?",
                "chosen": f"The opposite of {word} is {opposite}.",
                "rejected": f"Why would you want the opposite of {word}? Figure it out.",
            }
        )
    rng.shuffle(rows)
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {len(rows):4d} rows to {path.relative_to(ROOT)}")


def main() -> None:
    chat = chat_rows(random.Random(1))
    _write(SAMPLES / "chat.jsonl", chat)
    _write(EXAMPLE_CHAT, chat)
    dates = dates_rows(random.Random(5))
    _write(SAMPLES / "dates.jsonl", dates)
    _write(EXAMPLE_DATES, dates)
    _write(SAMPLES / "gsm8k.jsonl", gsm8k_rows(random.Random(2)))
    _write(SAMPLES / "mmlu.jsonl", mmlu_rows(random.Random(3)))
    _write(SAMPLES / "humaneval.jsonl", humaneval_rows())
    _write(SAMPLES / "preference.jsonl", preference_rows(random.Random(4)))


if __name__ == "__main__":
    main()
