"""Word lists shared by the general-text and instruction generators (so base has seen every word
that the instruction tasks ask about)."""

CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Mexico": "Mexico City",
    "India": "Delhi",
    "Sweden": "Stockholm",
    "Germany": "Berlin",
}
FRUIT_COLORS: dict[str, str] = {
    "banana": "yellow",
    "lemon": "yellow",
    "lime": "green",
    "cherry": "red",
    "plum": "purple",
    "orange": "orange",
    "blueberry": "blue",
    "strawberry": "red",
    "kiwi": "brown",
    "grape": "purple",
    "apple": "red",
    "pear": "green",
}
OPPOSITES: dict[str, str] = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "day": "night",
    "old": "new",
    "happy": "sad",
    "open": "closed",
    "early": "late",
    "light": "dark",
    "wet": "dry",
    "full": "empty",
    "high": "low",
    "near": "far",
    "loud": "quiet",
}
NUMBER_WORDS = (
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
CITIES = tuple(sorted(set(CAPITALS.values()) | {"Boston", "Denver", "Austin", "Seattle"}))
COUNTRIES = tuple(CAPITALS)
FRUITS = tuple(FRUIT_COLORS)
COLORS = tuple(sorted(set(FRUIT_COLORS.values()) | {"white", "black", "gray", "gold"}))
FOODS = ("soup", "rice", "pasta", "curry", "stew", "salad", "bread", "pie", "noodle", "omelet")
RELATIVES = ("mother", "father", "sister", "brother", "aunt", "uncle", "cousin", "grandmother")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEASONS = ("spring", "summer", "autumn", "winter")
ANIMALS = ("fox", "deer", "owl", "rabbit", "horse", "goat", "heron", "otter", "badger", "wolf")
SPORTS = ("soccer", "tennis", "rowing", "cycling", "hockey", "chess", "running", "swimming")
PLANETS = ("Mars", "Venus", "Jupiter", "Saturn", "Mercury", "Neptune")
TOOLS = ("hammer", "ruler", "compass", "saw", "wrench", "clock", "lamp", "scale")

# Categories a numbered-list instruction may ask for.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruits": FRUITS,
    "colors": COLORS,
    "animals": ANIMALS,
    "cities": CITIES,
    "sports": SPORTS,
    "tools": TOOLS,
    "foods": FOODS,
    "seasons": SEASONS,
    "days": DAYS,
}
