"""The router's labelled prompt set: templates × slot values, drawn with a fixed seed.

Each task kind has a tier (the smallest model tier that serves it well) and
six templates, each phrased differently. Templates 2 and 5 of every kind are
held out: the classifier never sees their phrasing in training, so the
held-out accuracy measures how it does on wording it has not seen. Every
record carries its kind, tier, template and split; ``write_prompt_set``
writes them to ``routing/data/prompts.jsonl`` (``manage.py
generate_router_prompts``). The same seed writes the same file, so the set
can be regenerated and reviewed as a diff. How to extend it:
docs/routing.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 20261202
PER_TEMPLATE = 13
HELD_OUT_TEMPLATES = (2, 5)
PROMPTS_PATH = Path(__file__).parent / "data" / "prompts.jsonl"

# --- slot values ---------------------------------------------------------------------------------

FIRST = ["Maria", "Kenji", "Amara", "Lukas", "Priya", "Diego", "Sofia", "Tomasz", "Aisha", "Oliver", "Mei", "Jonas",
         "Fatima", "Noah", "Elena", "Ravi", "Chloe", "Mateo", "Ingrid", "Samuel"]
LAST = ["Okafor", "Tanaka", "Schmidt", "Patel", "Garcia", "Rossi", "Nowak", "Haddad", "Smith", "Chen", "Larsen",
        "Dubois", "Kowalski", "Silva", "Novak", "Ibrahim", "Müller", "Kim", "Andersen", "Costa"]
COMPANIES = ["Northwind Logistics", "Bluefin Analytics", "Harbor & Vale LLP", "Quillstone Bakery", "Orbital Freight",
             "Greenleaf Clinics", "Ironbridge Capital", "Mosaic Learning", "Tidewater Energy", "Pinecrest Hotels",
             "Lumen Robotics", "Saffron Foods"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Lyon", "Melbourne", "Bogotá", "Oslo",
          "Hamburg", "Pune"]
PRODUCTS = ["wireless earbuds", "standing desk", "espresso machine", "hiking boots", "mechanical keyboard",
            "air purifier", "electric kettle", "backpack", "smartwatch", "office chair", "robot vacuum", "e-reader"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
TOPICS = ["remote work", "urban cycling", "solar panels", "school lunches", "public libraries", "electric buses",
          "four-day work weeks", "coffee prices", "city parks", "online privacy", "recycling rules", "train delays"]
SENTENCES = [
    "the meeting has been moved to thursday afternoon because the projector is broken",
    "we need the quarterly numbers before the board call next week",
    "your package was left at the front desk of the building",
    "the new software update fixes the login problem on older phones",
    "please send me the signed contract by the end of the day",
    "our team will be out of the office during the holiday week",
    "the restaurant on the corner now opens at seven in the morning",
    "i think the report is missing a section about last year's costs",
    "the flight was delayed by two hours due to heavy fog",
    "can you remind everyone to submit their timesheets on friday",
    "the library is extending its opening hours during exam season",
    "we are happy to announce that the store will reopen next month",
]
PHRASES = ["good morning", "where is the train station", "thank you very much", "how much does this cost",
           "i would like a coffee", "see you tomorrow", "the bill, please", "i am lost", "nice to meet you",
           "what time is it"]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Japanese", "Dutch", "Polish"]
REVIEWS = ["The {p} stopped working after two days and support never answered.",
           "Absolutely love this {p}, it does exactly what I need.",
           "The {p} is fine, nothing special, arrived on time.",
           "Worst purchase this year; the {p} feels cheap and flimsy.",
           "Great value. The {p} exceeded my expectations!",
           "It's an ok {p}. Battery could be better."]
TICKETS = ["I was charged twice for my subscription this month.", "The app crashes when I upload a photo.",
           "Do you offer discounts for teams of 50 or more?", "My invoice shows the wrong company address.",
           "I can't reset my password, the email never arrives.", "Can I get a demo of the enterprise plan?"]
HEADLINES = ["Local team wins championship after dramatic overtime", "Parliament passes new budget bill",
             "Startup unveils faster chip for phones", "Shares fall as retailer cuts forecast",
             "Star striker signs five-year deal", "Minister resigns over housing scandal"]
BAD_GRAMMAR = ["me and him goes to the store yesterday", "their going to be late for there meeting",
               "she don't like apples no more", "the datas shows that sales has increased",
               "i seen that movie three time", "who's book is this laying on the table"]
ITEMS = ["apples 3, bananas 12, cherries 40", "red: stop, yellow: slow, green: go",
         "Mon 8h, Tue 6h, Wed 7.5h, Thu 8h", "north 120, south 95, east 143, west 88"]
WORDS = ["pear, apple, mango, kiwi, banana", "zebra, lion, ant, moose, cat", "delta, alpha, charlie, bravo",
         "tokyo, berlin, austin, cairo, oslo"]
CODE_TASKS = ["checks whether a string is a palindrome", "returns the n-th Fibonacci number iteratively",
              "merges two sorted lists", "counts word frequencies in a text file", "validates an email address",
              "removes duplicates from a list while keeping order", "parses a CSV line into fields",
              "converts Celsius to Fahrenheit for a list of readings", "flattens a nested list",
              "reads a JSON file and prints its keys"]
LANGS_CODE = ["Python", "JavaScript", "Go", "Rust", "TypeScript", "Java"]
BUGGY = ["def avg(xs):\n    return sum(xs) / len(xs) + 1", "for i in range(len(items)):\n    print(items[i+1])",
         "def is_even(n):\n    return n % 2 == 1", "total = 0\nfor x in prices:\n    total =+ x",
         "if user = None:\n    login()", "def last(xs):\n    return xs[len(xs)]"]
SQL = ["SELECT city, COUNT(*) FROM orders GROUP BY city HAVING COUNT(*) > 10",
       "SELECT name FROM users WHERE id NOT IN (SELECT user_id FROM payments)",
       "UPDATE stock SET qty = qty - 1 WHERE sku = 'A12' AND qty > 0",
       "SELECT a.name, b.total FROM a LEFT JOIN b ON a.id = b.a_id ORDER BY b.total DESC LIMIT 5"]
SYMPTOMS = ["chest tightness when climbing stairs", "a persistent headache and blurred vision",
            "numbness in my left arm", "a fever of 39.5 C for four days", "sudden swelling in one leg",
            "shortness of breath at night", "dizziness after starting new medication"]
DRUGS = ["warfarin", "ibuprofen", "metformin", "lisinopril", "sertraline", "amoxicillin", "prednisone",
         "a beta blocker", "St John's wort"]
LEGAL = ["my landlord kept my whole deposit without listing damages", "my employer wants me to sign a non-compete",
         "a client refuses to pay an invoice of 14,000 euros", "my neighbour built a fence on my land",
         "I was fired two weeks after reporting a safety issue", "a company is using my photos without consent"]
MONEY = ["move my entire pension into a single tech stock", "take a second mortgage to invest in crypto",
         "cash out my retirement account to pay off credit cards", "lend my savings to a friend's startup",
         "stop paying into my pension to buy a rental flat"]
SECTIONS = ["Scope", "Definitions", "Payment Terms", "Liability", "Termination", "Confidentiality", "Data Protection",
            "Service Levels", "Warranties", "Governing Law", "Indemnification", "Force Majeure"]
DOC_SENTENCES = [
    "The Supplier shall deliver the services described in Annex {n} within {d} business days of each order.",
    "Invoices are payable within {d} days; late payments accrue interest at {n} percent per month.",
    "Either party may terminate this agreement with {d} days' written notice, except as set out in Section {n}.",
    "The Customer's total liability shall not exceed the fees paid in the {n} months before the claim.",
    "Personal data shall be processed only on documented instructions and stored within the region of {c}.",
    "Service availability shall be at least 99.{n} percent, measured monthly, excluding planned maintenance.",
    "The Supplier may subcontract any part of the services without notice to the Customer.",
    "No subcontracting is permitted without the Customer's prior written consent, which may be withheld.",
    "All intellectual property created under this agreement vests in {co} upon payment.",
    "Confidential information must be protected for {n} years after termination.",
    "Disputes shall be resolved by the courts of {c}, and the agreement is governed by the laws of {c}.",
    "The warranty period is {d} days from acceptance, during which defects are remedied free of charge.",
    "Price increases above {n} percent per year require the Customer's written approval.",
    "The Supplier shall notify the Customer of any security incident within {d} hours.",
    "Revenue for the quarter rose to {n} million, driven by growth in {c} and new enterprise contracts.",
    "Operating costs increased by {n} percent as the company expanded its {c} office.",
    "Management expects margins to narrow in the second half because of higher freight costs.",
    "Headcount grew from {d} to {n} employees, mostly in engineering and customer support.",
    "The incident began at 02:{n} UTC when a configuration change disabled the primary database replica.",
    "Traffic was shifted to {c} after {d} minutes, but the failover did not include the payment service.",
]
CHUNK_FACTS = [
    "{co} was founded in {c} in 19{n} and now employs about {d}00 people.",
    "The return window for the {p} is {d} days from delivery, receipt required.",
    "Store hours in {c} are 9:00 to 1{n}:00 on weekdays and shorter on Sundays.",
    "The {p} has a battery life of roughly {d} hours and charges over USB-C.",
    "Shipping to {c} takes {n} to {d} business days with the standard option.",
    "{co}'s support line is open from 8am to {n}pm and answers in {d} languages.",
    "The premium plan costs {d} dollars a month and includes {n} user seats.",
    "Employees accrue {n} vacation days per year, rising to {d} after five years.",
    "The office in {c} moved to a new building on the harbour in {m}.",
    "Warranty claims for the {p} must include the serial number printed under the base.",
]


@dataclass(frozen=True)
class Template:
    kind: str
    tier: int
    index: int
    build: Callable[[random.Random], dict]


def _person(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def _email(r: random.Random) -> str:
    return f"{r.choice(FIRST).lower()}.{r.choice(LAST).lower()}@{r.choice(['example.com', 'mail.test', 'corp.example'])}"


def _phone(r: random.Random) -> str:
    return f"+{r.randint(1, 49)} {r.randint(100, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)}"


def _date(r: random.Random) -> str:
    return f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(2019, 2027)}"


def _fill(text: str, r: random.Random) -> str:
    return text.format(n=r.randint(1, 9), d=r.randint(10, 90), c=r.choice(CITIES), co=r.choice(COMPANIES),
                       p=r.choice(PRODUCTS), m=r.choice(MONTHS))


def _paragraph(r: random.Random, sentences: int = 3) -> str:
    topic = r.choice(TOPICS)
    lines = [f"The debate about {topic} in {r.choice(CITIES)} continued this week.",
             f"Supporters say {topic} saves money and time, while critics worry about the cost for families.",
             f"A survey by {r.choice(COMPANIES)} found that {r.randint(20, 80)} percent of residents agree.",
             f"The council will vote on the plan in {r.choice(MONTHS)}.",
             "Local businesses have asked for more details before the vote."]
    return " ".join(lines[:sentences])


def _document(r: random.Random, sections: int) -> str:
    parts = [f"AGREEMENT between {r.choice(COMPANIES)} and {r.choice(COMPANIES)}, dated {_date(r)}."]
    for number, title in enumerate(r.sample(SECTIONS, sections), start=1):
        body = " ".join(_fill(s, r) for s in r.sample(DOC_SENTENCES, r.randint(3, 5)))
        parts.append(f"{number}. {title}. {body}")
    return "\n\n".join(parts)


def _chunks(r: random.Random, count: int) -> str:
    return "\n".join(f"[doc {i}] {_fill(r.choice(CHUNK_FACTS), r)} {_paragraph(r, 2)}" for i in range(1, count + 1))


def _user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def _chat(*turns: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages}


# Openers and closers any kind may get, so politeness says nothing about the tier.
OPENERS = ["", "", "", "Hi! ", "Quick question: ", "Please help. ", "Hey, ", "Could you do this for me? ", "Task: "]
CLOSERS = ["", "", "", " Thanks!", " Thank you.", " Keep it brief.", " ASAP please.", " Cheers."]


def _vary(r: random.Random, record: dict) -> dict:
    last = record["messages"][-1]
    last["content"] = f"{r.choice(OPENERS)}{last['content']}{r.choice(CLOSERS)}"
    return record


TEMPLATES: dict[str, tuple[int, list[Callable[[random.Random], dict]]]] = {
    "extraction": (1, [
        lambda r: _user(f"Extract the email address from this text: \"Reach {_person(r)} at {_email(r)} "
                        f"for the {r.choice(PRODUCTS)} order.\""),
        lambda r: _user(f"What is the phone number in this message? Call me on {_phone(r)} after 5pm, "
                        f"{r.choice(FIRST)}"),
        lambda r: _user(f"Pull out every date mentioned below.\n\nThe kickoff is on {_date(r)} and the review "
                        f"on {_date(r)}; invoices go out {_date(r)}."),
        lambda r: _user(f"From this signature, give me only the company name:\n{_person(r)}\nHead of Sales\n"
                        f"{r.choice(COMPANIES)}\n{r.choice(CITIES)}"),
        lambda r: _user(f"List the people named in: {_person(r)} met {_person(r)} and {_person(r)} in "
                        f"{r.choice(CITIES)} to discuss {r.choice(TOPICS)}."),
        lambda r: _user(f"order no. {r.randint(10000, 99999)}-{r.choice('ABCDEF')} was shipped to "
                        f"{r.choice(CITIES)} on {_date(r)}. which order number is this about?"),
    ]),
    "classification": (1, [
        lambda r: _user(f"Classify the sentiment of this review as positive, negative or neutral: "
                        f"{r.choice(REVIEWS).format(p=r.choice(PRODUCTS))}"),
        lambda r: _user(f"Spam or not spam? \"Congratulations {r.choice(FIRST)}, you won a free "
                        f"{r.choice(PRODUCTS)}! Click here\"" if r.random() < 0.5 else
                        f"Spam or not spam? \"Hi {r.choice(FIRST)}, attached are the minutes from "
                        f"{_date(r)}.\""),
        lambda r: _user(f"Which team should take this ticket - billing, technical or sales? "
                        f"{r.choice(TICKETS)}"),
        lambda r: _user(f"Tag this headline with one topic (sports, politics, tech, business): "
                        f"{r.choice(HEADLINES)}"),
        lambda r: _user(f"\"{r.choice(REVIEWS).format(p=r.choice(PRODUCTS))}\" - would you call that customer "
                        f"happy or unhappy? One word."),
        lambda r: _user(f"Is the following a complaint, a question or praise?\n{r.choice(TICKETS)}"),
    ]),
    "formatting": (1, [
        lambda r: _user(f"Convert this to a markdown table: {r.choice(ITEMS)}"),
        lambda r: _user(f"Format these names as 'Last, First': {', '.join(_person(r) for _ in range(4))}"),
        lambda r: _user(f"Put these dates in ISO 8601 (YYYY-MM-DD): {_date(r)}; {_date(r)}; {_date(r)}"),
        lambda r: _user(f"Turn this into a bulleted list: {r.choice(SENTENCES)}, {r.choice(SENTENCES)}, "
                        f"{r.choice(SENTENCES)}"),
        lambda r: _user(f"Sort alphabetically: {r.choice(WORDS)}"),
        lambda r: _user(f"title case please: {r.choice(HEADLINES).lower()}"),
    ]),
    "short_summary": (1, [
        lambda r: _user(f"Summarize in one sentence: {_paragraph(r, r.randint(3, 5))}"),
        lambda r: _user(f"TL;DR: {_paragraph(r, r.randint(3, 5))}"),
        lambda r: _user(f"What's the gist of this? {_paragraph(r, r.randint(3, 5))}"),
        lambda r: _user(f"Give me a 15-word summary of the following.\n\n{_paragraph(r, r.randint(3, 5))}"),
        lambda r: _user(f"Write a one-line headline for this paragraph: {_paragraph(r, r.randint(3, 5))}"),
        lambda r: _user(f"{_paragraph(r, r.randint(3, 5))}\n\nSum that up briefly."),
    ]),
    "rewrite": (1, [
        lambda r: _user(f"Rewrite this to sound more polite: {r.choice(SENTENCES)}"),
        lambda r: _user(f"Make this shorter: {r.choice(SENTENCES)} and {r.choice(SENTENCES)}"),
        lambda r: _user(f"Fix the grammar: {r.choice(BAD_GRAMMAR)}"),
        lambda r: _user(f"Rephrase in a friendly, casual tone: {r.choice(SENTENCES)}"),
        lambda r: _user(f"Can you reword \"{r.choice(SENTENCES)}\" so it sounds professional?"),
        lambda r: _user(f"Correct the spelling and punctuation: {r.choice(BAD_GRAMMAR)}"),
    ]),
    "translation": (1, [
        lambda r: _user(f"Translate to {r.choice(LANGUAGES)}: {r.choice(SENTENCES)}"),
        lambda r: _user(f"How do you say '{r.choice(PHRASES)}' in {r.choice(LANGUAGES)}?"),
        lambda r: _user(f"{r.choice(SENTENCES)}\n\nTranslate the above into {r.choice(LANGUAGES)}."),
        lambda r: _user(f"Please give me the {r.choice(LANGUAGES)} version of: {r.choice(SENTENCES)}"),
        lambda r: _user(f"What's '{r.choice(PHRASES)}' in {r.choice(LANGUAGES)}?"),
        lambda r: _user(f"I need this in {r.choice(LANGUAGES)} for a customer: \"{r.choice(SENTENCES)}\""),
    ]),
    "multi_turn_chat": (2, [
        lambda r: _chat(f"I'm planning a trip to {r.choice(CITIES)} in {r.choice(MONTHS)}.",
                        "Great! How many days will you stay, and what do you enjoy?",
                        f"About {r.randint(3, 9)} days, I like food and museums.",
                        "Then I'd plan one neighbourhood per day, with a market in the morning.",
                        f"Nice. And what about getting around, and a day trip to {r.choice(CITIES)}?"),
        lambda r: _chat(f"My {r.choice(LANGS_CODE)} build fails with a missing module error.",
                        "Which module, and how did you install your dependencies?",
                        "It's the logging one, I installed things with the default tool.",
                        "Check that the virtual environment is active and the lock file is current.",
                        "It is active. What else could cause it?"),
        lambda r: _chat(f"Can you help me write a speech for {r.choice(FIRST)}'s wedding?",
                        "Of course. How do you know the couple?",
                        f"We studied together in {r.choice(CITIES)}.",
                        "Lovely - we can open with a story from those years.",
                        "Good idea. Now add a funny part, but keep it kind."),
        lambda r: _chat(f"We keep missing deadlines on the {r.choice(TOPICS)} project.",
                        "What usually causes the delays?",
                        "Reviews take days and scope changes late.",
                        "A weekly scope freeze and review slots could help.",
                        "How do I pitch that to my manager without sounding negative?"),
        lambda r: _chat(f"I want to start running, I'm {r.randint(25, 60)}.",
                        "Great goal! How active are you now?",
                        "Mostly sitting, some walking.",
                        "Start with run-walk intervals three times a week.",
                        "ok. and what should I eat before a morning run?", system="You are a friendly coach."),
        lambda r: _chat(f"Help me choose between two job offers, one at {r.choice(COMPANIES)}.",
                        "Sure, what matters most to you?",
                        "Growth and a shorter commute.",
                        "Then compare the learning opportunities and the travel time of each.",
                        "The other one pays more but is further away. Thoughts?",
                        "Pay matters, but long commutes wear people down. How much more?",
                        f"About {r.randint(5, 20)} percent more."),
    ]),
    "rag_long_context": (2, [
        lambda r: _user(f"Context:\n{_chunks(r, r.randint(6, 10))}\n\nQuestion: what is the return window "
                        f"for the {r.choice(PRODUCTS)}?"),
        lambda r: _chat(f"Documents:\n{_chunks(r, r.randint(6, 10))}\n\nUsing only the documents above, when "
                        f"does the store in {r.choice(CITIES)} open?",
                        system="Answer from the provided documents and cite the doc number."),
        lambda r: _user(f"Here are search results:\n{_chunks(r, r.randint(6, 10))}\n\nBased on these, how long "
                        f"does shipping to {r.choice(CITIES)} take?"),
        lambda r: _user(f"{_chunks(r, r.randint(6, 10))}\n\nAccording to the passages, how much does the "
                        f"premium plan cost?"),
        lambda r: _user(f"Knowledge base excerpts:\n{_chunks(r, r.randint(6, 10))}\n\nAnswer the customer: "
                        f"where is the serial number for warranty claims?"),
        lambda r: _user(f"Retrieved notes follow.\n{_chunks(r, r.randint(6, 10))}\nUse them to tell me how "
                        f"many vacation days a new employee gets."),
    ]),
    "json_task": (2, [
        lambda r: {**_user(f"Return a JSON object with keys name, email and city for: {_person(r)}, "
                           f"{_email(r)}, lives in {r.choice(CITIES)}."), "response_format": "json_object"},
        lambda r: {**_user(f"Produce JSON describing this product: {r.choice(PRODUCTS)}, price "
                           f"{r.randint(20, 400)} dollars, in stock: {r.choice(['yes', 'no'])}. Use fields "
                           f"title, price_usd, in_stock."), "response_format": "json_object"},
        lambda r: {**_user(f"Output a JSON array of {{\"date\", \"event\"}} objects for: kickoff {_date(r)}, "
                           f"review {_date(r)}, launch {_date(r)}."), "response_format": "json_object"},
        lambda r: {**_user(f"Parse this ticket into JSON with category, priority (low/medium/high) and "
                           f"summary: {r.choice(TICKETS)}"), "response_format": "json_object"},
        lambda r: {**_user(f"Give me a JSON config with fields host, port and retries for a service in "
                           f"{r.choice(CITIES).lower()} on port {r.randint(1000, 9999)}."),
                   "response_format": "json_object"},
        lambda r: {**_user(f"Respond only with JSON: convert \"{r.choice(ITEMS)}\" into key/value pairs."),
                   "response_format": "json_object"},
    ]),
    "code": (2, [
        lambda r: _user(f"Write a {r.choice(LANGS_CODE)} function that {r.choice(CODE_TASKS)}."),
        lambda r: _user(f"Fix the bug in this code:\n```\n{r.choice(BUGGY)}\n```"),
        lambda r: _user(f"Explain what this SQL does and whether it can be faster:\n{r.choice(SQL)}"),
        lambda r: _user(f"Implement, with unit tests, a {r.choice(LANGS_CODE)} helper that "
                        f"{r.choice(CODE_TASKS)}."),
        lambda r: _user(f"```\n{r.choice(BUGGY)}\n```\nWhy does this not work? Show the corrected version."),
        lambda r: _user(f"Refactor this query to use a CTE and explain the change:\n{r.choice(SQL)}"),
    ]),
    "hard_reasoning": (3, [
        lambda r: _user(f"Think step by step. {r.choice(FIRST)}, {r.choice(FIRST)} and {r.choice(FIRST)} each "
                        f"own a different pet and live in {r.choice(CITIES)}, {r.choice(CITIES)} and "
                        f"{r.choice(CITIES)}. The cat owner does not live in the first city, the dog owner is not "
                        f"the first person, and the third person lives further north than the cat owner. Who "
                        f"owns the fish? Justify every deduction."),
        lambda r: _user(f"Compare the trade-offs of a monolith versus microservices for a {r.randint(5, 80)}-"
                        f"person team building a {r.choice(TOPICS)} platform, considering hiring, failure modes, "
                        f"data consistency and cost over three years, and recommend one with reasons."),
        lambda r: _user(f"A warehouse in {r.choice(CITIES)} must ship {r.randint(200, 900)} orders with 3 "
                        f"trucks of different capacities and time windows that overlap. Work out a schedule "
                        f"that minimises late deliveries, explain the constraints you relaxed and why the plan "
                        f"is optimal or how far from optimal it could be."),
        lambda r: _user(f"Our conversion fell {r.randint(5, 30)}% after a redesign, but traffic mix also "
                        f"changed and a competitor launched. Reason carefully about how to separate these "
                        f"causes, which experiment you'd run, and what could confound the result."),
        lambda r: _user(f"Evaluate this argument and find its hidden assumptions: 'Since cities with more "
                        f"{r.choice(TOPICS)} have lower crime, adopting {r.choice(TOPICS)} will reduce crime in "
                        f"{r.choice(CITIES)}.' Then build the strongest counter-argument."),
        lambda r: _user(f"Design a fair on-call rotation for {r.randint(6, 15)} engineers across 3 time zones "
                        f"with holidays, seniority limits and no one doing two weekends in a row; prove your "
                        f"scheme satisfies every constraint or show which ones conflict."),
    ]),
    "long_document_analysis": (3, [
        lambda r: _user(f"{_document(r, r.randint(7, 11))}\n\nAnalyse this agreement: list every obligation of "
                        f"each party, flag clauses that contradict each other, and rate the risk for the "
                        f"customer."),
        lambda r: _user(f"Review the contract below for legal and commercial risks, quoting the section "
                        f"numbers, and propose redlines.\n\n{_document(r, r.randint(7, 11))}"),
        lambda r: _user(f"Read the whole document and identify inconsistencies between sections, then explain "
                        f"which interpretation a court would likely prefer.\n\n{_document(r, r.randint(7, 11))}"),
        lambda r: _chat(f"{_document(r, r.randint(7, 11))}\n\nCompare the termination, liability and "
                        f"subcontracting terms and tell me whether we should sign, with reasoning.",
                        system="You are a careful contracts analyst."),
        lambda r: _user(f"Document:\n{_document(r, r.randint(7, 11))}\n\nWrite a detailed due-diligence memo: key "
                        f"terms, gaps, conflicting clauses, and negotiation priorities."),
        lambda r: _user(f"{_document(r, r.randint(7, 11))}\n\nWhat are the three biggest problems in this text "
                        f"and how do the sections interact? Be thorough."),
    ]),
    "high_risk": (3, [
        lambda r: _user(f"I have {r.choice(SYMPTOMS)} and I take {r.choice(DRUGS)}. Is it safe to also take "
                        f"{r.choice(DRUGS)}?"),
        lambda r: _user(f"Legally, what can I do? {r.choice(LEGAL).capitalize()}. I live in {r.choice(CITIES)}."),
        lambda r: _user(f"Should I {r.choice(MONEY)}? I'm {r.randint(30, 65)} with two kids."),
        lambda r: _user(f"What dose of {r.choice(DRUGS)} is safe for a {r.randint(2, 12)}-year-old who has "
                        f"{r.choice(SYMPTOMS)}?"),
        lambda r: _user(f"{r.choice(LEGAL).capitalize()}. Can I sue, and what are my chances?"),
        lambda r: _user(f"My father has {r.choice(SYMPTOMS)} since this morning. Should we go to the "
                        f"emergency room or wait?"),
    ]),
    "math": (3, [
        lambda r: _user(f"Prove that the sum of the first {r.choice(['n', 'k', 'm'])} odd numbers is a perfect "
                        f"square."),
        lambda r: _user(f"Solve and show your work: a tank fills in {r.randint(3, 9)} hours with pipe A and "
                        f"{r.randint(4, 12)} hours with pipe B, and drains in {r.randint(8, 20)} hours through C. "
                        f"With all three open, how long until it is full?"),
        lambda r: _user(f"Find all integer solutions of x^2 - {r.choice([2, 3, 5, 6, 7])}y^2 = 1 with x, y < "
                        f"{r.randint(100, 1000)} and explain why there are no others."),
        lambda r: _user(f"Show that there are infinitely many primes of the form {r.choice(['4k+3', '6k+5', '3k+2'])}."),
        lambda r: _user(f"Compute the expected number of rolls of a fair {r.choice([6, 8, 12, 20])}-sided die "
                        f"until every face has appeared, deriving the formula."),
        lambda r: _user(f"Derive the closed form of the recurrence a(n) = {r.randint(2, 5)}a(n-1) - "
                        f"{r.randint(1, 6)}a(n-2) with a(0) = {r.randint(0, 3)}, a(1) = {r.randint(1, 5)}, and "
                        f"prove it by induction."),
    ]),
}


def templates() -> list[Template]:
    return [Template(kind, tier, index, build)
            for kind, (tier, builds) in TEMPLATES.items() for index, build in enumerate(builds)]


def generate(seed: int = SEED, per_template: int = PER_TEMPLATE) -> list[dict]:
    """Every record of the set, in a stable order (kind, template, draw)."""
    records = []
    for template in templates():
        # One generator per template, so adding a template or kind leaves every other record as it was.
        r = random.Random(f"{seed}/{template.kind}/{template.index}")
        for draw in range(per_template):
            record = _vary(r, template.build(r))
            records.append({
                "id": f"{template.kind}-{template.index}-{draw}",
                "kind": template.kind,
                "tier": template.tier,
                "template": f"{template.kind}/{template.index}",
                "split": "heldout" if template.index in HELD_OUT_TEMPLATES else "train",
                "messages": record["messages"],
                "response_format": record.get("response_format"),
                "tools": bool(record.get("tools")),
            })
    return records


def write_prompt_set(path: Path = PROMPTS_PATH, seed: int = SEED, per_template: int = PER_TEMPLATE) -> int:
    records = generate(seed, per_template)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


def load_prompt_set(path: Path = PROMPTS_PATH) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
