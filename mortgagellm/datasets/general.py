"""Seeded general-domain prose that the locally built *base* model is pretrained on.

Mostly everyday topics; a configurable share is light home-finance prose, so base knows some of
the domain's words before DAPT (the regime where the residual transfer works, FINDINGS.md run B).
Deterministic: the same (seed, n) gives the same documents, in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from mortgagellm.datasets import vocab

TOPIC_SENTENCES: dict[str, tuple[str, ...]] = {
    "kitchen": (
        "To make a simple {food} dish, wash the {fruit} and cut it into small pieces.",
        "My {relative} likes to cook {food} on {day} evenings.",
        "The recipe asks for two cups of flour, one {fruit}, and a pinch of salt.",
        "Bake the bread for {number} minutes until the crust turns {color}.",
        "A good {food} needs fresh herbs and a little patience.",
    ),
    "weather": (
        "The sky over {city} was {color} this morning, and rain is expected by {day}.",
        "In {season}, the wind from the hills makes the nights cold.",
        "Forecasters say {city} will see {number} sunny days this month.",
        "After the storm, the streets of {city} were quiet and wet.",
    ),
    "travel": (
        "We took the train from {city} to {city2} and arrived before noon.",
        "The old bridge in {city} is the best place to watch the sunset.",
        "Pack a {color} jacket if you visit {country} in {season}.",
        "The museum in {city} opens at nine and closes at {number} in the evening.",
    ),
    "nature": (
        "A {animal} crossed the path near the river at dawn.",
        "In {season}, the {animal} gathers food and rests in the shade.",
        "The garden has {number} {fruit} trees and a small pond.",
        "Birds sing early in {season}, long before the town wakes up.",
    ),
    "sport": (
        "The {sport} team from {city} won the match by {number} points.",
        "She trains for {sport} every {day} with her {relative}.",
        "Fans in {city} waited all {season} for the final game.",
    ),
    "science": (
        "Water boils at one hundred degrees and freezes at zero.",
        "The {planet} is one of the planets that circle the sun.",
        "A {tool} helps students measure how fast things move.",
        "Light travels faster than sound, which is why we see lightning first.",
    ),
    "home_finance": (
        "Buying a home in {city} means saving for a down payment and closing costs.",
        "A mortgage is a loan used to buy a house, paid back in monthly payments.",
        "The interest rate on a home loan depends on the borrower's credit score.",
        "My {relative} refinanced the house when rates fell to {number} percent.",
        "Lenders compare monthly debts with income before they approve a loan.",
        "An escrow account holds money for property taxes and home insurance.",
        "A fixed-rate loan keeps the same monthly payment for the whole term.",
        "Before signing, read the loan estimate and ask about points and fees.",
    ),
}


def _fill(template: str, rng: random.Random) -> str:
    city, city2 = rng.sample(vocab.CITIES, 2)
    return template.format(
        food=rng.choice(vocab.FOODS),
        fruit=rng.choice(vocab.FRUITS),
        relative=rng.choice(vocab.RELATIVES),
        day=rng.choice(vocab.DAYS),
        number=rng.choice(vocab.NUMBER_WORDS),
        color=rng.choice(vocab.COLORS),
        city=city,
        city2=city2,
        country=rng.choice(vocab.COUNTRIES),
        season=rng.choice(vocab.SEASONS),
        animal=rng.choice(vocab.ANIMALS),
        sport=rng.choice(vocab.SPORTS),
        planet=rng.choice(vocab.PLANETS),
        tool=rng.choice(vocab.TOOLS),
    )


def general_documents(seed: int, n: int, domain_fraction: float = 0.1) -> Iterator[str]:
    """n short documents of 3-7 sentences; about domain_fraction of them are home-finance prose."""
    rng = random.Random(f"general:{seed}")
    everyday = [t for t in TOPIC_SENTENCES if t != "home_finance"]
    for _ in range(n):
        topic = "home_finance" if rng.random() < domain_fraction else rng.choice(everyday)
        templates = TOPIC_SENTENCES[topic]
        k = rng.randint(3, 7)
        yield " ".join(_fill(rng.choice(templates), rng) for _ in range(k))
