"""Regenerate tunekit's bundled text, tiny data sets and the tiny SentencePiece tokenizer.

Everything here is written for the project: the prose comes from hand-written templates and
word lists below, combined by a seeded random generator, so the output is deterministic.

    python scripts/make_tokenizer.py            # text + data + tokenizer (all)
    python scripts/make_tokenizer.py text       # src/tunekit/assets/text/*.txt
    python scripts/make_tokenizer.py data       # src/tunekit/assets/data/{alpaca_tiny.json,chat_tiny.jsonl}
    python scripts/make_tokenizer.py tokenizer  # src/tunekit/assets/tokenizer/tokenizer.model
    python scripts/make_tokenizer.py hf         # src/tunekit/assets/tokenizer/hf/{tokenizer.json,tokenizer_config.json}

The tokenizer is a SentencePiece BPE model with Llama 2's settings (byte fallback, unk=0,
bos=1 ``<s>``, eos=2 ``</s>``, no pad id, split digits, dummy prefix, identity normalisation)
and a vocabulary of 512 pieces, trained on the bundled text only.

The HF tokenizer is a byte-level BPE ``tokenizer.json`` (512 entries: 256 bytes, 253 merges and
the three ChatML special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) trained with
the ``tokenizers`` library on the same text, with Qwen2's published pre-tokenizer pattern and NFC
normalisation, no BOS, and a ``tokenizer_config.json`` holding a ChatML chat template written
here. Both files are byte-identical on every run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "tunekit" / "assets"
TEXT_DIR = ASSETS / "text"
DATA_DIR = ASSETS / "data"
TOKENIZER_DIR = ASSETS / "tokenizer"
VOCAB_SIZE = 512

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """Spell a number from 0 to 9999 in English words."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    thousands, rest = divmod(n, 1000)
    tail = ""
    if rest:
        tail = (" and " if rest < 100 else " ") + number_words(rest)
    return number_words(thousands) + " thousand" + tail


def a_or_an(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------------------------
# Word lists (written for the project)
# --------------------------------------------------------------------------------------------

NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Finn", "Grace", "Hugo", "Ivy", "Jack",
         "Kira", "Leo", "Maya", "Noah", "Olive", "Paul", "Rosa", "Sam", "Tara", "Omar",
         "Lena", "Milo", "Nora", "Theo", "Zoe", "Max", "Lucy", "Eli", "Ruth", "Adam"]
SHE = {"Anna", "Clara", "Ella", "Grace", "Ivy", "Kira", "Maya", "Olive", "Rosa", "Tara", "Lena",
       "Nora", "Zoe", "Lucy", "Ruth"}


def his(name: str) -> str:
    return "her" if name in SHE else "his"


def he(name: str) -> str:
    return "she" if name in SHE else "he"

RELATIVES = ["grandmother", "grandfather", "aunt", "uncle", "older sister", "little brother",
             "mother", "father", "cousin", "neighbour"]
PLACES = ["in a small village by the sea", "in a quiet town in the hills", "in a flat on a busy street",
          "on a farm at the edge of the forest", "in a house near the river", "in a cabin in the woods",
          "in an old house on a narrow lane", "in a flat above a bakery", "in a green valley",
          "on a sunny island"]
PETS = [("dog", "barked"), ("cat", "purred"), ("rabbit", "twitched its nose"),
        ("parrot", "squawked"), ("goat", "bleated"), ("puppy", "wagged its tail"),
        ("kitten", "mewed"), ("duck", "quacked"), ("horse", "neighed"), ("hamster", "squeaked")]
PET_NAMES = ["Pip", "Biscuit", "Tiger", "Pepper", "Button", "Sunny", "Pickle", "Rusty", "Daisy",
             "Shadow", "Toffee", "Bean"]
LOST_THINGS = ["red kite", "blue ball", "old key", "favourite hat", "little boat", "wooden box",
               "shiny coin", "library book", "yellow scarf", "toy train", "green umbrella",
               "silver spoon"]
FIND_PLACES = ["under the big oak tree", "behind the garden shed", "in the tall grass",
               "next to the pond", "on the kitchen shelf", "inside an empty flower pot",
               "at the bottom of the stairs", "beneath a pile of leaves", "in the back of a drawer",
               "near the old stone wall"]
FEELINGS_BAD = ["sad", "worried", "upset", "cross", "tired", "lonely"]
FEELINGS_GOOD = ["happy", "glad", "proud", "calm", "cheerful", "relieved"]
TIMES = ["One morning", "One afternoon", "Early on Saturday", "Late one evening",
         "On a rainy Monday", "On the first day of spring", "One cold winter night",
         "On a warm summer day", "After school one day", "Just before lunch"]
ACTIVITIES = ["bake a cake", "paint a picture", "build a sandcastle", "plant some seeds",
              "fly a kite", "write a letter", "fix a bicycle", "tidy the garden",
              "make a birthday card", "learn a new song", "read a long book", "cook soup"]
HELPERS = ["a kind old man", "a friendly girl", "a tall woman with a red coat",
           "a boy with a blue cap", "the baker from the corner shop", "the postman",
           "a clever fox", "a wise owl", "a helpful neighbour", "the teacher"]
LESSONS = ["It is good to ask for help when you need it.",
           "Being patient often works better than hurrying.",
           "A friend can make a hard job feel easy.",
           "Small steps, taken one at a time, lead a long way.",
           "Saying sorry can fix more than you expect.",
           "Sharing makes good things last longer.",
           "Trying again is how most things get done.",
           "Listening carefully is a kind of kindness."]

ANIMALS = [
    # name, kind, home, food, size, fact
    ("cat", "mammal", "homes and farms", "meat and fish", "small", "it can sleep for most of the day"),
    ("dog", "mammal", "homes all over the world", "meat and biscuits", "medium", "it has a very good sense of smell"),
    ("horse", "mammal", "fields and stables", "grass and hay", "large", "it can sleep standing up"),
    ("cow", "mammal", "farms and meadows", "grass", "large", "it has four parts to its stomach"),
    ("sheep", "mammal", "hills and farms", "grass", "medium", "its wool grows all year long"),
    ("rabbit", "mammal", "burrows in fields", "grass and carrots", "small", "its teeth never stop growing"),
    ("mouse", "mammal", "fields and old buildings", "seeds and grain", "tiny", "it can squeeze through very small holes"),
    ("elephant", "mammal", "grasslands and forests", "leaves, bark and fruit", "huge", "it uses its trunk to drink and to pick things up"),
    ("giraffe", "mammal", "open grasslands", "leaves from tall trees", "very tall", "its neck is longer than a man is tall"),
    ("lion", "mammal", "grasslands", "meat", "large", "it lives in a group called a pride"),
    ("bear", "mammal", "forests and mountains", "berries, fish and roots", "large", "it sleeps through much of the winter"),
    ("fox", "mammal", "woods and towns", "mice, birds and fruit", "small", "it can hear a mouse moving under snow"),
    ("whale", "mammal", "the deep ocean", "tiny sea creatures", "enormous", "it must come up to the surface to breathe"),
    ("dolphin", "mammal", "warm seas", "fish and squid", "medium", "it talks to other dolphins with clicks and whistles"),
    ("bat", "mammal", "caves and old barns", "insects and fruit", "small", "it finds its way in the dark by listening to echoes"),
    ("owl", "bird", "woods and barns", "mice and insects", "small", "it can turn its head a very long way round"),
    ("eagle", "bird", "mountains and cliffs", "fish and small animals", "large", "it can see its food from high in the sky"),
    ("penguin", "bird", "cold southern seas", "fish", "medium", "it cannot fly but it swims very well"),
    ("duck", "bird", "ponds and rivers", "plants, seeds and insects", "small", "its feathers keep the water off"),
    ("parrot", "bird", "warm forests", "fruit and nuts", "small", "it can copy the sounds it hears"),
    ("robin", "bird", "gardens and parks", "worms and berries", "tiny", "it sings even in winter"),
    ("chicken", "bird", "farms", "grain and seeds", "small", "it lays eggs almost every day"),
    ("frog", "amphibian", "ponds and wet places", "insects", "small", "it starts life as a tadpole in the water"),
    ("toad", "amphibian", "gardens and damp corners", "slugs and insects", "small", "it has dry, bumpy skin"),
    ("snake", "reptile", "grass, sand and rocks", "mice and eggs", "long", "it smells the air with its tongue"),
    ("turtle", "reptile", "seas and ponds", "plants and small animals", "medium", "it carries its shell wherever it goes"),
    ("lizard", "reptile", "warm, dry places", "insects", "small", "it warms itself by lying in the sun"),
    ("crocodile", "reptile", "rivers and swamps", "fish and meat", "large", "it can wait without moving for a very long time"),
    ("salmon", "fish", "rivers and the sea", "insects and smaller fish", "medium", "it swims back up the river where it was born"),
    ("shark", "fish", "oceans everywhere", "fish and seals", "large", "it has many rows of teeth"),
    ("goldfish", "fish", "ponds and glass bowls", "flakes and small plants", "tiny", "it can live for many years if it is cared for"),
    ("bee", "insect", "hives and gardens", "nectar from flowers", "tiny", "it makes honey for the hive to eat in winter"),
    ("ant", "insect", "nests under the ground", "seeds and crumbs", "tiny", "it can carry things much heavier than itself"),
    ("butterfly", "insect", "meadows and gardens", "nectar", "small", "it begins life as a caterpillar"),
    ("spider", "arachnid", "corners, gardens and sheds", "flies and insects", "small", "it spins a web to catch its food"),
    ("snail", "mollusc", "gardens and damp grass", "leaves", "tiny", "it moves on a trail of slime"),
    ("octopus", "mollusc", "rocky sea floors", "crabs and shellfish", "medium", "it has eight arms and can change colour"),
    ("crab", "crustacean", "beaches and rock pools", "small bits of food", "small", "it walks sideways"),
]

WEATHER = [
    # condition, sky (present), advice, feel, sky (past)
    ("sunny", "the sky is clear and blue", "wear a hat and drink plenty of water", "warm", "the sky was clear and blue"),
    ("cloudy", "grey clouds cover the sky", "take a light jacket", "mild", "grey clouds covered the sky"),
    ("rainy", "heavy clouds bring steady rain", "take an umbrella and wear boots", "wet", "a steady rain was falling"),
    ("windy", "clouds race across the sky", "hold on tight to hats and scarves", "fresh", "clouds raced across the sky"),
    ("snowy", "soft snow falls from a white sky", "wear a warm coat, gloves and a scarf", "cold", "soft snow was falling"),
    ("foggy", "thick fog hides the hills", "go slowly and carry a torch", "damp", "thick fog hid the hills"),
    ("stormy", "dark clouds bring thunder and lightning", "stay indoors until it passes", "wild", "thunder rolled over the roofs"),
    ("frosty", "the morning sky is pale and bright", "watch out for ice on the paths", "crisp", "the grass was white with frost"),
]
TOWNS = ["Millbrook", "Stonebridge", "Ashford Bay", "Redhill", "Larkfield", "Oakmere",
         "Fernside", "Westwater", "Pinecrest", "Harbour End", "Elmstead", "Brightwell"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

RECIPES = [
    # dish, ingredients, steps, time in minutes, tip
    ("pancakes", ["flour", "milk", "two eggs", "a pinch of salt", "a little butter"],
     ["mix the flour and salt in a bowl", "beat in the eggs and the milk until the batter is smooth",
      "melt a little butter in a hot pan", "pour in a thin layer of batter",
      "cook each side until it is golden"], 20, "let the batter rest for a few minutes before cooking"),
    ("tomato soup", ["ripe tomatoes", "an onion", "a clove of garlic", "water", "salt and pepper"],
     ["chop the onion and the garlic", "soften them in a pot with a little oil",
      "add the tomatoes and the water", "simmer everything for twenty minutes",
      "blend the soup until it is smooth"], 35, "a spoon of cream makes the soup richer"),
    ("fried rice", ["cooked rice", "two eggs", "peas", "a carrot", "soy sauce"],
     ["cut the carrot into small pieces", "fry the carrot and the peas in a hot pan",
      "push them to one side and scramble the eggs", "add the rice and stir well",
      "season with soy sauce"], 15, "rice from the day before fries best"),
    ("banana bread", ["three ripe bananas", "flour", "sugar", "an egg", "melted butter", "baking soda"],
     ["mash the bananas in a large bowl", "stir in the butter, the sugar and the egg",
      "fold in the flour and the baking soda", "pour the mix into a tin",
      "bake for about an hour"], 70, "the browner the bananas, the sweeter the bread"),
    ("vegetable stew", ["potatoes", "carrots", "an onion", "beans", "stock", "herbs"],
     ["peel and chop the vegetables", "brown the onion in a large pot",
      "add the potatoes, the carrots and the stock", "simmer until the potatoes are soft",
      "stir in the beans and the herbs"], 50, "stew often tastes even better the next day"),
    ("omelette", ["three eggs", "butter", "cheese", "salt"],
     ["beat the eggs with a pinch of salt", "melt the butter in a pan",
      "pour in the eggs and stir gently", "scatter the cheese on top",
      "fold the omelette in half"], 10, "keep the heat low so the eggs stay soft"),
    ("porridge", ["oats", "milk", "a pinch of salt", "honey"],
     ["put the oats and the milk in a pan", "bring it slowly to a simmer",
      "stir until it is thick and creamy", "add a pinch of salt",
      "serve with a spoon of honey"], 10, "stir often so the porridge does not stick"),
    ("lemonade", ["lemons", "sugar", "cold water", "ice"],
     ["squeeze the juice from the lemons", "stir the sugar into a little warm water",
      "mix the juice with the sweet water", "top up with cold water",
      "serve over ice"], 10, "taste it and add more water if it is too sharp"),
    ("bread rolls", ["strong flour", "yeast", "warm water", "salt", "a little oil"],
     ["mix the flour, the yeast and the salt", "add the water and the oil",
      "knead the dough for ten minutes", "let it rise until it doubles",
      "shape the rolls and bake them until golden"], 120, "a warm kitchen helps the dough rise"),
    ("apple crumble", ["apples", "sugar", "flour", "butter", "oats"],
     ["slice the apples into a dish", "sprinkle them with a little sugar",
      "rub the butter into the flour and the oats", "spread the crumble over the apples",
      "bake until the top is crisp"], 45, "serve it warm with custard"),
    ("pasta with sauce", ["pasta", "tomatoes", "garlic", "olive oil", "basil"],
     ["boil the pasta in salted water", "warm the oil and the garlic in a pan",
      "add the tomatoes and cook them down", "drain the pasta and mix it with the sauce",
      "tear the basil over the top"], 25, "save a cup of the pasta water to loosen the sauce"),
    ("salad", ["lettuce", "cucumber", "tomatoes", "olive oil", "lemon juice"],
     ["wash and dry the lettuce", "slice the cucumber and the tomatoes",
      "put everything in a large bowl", "whisk the oil with the lemon juice",
      "toss the salad with the dressing just before eating"], 10, "dry leaves hold the dressing better"),
]

EVERYDAY = [
    "A kettle boils water using a metal coil at the bottom. When you switch it on, electricity flows through the coil and makes it hot. The heat passes into the water until it bubbles. A small switch feels the steam and turns the kettle off so it does not boil dry.",
    "An umbrella keeps you dry because its cloth does not let water through. The thin metal ribs hold the cloth open in a wide dome, and the rain runs off the edges. When the wind is strong, the umbrella can turn inside out, so it is best to hold it low and into the wind.",
    "A bicycle moves when you push the pedals. The pedals turn a toothed wheel, and a chain carries that turning to the back wheel. Gears change how hard you have to push. A low gear is good for hills, and a high gear is good for fast, flat roads.",
    "A fridge keeps food cold by moving heat from the inside to the outside. A liquid inside thin pipes takes in heat as it turns into a gas, and it gives the heat away at the back of the fridge. That is why the back of a fridge often feels warm.",
    "A clock tells the time by counting steady ticks. In an old clock, a swinging weight keeps the beat. In a modern clock, a tiny crystal shakes many thousands of times each second, and a chip counts the shakes to move the hands or change the numbers.",
    "A candle burns because the flame melts the wax near the wick. The liquid wax climbs up the wick, turns into a gas and burns. As long as there is wax and air, the flame keeps going. If you cover it, the flame runs out of air and goes out.",
    "Soap cleans your hands because one end of each soap particle likes water and the other end likes oil and dirt. The soap grabs the dirt and holds it in the water, so the dirt washes away when you rinse. Warm water and twenty seconds of scrubbing help a lot.",
    "A map is a small drawing of a large place. It shows roads, rivers, towns and hills from above. A scale tells you how far a real distance is, and a compass rose shows which way is north. With a map you can plan a route before you set out.",
    "A lock keeps a door shut until the right key is used. Inside the lock there are small pins of different lengths. The bumps on the right key push every pin to just the right height, and then the lock can turn. A wrong key leaves some pins in the way.",
    "A mirror shows your face because its smooth, shiny back bounces light straight back. Light from your face hits the mirror and returns to your eyes. Left and right look swapped, which is why writing looks backwards in a mirror.",
    "A battery stores energy as chemicals. When the battery is part of a circuit, the chemicals slowly change and push electricity through the wire. When the chemicals are used up, the battery is flat. Some batteries can be charged again and used many times.",
    "A washing machine cleans clothes by turning them in soapy water. The drum spins one way and then the other so the clothes rub and tumble. At the end, the drum spins very fast and throws most of the water out through small holes.",
    "A library lends books for free. You choose a book, the library writes down that you have it, and you bring it back after a few weeks. Books are sorted by subject and by the name of the writer, so you can find what you want on the shelves.",
    "A garden grows well when plants get light, water and good soil. Seeds need warmth to start. Young plants need regular water but not too much. Weeds take water and light from the plants you want, so it helps to pull them out while they are small.",
    "A thermometer measures how hot or cold something is. Many thermometers have a thin tube with a liquid that grows when it warms up and shrinks when it cools. Others use a small sensor and show the number on a screen. We measure temperature in degrees.",
    "Bread rises because of yeast. Yeast is a tiny living thing that eats sugar and gives off gas. The gas makes small bubbles in the dough, and the dough swells. When the bread is baked, the heat sets the bubbles in place, which makes the bread soft and light.",
    "A bridge carries a road or a path over a river or a valley. Some bridges are simple beams resting on posts. Others use arches, which push the weight out to the sides, or strong cables hung from tall towers. Engineers test how much weight a bridge can carry.",
    "A phone sends your voice as a stream of numbers. The microphone turns sound into signals, the phone turns the signals into numbers and sends them by radio to a tower. The other phone turns the numbers back into sound, all in a small part of a second.",
    "A shadow forms when something blocks the light. In the morning and the evening, when the sun is low, shadows are long. At midday, when the sun is high, shadows are short. A shadow always falls on the side away from the light.",
    "Ice floats because water grows a little when it freezes. The same amount of water takes more room as ice, so ice is lighter than the same space of liquid water. That is why ponds freeze from the top down, and fish can live in the water below.",
    "A rainbow appears when sunlight shines through drops of rain. Each drop bends the light and splits it into colours: red, orange, yellow, green, blue and violet. To see a rainbow, stand with the sun behind you and the rain in front of you.",
    "A compass needle is a thin magnet. The earth acts like a giant magnet too, so the needle turns until one end points north. Sailors and walkers have used compasses for hundreds of years to keep going the right way.",
    "Recycling turns old things into new things. Paper is soaked and pressed into fresh paper. Glass is melted and shaped again. Metal cans are melted down and rolled into sheets. Sorting rubbish carefully makes recycling work much better.",
    "A calendar divides the year into months, weeks and days. A year has twelve months and about three hundred and sixty-five days. A week has seven days. Every fourth year has one extra day at the end of February, called a leap day.",
    "Sleep helps the body and the mind rest. While you sleep, your body repairs itself and your brain sorts what you learned during the day. Children need more sleep than adults. A dark, quiet room and a regular bedtime make it easier to fall asleep.",
    "Teeth stay healthy when you brush them twice a day. Brushing removes bits of food and a sticky layer that can cause holes. Sugary drinks and sweets are hard on teeth, so it is best to have them only sometimes and to drink water instead.",
    "A train runs on two steel rails. The wheels have a lip on the inside edge, which keeps them on the track. Trains are good at carrying many people or heavy loads a long way, because steel wheels on steel rails roll very easily.",
    "A letter travels through the post in several steps. You put a stamp on it and drop it in a post box. It is collected, sorted by the address, carried by van, train or plane, and finally delivered by hand to the right door.",
]

ITEMS_USES = [
    ("a spoon", "stir soup and eat cereal"), ("a hammer", "knock nails into wood"),
    ("a broom", "sweep dust from the floor"), ("a ladder", "reach high shelves and windows"),
    ("a torch", "see in the dark"), ("a pair of scissors", "cut paper and string"),
    ("a ruler", "measure short lengths and draw straight lines"), ("a bucket", "carry water"),
    ("a pillow", "rest your head at night"), ("a kettle", "boil water for tea"),
    ("a pencil", "write and draw"), ("a towel", "dry your hands and face"),
    ("a spade", "dig holes in the garden"), ("a needle", "sew cloth together"),
    ("a watering can", "water the plants"), ("a basket", "carry fruit and bread"),
    ("a rope", "tie things together"), ("a coat", "keep warm outside"),
    ("a fork", "pick up food"), ("a saucepan", "cook food on the stove"),
]

PROGRAMMING = [
    "A computer program is a list of instructions that a computer follows one step at a time. The computer does exactly what the program says, even when the program is wrong, so programmers test their work carefully.",
    "A variable is a name that holds a value. In Python you can write x = 3 to store the number three in a variable called x. Later you can write x = x + 1, and x will hold four.",
    "A function is a small, named piece of a program that does one job. You give it inputs, called arguments, and it gives back a result. Writing functions lets you reuse the same steps without copying them.",
    "A loop repeats some steps. A for loop goes through each item in a list, and a while loop keeps going as long as a condition is true. Loops save a programmer from writing the same line again and again.",
    "An if statement lets a program choose. If a condition is true, one block of code runs. Otherwise, an else block can run instead. For example, a program can print hot when the temperature is above thirty degrees.",
    "A list holds many values in order. In Python, a list is written with square brackets, like [1, 2, 3]. You can add items to the end, take them out, sort them, or count how many there are.",
    "A bug is a mistake in a program. Finding bugs is called debugging. A good way to debug is to make the problem small, print the values of variables, and check each step until you see where things go wrong.",
    "A test is a small program that checks another program. It runs a function with known inputs and compares the result with the answer it expects. When all the tests pass, you can change the code with more confidence.",
    "A string is a piece of text inside a program, such as a name or a sentence. Strings are written inside quotes. You can join two strings, change them to capital letters, or split them into words.",
    "A file stores data on a disk so it is still there after the program stops. Programs open a file, read or write it, and close it again. Text files hold plain letters, and other files hold pictures, music or numbers.",
    "Comments are notes in a program that the computer ignores. They explain why the code does something, which helps the next person who reads it. Good names for variables and functions help just as much.",
    "A dictionary in Python stores pairs of keys and values. You look up a value by its key, the way you look up a word in a real dictionary to find its meaning. Keys are often short strings.",
    "An error message tells you that something went wrong and often where it happened. Reading the message slowly, from the top to the bottom, usually points to the line that needs fixing.",
    "Version control keeps a history of every change to a program. If a change breaks something, you can look back, see what changed, and return to a version that worked.",
]
PY_FUNCS = [
    ("add", "a, b", "return a + b", "adds two numbers", "add(2, 3)", "5"),
    ("double", "n", "return n * 2", "doubles a number", "double(7)", "14"),
    ("square", "n", "return n * n", "multiplies a number by itself", "square(4)", "16"),
    ("is_even", "n", "return n % 2 == 0", "checks whether a number is even", "is_even(6)", "True"),
    ("greet", "name", "return 'Hello, ' + name", "builds a greeting", "greet('Ana')", "'Hello, Ana'"),
    ("largest", "items", "return max(items)", "finds the largest item in a list", "largest([3, 9, 2])", "9"),
    ("count_words", "text", "return len(text.split())", "counts the words in a sentence", "count_words('the cat sat')", "3"),
    ("shout", "text", "return text.upper()", "turns text into capital letters", "shout('hi')", "'HI'"),
]


# --------------------------------------------------------------------------------------------
# Text generators
# --------------------------------------------------------------------------------------------


def story(rng: random.Random) -> str:
    name, helper_name = rng.sample(NAMES, 2)
    relative = rng.choice(RELATIVES)
    place = rng.choice(PLACES)
    pet, sound = rng.choice(PETS)
    pet_name = rng.choice(PET_NAMES)
    kind = rng.randrange(6)
    s = [f"{rng.choice(TIMES)}, {name} woke up {place}."]
    if kind == 0:
        thing = rng.choice(LOST_THINGS)
        where = rng.choice(FIND_PLACES)
        s += [f"{name} wanted to play with the {thing}, but it was gone.",
              f"{name} felt {rng.choice(FEELINGS_BAD)} and looked everywhere.",
              f"{cap(his(name))} {pet}, {pet_name}, {sound} and ran into the garden.",
              f"{name} followed and found the {thing} {where}.",
              f"\"Thank you, {pet_name},\" said {name}, and gave the {pet} a hug.",
              f"That evening {name} told the whole story to {his(name)} {relative}, who laughed and said that {pet_name} was the best helper in the house."]
    elif kind == 1:
        act = rng.choice(ACTIVITIES)
        helper = rng.choice(HELPERS)
        s += [f"{name} wanted to {act}, but it was harder than it looked.",
              "The first try went wrong, and so did the second.",
              f"Then {helper} came by and asked what the matter was.",
              "Together they tried once more, slowly and carefully, and this time it worked.",
              f"{name} felt {rng.choice(FEELINGS_GOOD)}.",
              rng.choice(LESSONS)]
    elif kind == 2:
        n = rng.randint(3, 9)
        fruit = rng.choice(["apples", "pears", "plums", "cherries", "lemons", "oranges"])
        s += [f"{name} and {helper_name} walked to the market with a basket.",
              f"They bought {number_words(n)} {fruit} and a loaf of warm bread.",
              f"On the way home they met {rng.choice(HELPERS)}, who looked hungry.",
              f"{helper_name} gave away one of the {fruit}, so they had {number_words(n - 1)} left.",
              f"At home, {his(name)} {relative} made a pie with the rest.",
              "Everyone said it was the best pie they had eaten all year."]
    elif kind == 3:
        w = rng.choice(WEATHER)
        s += [f"Outside it was {w[0]}, and {w[4]}.",
              f"{name} had planned a trip with {helper_name} and {pet_name} the {pet}.",
              f"\"We should {w[2]},\" said {his(name)} {relative}.",
              "So they got ready and set off along the path.",
              f"The day felt {w[3]}, but they did not mind.",
              "When they came home, they sat by the window and talked about everything they had seen."]
    elif kind == 4:
        animal = rng.choice(ANIMALS)
        s += [f"On the way to school, {he(name)} saw {a_or_an(animal[0])} that looked lost.",
              f"{name} remembered that {a_or_an(animal[0])} lives in {animal[2]} and eats {animal[3]}.",
              f"So {he(name)} asked {rng.choice(HELPERS)} for help, and together they took it somewhere safe.",
              f"The {animal[0]} seemed {rng.choice(FEELINGS_GOOD)} in its new place.",
              f"At school, {name} told the class that the {animal[0]} {animal[5][3:]}.",
              "The teacher smiled and said it was a very good fact."]
    else:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        s += [f"It was raining, so {name} and {helper_name} stayed inside and played a counting game.",
              f"{name} put {number_words(a)} blocks on the table, and {helper_name} added {number_words(b)} more.",
              f"\"How many are there now?\" asked {helper_name}.",
              f"{name} counted them one by one and said, \"There are {number_words(a + b)}.\"",
              "Then they built a tower so tall that it wobbled and fell, and they both laughed.",
              "By the time the rain stopped, the room was tidy again and it was time for tea."]
    return " ".join(s)


def animal_text(rng: random.Random) -> list[str]:
    out = []
    for name, kind, home, food, size, fact in ANIMALS:
        out.append(f"{cap(a_or_an(name))} is {a_or_an(kind)}. It lives in {home} and eats {food}. "
                   f"{cap(a_or_an(name))} is {size}, and {fact}.")
        out.append(f"Where does {a_or_an(name)} live? {cap(a_or_an(name))} lives in {home}. "
                   f"What does it eat? It eats {food}.")
        out.append(f"Here is an interesting fact: {a_or_an(name)} is {a_or_an(kind)}, and {fact}.")
    for _ in range(120):
        a, b = rng.sample(ANIMALS, 2)
        same = "are both " + a[1] + "s" if a[1] == b[1] else f"are different: one is {a_or_an(a[1])} and the other is {a_or_an(b[1])}"
        out.append(f"{cap(a_or_an(a[0]))} and {a_or_an(b[0])} {same}. {cap(a_or_an(a[0]))} eats {a[3]}, "
                   f"while {a_or_an(b[0])} eats {b[3]}. {cap(a_or_an(a[0]))} lives in {a[2]}, and {a_or_an(b[0])} lives in {b[2]}.")
    return out


def weather_text(rng: random.Random) -> list[str]:
    out = []
    for _ in range(160):
        town = rng.choice(TOWNS)
        day = rng.choice(DAYS)
        month = rng.choice(MONTHS)
        w = rng.choice(WEATHER)
        lo = rng.randint(-8, 0) if w[0] in ("snowy", "frosty") else rng.randint(4, 20)
        hi = lo + rng.randint(3, 10)
        wind = rng.choice(["a light breeze", "a gentle wind from the west", "strong gusts from the north",
                           "hardly any wind", "a cool wind from the sea"])
        later = rng.choice(WEATHER)
        out.append(f"The weather in {town} on {day} in {month}: it will be {w[0]}, and {w[1]}. "
                   f"The lowest temperature will be {lo} degrees and the highest {hi} degrees, with {wind}. "
                   f"Later in the day it may turn {later[0]}. If you go out, {w[2]}.")
    for w in WEATHER:
        out.append(f"On a {w[0]} day, {w[1]}. People usually {w[2]}. The air feels {w[3]}.")
    return out


def cooking_text(rng: random.Random) -> list[str]:
    out = []
    for dish, ingredients, steps, minutes, tip in RECIPES:
        body = " ".join(f"{w} {st}." for w, st in zip(["First,", "Next,", "Then", "After that,", "Finally,"], steps))
        out.append(f"How to make {dish}. You will need {join_list(ingredients)}. {body} "
                   f"It takes about {number_words(minutes)} minutes in all. A useful tip: {tip}.")
        out.append(f"Making {dish} at home is easy. The main ingredients are {join_list(ingredients[:3])}. "
                   f"The first step is to {steps[0]}, and the last step is to {steps[-1]}.")
    for _ in range(90):
        dish, ingredients, steps, minutes, tip = rng.choice(RECIPES)
        name = rng.choice(NAMES)
        rel = rng.choice(RELATIVES)
        out.append(f"On {rng.choice(DAYS)}, {name} made {dish} with {his(name)} {rel}. "
                   f"They needed {join_list(ingredients)}. {name} liked the part where you {rng.choice(steps)}. "
                   f"It took about {number_words(minutes)} minutes, and {name} learned a useful tip: {tip}.")
    return out


def numbers_text(rng: random.Random) -> list[str]:
    out = []
    for n in range(1, 101):
        parity = "even" if n % 2 == 0 else "odd"
        out.append(f"The number {n} is written {number_words(n)}. It is {parity}. "
                   f"One more than {number_words(n)} is {number_words(n + 1)}, and one less is {number_words(n - 1)}.")
    for _ in range(160):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        op = rng.randrange(3)
        if op == 0:
            out.append(f"{cap(number_words(a))} plus {number_words(b)} is {number_words(a + b)}. In digits, {a} + {b} = {a + b}.")
        elif op == 1:
            a, b = max(a, b), min(a, b)
            out.append(f"{cap(number_words(a))} minus {number_words(b)} is {number_words(a - b)}. In digits, {a} - {b} = {a - b}.")
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            out.append(f"{cap(number_words(a))} times {number_words(b)} is {number_words(a * b)}. In digits, {a} x {b} = {a * b}.")
    for _ in range(60):
        a, b = rng.sample(range(1, 200), 2)
        big, small = max(a, b), min(a, b)
        out.append(f"Which is bigger, {a} or {b}? The answer is {big}, because {big} is {big - small} more than {small}.")
    out.append("Counting to twenty: " + ", ".join(number_words(i) for i in range(1, 21)) + ".")
    out.append("A dozen is twelve. A score is twenty. A century is one hundred years. A week has seven days, and a day has twenty-four hours.")
    out.append("Half of ten is five. A quarter of twenty is five. Double six is twelve. Three tens make thirty.")
    return out


def everyday_text(rng: random.Random) -> list[str]:
    out = list(EVERYDAY)
    for item, use in ITEMS_USES:
        out.append(f"What is {item} for? You use {item} to {use}.")
        out.append(f"If you want to {use}, you will probably need {item}.")
    for _ in range(60):
        (i1, u1), (i2, u2) = rng.sample(ITEMS_USES, 2)
        name = rng.choice(NAMES)
        out.append(f"{name} took {i1} to {u1} and then borrowed {i2} to {u2}. Both went back in the cupboard afterwards.")
    return out


def programming_text(rng: random.Random) -> list[str]:
    out = list(PROGRAMMING)
    for fname, args, body, doc, call, result in PY_FUNCS:
        out.append(f"Here is a small Python function called {fname}. It {doc}. "
                   f"def {fname}({args}): {body}. If you call {call}, the result is {result}.")
    for _ in range(40):
        n = rng.randint(2, 6)
        start = rng.randint(0, 5)
        vals = list(range(start, start + n))
        out.append(f"The loop for i in range({start}, {start + n}): print(i) prints the numbers "
                   f"{join_list([str(v) for v in vals])}, one per line. That is {number_words(n)} numbers in all.")
    return out


def make_text() -> dict[str, str]:
    """Build the bundled corpus as {file name: text}, one paragraph per line."""
    rng = random.Random(1234)
    files = {
        "stories.txt": [story(rng) for _ in range(260)],
        "animals.txt": animal_text(rng),
        "weather.txt": weather_text(rng),
        "cooking.txt": cooking_text(rng),
        "numbers.txt": numbers_text(rng),
        "everyday.txt": everyday_text(rng),
        "programming.txt": programming_text(rng),
    }
    return {name: "\n".join(lines) + "\n" for name, lines in files.items()}


def write_text() -> None:
    TEXT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, text in make_text().items():
        (TEXT_DIR / name).write_text(text, encoding="utf-8")
        total += len(text.encode())
    print(f"wrote {TEXT_DIR} ({total / 1024:.0f} KiB)")


# --------------------------------------------------------------------------------------------
# Tiny instruction and chat data
# --------------------------------------------------------------------------------------------

ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"),
            ("old", "new"), ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"),
            ("wet", "dry"), ("hard", "soft"), ("loud", "quiet"), ("high", "low"), ("long", "short"),
            ("rich", "poor"), ("strong", "weak"), ("clean", "dirty"), ("thick", "thin"), ("near", "far"),
            ("day", "night"), ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take")]
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Ireland", "Dublin"),
            ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Chile", "Santiago"),
            ("India", "New Delhi"), ("China", "Beijing"), ("Russia", "Moscow"), ("Mexico", "Mexico City")]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum", "peach"]
VEGETABLES = ["carrot", "potato", "onion", "cabbage", "pea", "leek", "turnip", "spinach", "bean", "lettuce"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
WORDS = ["cat", "dog", "sun", "tree", "book", "milk", "rain", "fish", "bird", "star", "moon", "door",
         "hand", "ship", "road", "lamp", "cake", "snow", "wind", "frog", "rose", "salt", "bell", "coat"]
PLURALS = [("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("foot", "feet"),
           ("baby", "babies"), ("leaf", "leaves"), ("tooth", "teeth"), ("bus", "buses"), ("dog", "dogs"),
           ("city", "cities"), ("man", "men"), ("knife", "knives"), ("sheep", "sheep"), ("woman", "women")]


def make_alpaca(rng: random.Random) -> list[dict[str, str]]:
    recs: list[dict[str, str]] = []

    def add(instruction: str, output: str, inp: str = "") -> None:
        recs.append({"instruction": instruction, "input": inp, "output": output})

    for _ in range(70):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if rng.random() < 0.5:
            add("Add the two numbers.", str(a + b), f"{a} + {b}")
        else:
            a, b = max(a, b), min(a, b)
            add("Subtract the second number from the first.", str(a - b), f"{a} - {b}")
    for _ in range(20):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        add(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.")
    for _ in range(40):
        ws = rng.sample(WORDS, rng.randint(2, 4))
        add("Reverse the order of the words.", " ".join(reversed(ws)), " ".join(ws))
    for w, o in ANTONYMS:
        add("Give the opposite of the word.", o, w)
        add("Give the opposite of the word.", w, o)
    for c, k in CAPITALS:
        add(f"What is the capital of {c}?", f"The capital of {c} is {k}.")
    for f in FRUITS:
        add("Is this a fruit or a vegetable?", "It is a fruit.", f)
    for v in VEGETABLES:
        add("Is this a fruit or a vegetable?", "It is a vegetable.", v)
    for s, p in PLURALS:
        add("Write the plural of the word.", p, s)
    for _ in range(20):
        w = rng.choice(WORDS)
        add("Write the word in capital letters.", w.upper(), w)
    for _ in range(20):
        name, col = rng.choice(NAMES), rng.choice(COLOURS)
        thing = rng.choice(["car", "hat", "kite", "door", "bag"])
        add("Rewrite the sentence in the past tense.", f"{name} painted the {thing} {col}.",
            f"{name} paints the {thing} {col}.")
    for name, _kind, _home, food, *_ in ANIMALS[:20]:
        add(f"What does {a_or_an(name)} eat?", f"{cap(a_or_an(name))} eats {food}.")
    for _ in range(15):
        n = rng.randint(1, 30)
        add("Write the number in words.", number_words(n), str(n))
    for _ in range(10):
        n = rng.randint(1, 40)
        add("Is the number even or odd?", "even" if n % 2 == 0 else "odd", str(n))
    rng.shuffle(recs)
    return recs


def make_chat(rng: random.Random) -> list[dict]:
    convs: list[dict] = []
    systems = ["You are a helpful assistant. Answer briefly.", "You are a friendly teacher.",
               "Answer in one short sentence."]
    for _ in range(25):
        c, k = rng.choice(CAPITALS)
        convs.append([{"role": "user", "content": f"What is the capital of {c}?"},
                      {"role": "assistant", "content": f"The capital of {c} is {k}."}])
    for _ in range(20):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = rng.randint(1, 9)
        convs.append([{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                      {"role": "user", "content": f"And if I add {c} more?"},
                      {"role": "assistant", "content": f"Then you have {a + b + c}."}])
    for _ in range(20):
        w, o = rng.choice(ANTONYMS)
        convs.append([{"role": "system", "content": rng.choice(systems)},
                      {"role": "user", "content": f"What is the opposite of {w}?"},
                      {"role": "assistant", "content": f"The opposite of {w} is {o}."}])
    for _ in range(15):
        name, kind, home, food, size, fact = rng.choice(ANIMALS)
        convs.append([{"role": "user", "content": f"Tell me about the {name}."},
                      {"role": "assistant", "content": f"{cap(a_or_an(name))} is {a_or_an(kind)} that lives in {home}."},
                      {"role": "user", "content": "What does it eat?"},
                      {"role": "assistant", "content": f"It eats {food}."}])
    for _ in range(20):
        dish, ingredients, steps, minutes, tip = rng.choice(RECIPES)
        convs.append([{"role": "system", "content": "You are a cooking helper."},
                      {"role": "user", "content": f"What do I need to make {dish}?"},
                      {"role": "assistant", "content": f"You need {join_list(ingredients)}."}])
    rng.shuffle(convs)
    return [{"messages": m} for m in convs]


def write_data() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(4321)
    alpaca = make_alpaca(rng)
    (DATA_DIR / "alpaca_tiny.json").write_text(json.dumps(alpaca, indent=1) + "\n", encoding="utf-8")
    chat = make_chat(rng)
    (DATA_DIR / "chat_tiny.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chat), encoding="utf-8")
    print(f"wrote {len(alpaca)} instruction records and {len(chat)} conversations to {DATA_DIR}")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer(vocab_size: int = VOCAB_SIZE, out: Path = TOKENIZER_DIR / "tokenizer.model") -> Path:
    """Train the tiny Llama-2-style BPE model on the bundled text (deterministic)."""
    import sentencepiece as spm

    files = sorted(TEXT_DIR.glob("*.txt"))
    if not files:
        sys.exit(f"no bundled text in {TEXT_DIR}; run `python scripts/make_tokenizer.py text` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Sentences are fed from memory and the model comes back as bytes, so no file or temp
    # path is recorded in the model's trainer_spec: the output is byte-identical across runs
    # and checkouts.
    lines = [ln for f in files for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        # Llama 2's trainer_spec, as far as it matters at this size:
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        max_sentencepiece_length=16,
        character_coverage=0.99995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_surface=" \u2047 ",
        # Determinism: one thread, every sentence, no sampling.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    out.write_bytes(model.getvalue())
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, vocab {vocab_size})")
    return out


#: Qwen2's published pre-tokenizer pattern (single digits, unlike Llama 3's runs of three).
CHATML_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: The ChatML layout (a published fact), written here: per message
#: ``<|im_start|>{role}\n{content}<|im_end|>\n``, and ``<|im_start|>assistant\n`` to generate from.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role'] + ': roles are system, user, assistant') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_hf_tokenizer(out_dir: Path = TOKENIZER_DIR / "hf", vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the tiny byte-level BPE ``tokenizer.json`` + ChatML ``tokenizer_config.json``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    files = sorted(TEXT_DIR.glob("*.txt"))
    if not files:
        sys.exit(f"no bundled text in {TEXT_DIR}; run `python scripts/make_tokenizer.py text` first")
    lines = [ln for f in files for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CHATML_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=CHATML_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_dir}/tokenizer.json (vocab {tok.get_vocab_size()}) and tokenizer_config.json")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["all", "text", "data", "tokenizer", "hf"])
    args = parser.parse_args(argv)
    if args.what in ("all", "text"):
        write_text()
    if args.what in ("all", "data"):
        write_data()
    if args.what in ("all", "tokenizer"):
        train_tokenizer()
    if args.what in ("all", "hf"):
        train_hf_tokenizer()


if __name__ == "__main__":
    main()
